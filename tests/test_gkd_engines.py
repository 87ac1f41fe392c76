"""The gkd section's two engines (``gkd.engine``): TRL's GKDTrainer and its DistillationTrainer run the
same experiment. Both are built by the kit's own runner from one params file, on the tiny models, and
score one fixed batch of completion ids (sampling bypassed) to the same loss."""

from __future__ import annotations

import builtins
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from atlas_lib.core import config
from atlas_lib.core.config import ParamsError
from atlas_lib.data import splits
from atlas_lib.methods.gkd import trainer as gkd
from atlas_lib.training import loop

REL = 1e-5  # float32 on both sides; TRL projects the hidden states itself, in tiles


def _params(**over):
    base = {"tracking.wandb": "disabled", "evaluation.reverse_kl": False, "gkd.max_steps": 1}
    return config.load("params/smoke.yaml", overrides={**base, **over})


def _trainer(params, prepared, tmp: Path):
    parts = gkd._build("gkd")(params, prepared, torch.device("cpu"))
    common = loop.trainer_args(params, "gkd", types.SimpleNamespace(checkpoints=tmp / "checkpoints"), ["none"],
                               torch.device("cpu"))
    return parts.make_trainer(common, [])


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Both engines' trainers from the smoke params (same student, teacher, beta, temperature)."""
    tmp = tmp_path_factory.mktemp("engines")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATLAS_RUNS", str(tmp / "runs"))
        mp.setenv("ATLAS_CACHE", str(tmp / "cache"))
        p = _params()
        prepared = splits.prepare(p)
        out = {e: _trainer(_params(**{"gkd.engine": e}), prepared, tmp / e) for e in ("gkd", "distillation")}
        out["rows"] = splits.distill_view(prepared.train, p.prompt)
        yield out


def _batch(engines):
    """Two training prompts with fixed completions (row 0 stops at EOS after 3 tokens, then padding),
    in each engine's input format: GKDTrainer's (input_ids, attention_mask, labels) after sampling,
    DistillationTrainer's (prompt / completion ids and masks)."""
    tok = engines["gkd"].processing_class
    prompts = [tok.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=False)
               for r in engines["rows"][:2]]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in prompts]
    width = max(map(len, ids))
    prompt_ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids])
    prompt_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    g = torch.Generator().manual_seed(0)
    completion_ids = torch.randint(3, len(tok), (2, 7), generator=g)  # ids 0-2 are the special tokens
    completion_ids[0, 2] = tok.eos_token_id
    completion_ids[0, 3:] = tok.pad_token_id
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[0, 3:] = 0
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :width] = -100
    gkd_in = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    dist_in = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
               "completion_mask": completion_mask, "num_items_in_batch": completion_mask.sum()}
    return gkd_in, dist_in


def _loss(trainer, inputs) -> float:
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, dict(inputs)))


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])  # TRL special-cases both ends (forward / reverse KL)
def test_both_engines_give_the_same_loss_on_the_same_batch(engines, monkeypatch, beta):
    gkd_in, dist_in = _batch(engines)
    for e in ("gkd", "distillation"):
        monkeypatch.setattr(engines[e], "beta", beta)
    assert _rel(_loss(engines["gkd"], gkd_in), _loss(engines["distillation"], dist_in)) < REL


def test_the_comparison_can_fail_a_different_beta_gives_another_loss(engines, monkeypatch):
    gkd_in, dist_in = _batch(engines)
    monkeypatch.setattr(engines["distillation"], "beta", 0.1)
    assert _rel(_loss(engines["gkd"], gkd_in), _loss(engines["distillation"], dist_in)) > 1e-3


def test_the_distillation_engine_samples_at_the_section_temperature(engines):
    assert engines["distillation"].generation_config.temperature == engines["gkd"].generation_config.temperature == 0.9


