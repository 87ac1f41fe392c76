"""The method registry is the one place a method is named: a toy method registered there alone gets
its params section, CLI command, table row, curves and findings line; unknown run directories are
reported; nothing outside the registry names a method."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from atlas_lib import cli
from atlas_lib.core import config, models, registry
from atlas_lib.core.sections import TrainSection, default
from atlas_lib.data import splits
from atlas_lib.data.prompts import build_messages, render_prompt
from atlas_lib.evaluation.baselines import evaluate_baselines
from atlas_lib.report import charts, collect, findings, table
from atlas_lib.training import loop
from atlas_lib.training.common import Parts, run_method

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ToyConfig(TrainSection):
    """SFT on the reference solutions (a toy method for the registry test)."""

    max_steps: int = default("max_steps", 2)
    learning_rate: float = default("learning_rate", 1e-3)
    eval_steps: int = default("eval_steps", 1)
    save_steps: int = default("save_steps", 5)
    per_device_train_batch_size: int = default("per_device_train_batch_size", 2)
    gradient_accumulation_steps: int = default("gradient_accumulation_steps", 1)


def _build(params, prepared, device) -> Parts:
    student, tok = models.load_model(params.models.student, dtype=loop.student_dtype(params.toy), device=device,
                                     for_training=True)
    texts = [render_prompt(tok, build_messages(r["question"], params.prompt)) + f"Final Answer: {r['answer']}"
             for r in prepared.train]
    ds = Dataset.from_dict(tok(texts, truncation=True, max_length=96))

    def make(common: dict, callbacks: list):
        return Trainer(model=student, args=TrainingArguments(**common), train_dataset=ds, processing_class=tok,
                       data_collator=DataCollatorForLanguageModeling(tok, mlm=False), callbacks=callbacks)

    return Parts(student, tok, make)


def run_toy(params) -> dict:
    return run_method(params, "toy", _build)


@pytest.fixture
def toy():
    method = registry.register(registry.Method("toy", ToyConfig, run_toy, "02_gkd", "Toy SFT student", "Toy SFT",
                                               "C7", "Toy: token cross-entropy on references", distills=False))
    yield method
    registry.unregister("toy")


def test_a_registered_method_gets_a_params_section_and_a_cli_command(toy):
    p = config.load("params/smoke.yaml", overrides={"toy.max_steps": 3})
    assert p.toy.max_steps == 3
    assert "toy" in p.enabled()
    assert "toy" in config.stages()


def test_atlas_train_help_lists_the_registered_method(toy, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["train", "--help"])
    assert done.value.code == 0
    listing = " ".join(capsys.readouterr().out.split())  # argparse wraps the METHOD list at the terminal width
    assert "toy Toy SFT student: SFT on the reference solutions (a toy method for the registry test)." in listing


def test_atlas_train_toy_help_shows_the_toys_fields(toy, capsys):
    # argparse's "invalid choice" exits too (code 2, on stderr): only code 0 and the toy's own text prove
    # that the toy subcommand exists
    with pytest.raises(SystemExit) as done:
        cli.main(["train", "toy", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: atlas train toy ")
    assert "\ntoy parameters, as params/embedded.yaml sets them (--set toy.<field>=<value>):\n" in out
    assert "  max_steps = 2: " in out  # ToyConfig's own default (the shared one differs)


def test_a_toy_method_registered_alone_shows_its_row_curve_and_findings_line(toy, env):
    p = config.load("params/smoke.yaml", overrides={
        "tracking.wandb": "disabled", "evaluation.reverse_kl": False, "gkd.enabled": False, "grpo.enabled": False,
        "cross_tokenizer.enabled": False})
    splits.prepare(p)
    evaluate_baselines(p)
    summary = toy.run(p)
    assert summary["method"] == "toy"
    col = collect.collect(p)
    t = table.results_table(col)
    assert t.loc["toy", "Model / Method"] == "Toy SFT student"
    assert not t.loc[["toy"], "Accuracy"].isna().any()
    fig = charts.accuracy_chart(col)
    labels = [h.get_label() for ax in fig.axes for h in ax.get_legend_handles_labels()[0]]
    assert any(label.startswith("Toy SFT") for label in labels)
    loss_titles = [ax.get_title() for ax in charts.loss_chart(col).axes]
    assert "Toy: token cross-entropy on references" in loss_titles
    assert "Toy SFT changed it by" in findings.findings(col) or "Toy SFT improved" in findings.findings(col) \
        or "Toy SFT lowered" in findings.findings(col) or "**Toy SFT improved" in findings.findings(col)


def test_an_unknown_run_directory_is_reported_not_skipped(env):
    p = config.load("params/smoke.yaml")
    (env / "runs" / "smoke" / "mystery").mkdir(parents=True)
    notes = collect.collect(p).notes
    assert any(n.startswith("mystery/ is not an enabled method") for n in notes)


def test_a_disabled_method_has_no_row_and_a_note(env):
    p = config.load("params/smoke.yaml", overrides={"grpo.enabled": False})
    col = collect.collect(p)
    assert "grpo" not in table.results_table(col).index
    assert any("GRPO is disabled" in n for n in col.notes)


def test_no_module_outside_the_registry_names_a_method():
    """Method keys appear in the registry, the method's own folder and its notebook, nowhere else in
    the library (the CLI, pipeline, report, charts and findings iterate the registry)."""
    keys = [m.key for m in registry.methods()]
    pattern = re.compile(r"[\"'](" + "|".join(keys) + r")[\"']")
    offenders = []
    for path in (ROOT / "atlas_lib").rglob("*.py"):
        rel = path.relative_to(ROOT / "atlas_lib").as_posix()
        if rel == "core/registry.py" or rel.startswith("methods/"):
            continue
        offenders += [f"{rel}: {m.group(0)}" for m in pattern.finditer(path.read_text())]
    assert offenders == []


def test_renamed_generation_length_gets_a_pointed_message():
    with pytest.raises(config.ParamsError, match=r"gkd.max_new_tokens was renamed gkd.max_completion_length"):
        config.load("params/smoke.yaml", sections={"gkd": {"max_new_tokens": 8}})


def test_a_params_file_without_a_name_takes_its_file_name(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text((ROOT / "params/smoke.yaml").read_text().replace("name: smoke\n", ""))
    assert config.load(f).name == "mine"
