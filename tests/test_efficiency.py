"""The efficiency design (issue 30): the compute ledger, training seeds, statistics over problems and
seeds, Holm's adjustment, and compute to match read off the curves."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from atlas_lib.core import config, seeds
from atlas_lib.core.validate import ParamsError
from atlas_lib.evaluation import stats
from atlas_lib.training import ledger


# -- the ledger's FLOPs, against the closed form -------------------------------------------------
def _tiny_student():
    from transformers import AutoModelForCausalLM

    from atlas_lib.core import tiny

    return AutoModelForCausalLM.from_pretrained(tiny.ensure("tiny-qwen2-student"))


def _matmul_params_by_hand(model) -> int:
    """Every weight a token multiplies: all parameters but the input-embedding table, unless the output
    layer is that same table (tied), when it counts once."""
    names = dict(model.named_parameters())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return sum(p.numel() for n, p in names.items() if tied or "embed_tokens" not in n)


def test_ledger_flops_of_a_full_fine_tune_are_6n_per_trained_token_and_2n_per_sampled_one():
    model = _tiny_student()
    n = _matmul_params_by_hand(model)
    book = ledger.Ledger.for_models(model)
    book.sampled(0.5, tokens=30)
    book.trained(tokens=30)
    rec = book.close_step(2.0)
    assert book.student_params == n
    assert rec["optimisation_flops"] == 6 * n * 30
    assert rec["sampling_flops"] == 2 * n * 30
    assert rec["flops"] == 8 * n * 30


def test_ledger_flops_of_lora_count_the_frozen_base_as_it_runs():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_student(), LoraConfig(r=2, lora_alpha=4, target_modules="all-linear",
                                                       task_type="CAUSAL_LM"))
    n = _matmul_params_by_hand(model)
    n_lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    book = ledger.Ledger.for_models(model)
    book.trained(tokens=10)
    rec = book.close_step(1.0)
    assert book.trainable == n_lora
    # forward 2N, activations' gradients 2N, weight gradients only for the adapters 2 N_lora
    assert rec["optimisation_flops"] == (4 * n + 2 * n_lora) * 10


def test_ledger_splits_a_step_into_its_phases_and_keeps_running_totals():
    book = ledger.Ledger(student_params=100, trainable=100, teacher_params=300)
    book.sampled(1.5, tokens=10)
    book.scored(0.5, tokens=10)
    book.trained(tokens=10)
    first = book.close_step(4.0)
    assert (first["sampling_seconds"], first["teacher_seconds"], first["optimisation_seconds"]) == (1.5, 0.5, 2.0)
    assert first["teacher_flops"] == 2 * 300 * 10 and first["phases_split"] is True
    second = book.close_step(1.0)  # a step in which no phase was reported
    assert second["phases_split"] is False and second["optimisation_seconds"] == 1.0
    assert book.stamp()["train_seconds"] == 5.0
    assert second["cum_flops"] == first["flops"]
    resumed = ledger.Ledger(100, 100, 300)
    resumed.resume([{"step": 1, **first}, {"step": 2, **second}])
    assert resumed.stamp() == book.stamp()


# -- statistics over problems and seeds ----------------------------------------------------------
def _outcomes(right: int, n: int = 40, start: int = 0) -> dict:
    return {f"p{i}": start <= i < start + right for i in range(n)}


def test_holm_matches_the_closed_form():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> monotone 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_one_seed_is_the_plain_paired_comparison():
    a, b = _outcomes(20), _outcomes(10)
    one = stats.paired_seeds([a], [b])
    plain = stats.paired(a, b)
    assert (one.diff, one.p_value, one.ci_low, one.ci_high) == (plain.diff, plain.p_value, plain.ci_low, plain.ci_high)


def test_seeds_are_not_pooled_as_if_they_were_problems():
    base = _outcomes(10)
    agree = stats.paired_seeds([_outcomes(16)] * 3, [base])
    disagree = stats.paired_seeds([_outcomes(10), _outcomes(16), _outcomes(22)], [base])
    assert agree.diff == pytest.approx(disagree.diff) == pytest.approx(6 / 40)
    assert agree.p_value == stats.mcnemar_exact(6, 0)  # three agreeing seeds are one seed's evidence, not 18 pairs
    assert disagree.a_only == 6 and disagree.b_only == 0  # problems gained on a majority of the seeds


# -- seeds in the params -------------------------------------------------------------------------
def test_seed_variants_keep_the_split_and_name_their_runs():
    p = config.load("params/smoke.yaml", overrides={"run.seeds": [7, 8, 9]})
    assert seeds.train_seed(p) == 7
    variants = seeds.seed_variants(p, "gkd")
    assert [s for s, _ in variants] == [8, 9]
    v = variants[0][1]
    assert v.run.seed == p.run.seed and seeds.train_seed(v) == 8  # same split, its own training seed
    assert v.run_name("gkd") == "smoke/gkd-seed8" and p.run_name("gkd") == "smoke/gkd"
    assert seeds.seed_variants(config.load("params/smoke.yaml"), "gkd") == []


@pytest.mark.parametrize("bad", [[1, 1], [-1], ["a"]])
def test_bad_seeds_are_refused_naming_the_field(bad):
    with pytest.raises(ParamsError, match="run.seeds"):
        config.load("params/smoke.yaml", overrides={"run.seeds": bad})


def test_a_comparison_that_names_no_method_is_refused():
    with pytest.raises(ParamsError, match="evaluation.comparisons"):
        config.load("params/smoke.yaml", overrides={"evaluation.comparisons": ["gkd vs ppo"]})


# -- a real (tiny) run: the ledger's records, evaluation apart, seeds changing the samples -------------
def test_seeds_change_the_samples_and_evaluation_never_enters_the_training_column(env, monkeypatch):
    from atlas_lib.data import splits
    from atlas_lib.evaluation import evaluate as ev
    from atlas_lib.methods.gkd.trainer import run_gkd

    real = ev.evaluate

    def slow_evaluate(*args, **kwargs):  # evaluation that takes 2 s more than it should
        time.sleep(2.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "evaluate", slow_evaluate)
    p = config.load("params/smoke.yaml", overrides={
        "tracking.wandb": "disabled", "gkd.max_steps": 2, "gkd.eval_steps": 1, "gkd.save_steps": 5,
        "run.seeds": [1, 2], "gkd.temperature": 1.5})
    splits.prepare(p)
    s = run_gkd(p)
    assert [r["seed"] for r in s["seed_runs"]] == [2] and s["seed_runs"][0]["status"] == "complete"
    runs = {seed: Path(env / "runs" / "smoke" / name) for seed, name in ((1, "gkd"), (2, "gkd-seed2"))}
    rows = {seed: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for seed, d in runs.items()}
    books = {seed: [r for r in rs if r["kind"] == "ledger"] for seed, rs in rows.items()}
    losses = {seed: [r["loss"] for r in rs if r["kind"] == "train"] for seed, rs in rows.items()}
    assert losses[1] != losses[2]  # other samples, so other losses
    for seed, book in books.items():
        assert [r["step"] for r in book] == [1, 2], seed
        assert all(r["sampled_tokens"] > 0 and r["teacher_tokens"] > 0 and r["sampling_seconds"] > 0 for r in book)
    t = s["training"]
    steps = sum(r["step_seconds"] for r in books[1])
    assert t["train_seconds"] == pytest.approx(steps, abs=1e-3)
    evals = [r for r in rows[1] if r["kind"] == "eval"]
    assert all(r["eval_seconds"] >= 2.0 for r in evals[1:])  # each point's own time, slowed by 2 s
    assert t["train_seconds"] + sum(r["eval_seconds"] for r in evals) <= t["duration_seconds"]
    assert t["eval_seconds"] >= 2.0 * len(evals)
    assert [r["train_seconds"] for r in evals] == sorted(r["train_seconds"] for r in evals)
    assert evals[-1]["train_flops"] == pytest.approx(sum(r["flops"] for r in books[1]))
    # the reported row is the final model: no other checkpoint stands in for it
    assert s["distilled"]["step"] == t["global_step"] == 2 and (runs[1] / "final" / "model.safetensors").exists()