def test_the_distillation_engine_scores_at_temperature_1_as_gkd_does(engines, monkeypatch):
    """TRL's own setting (loss at the sampling temperature) would be another loss."""
    gkd_in, dist_in = _batch(engines)
    monkeypatch.setattr(engines["distillation"], "temperature", 0.9)
    assert _rel(_loss(engines["gkd"], gkd_in), _loss(engines["distillation"], dist_in)) > 1e-3


def test_the_generation_batch_token_count_does_not_rescale_the_loss(engines):
    """Per-micro-batch normalisation, as the gkd engine: TRL's count over all accumulation micro-batches
    is dropped."""
    _, dist_in = _batch(engines)
    assert _loss(engines["distillation"], dist_in) == _loss(engines["distillation"],
                                                              {**dist_in, "num_items_in_batch": torch.tensor(99)})


def test_both_engines_sample_from_the_same_prompt_ids(engines):
    """Every training prompt: GKD's collator cuts it from prompt + reference, TRL renders it alone."""
    rows = engines["rows"]
    collated = engines["gkd"].data_collator(rows)
    gkd_prompts = [ids[m.bool()].tolist() for ids, m in zip(collated["prompts"], collated["prompt_attention_mask"],
                                                             strict=True)]
    dist = engines["distillation"]
    dist_prompts, _, _ = dist._tokenize_prompts([r["prompt"] for r in dist.train_dataset])
    assert gkd_prompts == [list(x) for x in dist_prompts]


@pytest.mark.parametrize("override, field", [
    ({"gkd.engine": "distillation", "gkd.lmbda": 0.5}, "gkd.engine"),
    ({"gkd.engine": "distillation", "gkd.lmbda": 0.5}, "gkd.lmbda"),
    ({"gkd.engine": "distillation", "gkd.seq_kd": True}, "gkd.seq_kd"),
    ({"gkd.use_vllm": True}, "gkd.use_vllm"),
    ({"gkd.engine": "trl"}, "gkd.engine"),
    ({"gkd.vllm_mode": "remote"}, "gkd.vllm_mode"),
])
def test_engine_settings_are_checked_and_name_the_field(override, field):
    with pytest.raises(ParamsError, match=field.replace(".", r"\.")):
        config.load("params/smoke.yaml", overrides=override)


def test_the_default_engine_is_gkd_for_every_shipped_profile_but_paper_1gpu():
    engines = {name: config.load(f"params/{name}.yaml").gkd.engine
               for name in ("embedded", "smoke", "study", "paper", "paper-1gpu")}
    assert engines == {"embedded": "gkd", "smoke": "gkd", "study": "gkd", "paper": "gkd",
                       "paper-1gpu": "distillation"}


def test_building_the_distillation_engine_imports_no_vllm(env, monkeypatch):
    seen = []
    real = builtins.__import__

    def spy(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            seen.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy)
    p = _params(**{"gkd.engine": "distillation"})
    _trainer(p, splits.prepare(p), env)
    assert seen == [] and "vllm" not in sys.modules


@pytest.mark.parametrize("lora", [{}, pytest.param({"r": 4, "alpha": 8}, marks=pytest.mark.slow)],
                         ids=["full", "lora"])
def test_a_distillation_engine_run_writes_the_contract(env, lora):
    """Two optimizer steps of two accumulated micro-batches through the shared runner."""
    p = _params(**{"gkd.engine": "distillation", "gkd.max_steps": 2, "gkd.gradient_accumulation_steps": 2,
                   "gkd.lora": lora})
    splits.prepare(p)
    s = gkd.run_gkd(p)
    run = env / "runs" / "smoke" / "gkd"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    assert (s["status"], s["engine"], s["did_not_train"]) == ("complete", "distillation", None)
    assert [r["step"] for r in train] == [1, 2] and [r["step"] for r in rows if r["kind"] == "eval"] == [0, 1, 2]
    assert all(r["loss"] > 0 and r["completion_tokens"] > 0 for r in train)
    assert (run / "final" / weights).exists() and list(run.glob(f"checkpoints/*/{weights}"))
