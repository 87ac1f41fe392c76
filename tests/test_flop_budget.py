"""run.flop_budget: every trained arm stops at the first optimizer step whose cumulative training FLOPs
(the compute ledger's) reach the budget, with its final evaluation and checkpoint as at max_steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atlas_lib.core import config
from atlas_lib.core.preflight import train_hash
from atlas_lib.core.validate import ParamsError
from atlas_lib.training import loop


def _params(key: str, **over):
    base = {"tracking.wandb": "disabled", "evaluation.reverse_kl": False, f"{key}.max_steps": 4,
            f"{key}.eval_steps": 10, f"{key}.save_steps": 10}
    return config.load("params/smoke.yaml", overrides={**base, **over})


def _rows(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def _train(key: str, p):
    if key == "gkd":
        from atlas_lib.methods.gkd.trainer import run_gkd as fn
    else:
        from atlas_lib.methods.grpo.trainer import run_grpo as fn
    return fn(p)


@pytest.mark.parametrize("key", ["gkd", "grpo"])
def test_a_run_stops_at_the_first_step_whose_cumulative_flops_reach_the_budget(env, key):
    from atlas_lib.data import splits

    ref = _params(key, **{f"{key}.run_name": "reference"})
    splits.prepare(ref)
    _train(key, ref)
    cum = [r["cum_flops"] for r in sorted(_rows(env / "runs" / "reference", "ledger"), key=lambda r: r["step"])]
    assert len(cum) == 4 and cum[0] < cum[1]
    budget = (cum[0] + cum[1]) / 2  # reached during step 2 of the same (seeded) run

    s = _train(key, _params(key, **{"run.flop_budget": budget}))
    run = env / "runs" / "smoke" / key
    ledger = sorted(_rows(run, "ledger"), key=lambda r: r["step"])
    stop = s["training"]["global_step"]
    assert stop < 4, "max_steps stays the upper bound, the budget stopped the run first"
    assert ledger[-1]["step"] == stop, "no step ran past the stop"
    assert ledger[-1]["cum_flops"] >= budget, "the last step reached the budget"
    assert all(r["cum_flops"] < budget for r in ledger[:-1]), "no earlier step had reached it"
    assert stop == 2, "same seed as the reference run: the budget falls in step 2"
    fb = s["training"]["flop_budget"]
    assert fb["stopped_on_budget"] is True and fb["budget_step"] == stop and fb["budget"] == budget
    assert fb["train_flops"] == ledger[-1]["cum_flops"] == s["training"]["train_flops"]
    assert fb["max_steps"] == 4
    assert stop in [r["step"] for r in _rows(run, "eval")], "a final evaluation point at the stop"
    assert (run / "checkpoints" / f"checkpoint-{stop}").is_dir(), "a checkpoint at the stop, as at max_steps"
    assert (run / "final" / "model.safetensors").exists() and s["distilled"]["step"] == stop


class _Interrupted(Exception):
    pass


def test_a_run_interrupted_after_its_budget_stop_resumes_without_another_step(env, monkeypatch):
    """Killed in its test-row evaluation after it stopped on the budget (its checkpoint at the stop on
    disk), the resumed run takes no further step: HF Trainer alone would train one more."""
    from atlas_lib.data import splits

    ref = _params("gkd", **{"gkd.run_name": "reference"})
    splits.prepare(ref)
    _train("gkd", ref)
    cum = [r["cum_flops"] for r in sorted(_rows(env / "runs" / "reference", "ledger"), key=lambda r: r["step"])]
    budget = (cum[0] + cum[1]) / 2
    real = loop._full_eval

    def interrupted_in_the_test_row(rd, name, *a, **kw):
        if name == "final_full":
            raise _Interrupted
        return real(rd, name, *a, **kw)

    monkeypatch.setattr(loop, "_full_eval", interrupted_in_the_test_row)
    with pytest.raises(_Interrupted):
        _train("gkd", _params("gkd", **{"run.flop_budget": budget}))
    run = env / "runs" / "smoke" / "gkd"
    assert (run / "checkpoints" / "checkpoint-2").is_dir() and not (run / "summary.json").exists()
    monkeypatch.setattr(loop, "_full_eval", real)
    s = _train("gkd", _params("gkd", **{"run.flop_budget": budget, "gkd.resume": True}))
    ledger = sorted(r["step"] for r in _rows(run, "ledger"))
    evals = [r["step"] for r in _rows(run, "eval")]
    assert ledger == [1, 2], "no step past the budget's stop"
    assert s["training"]["global_step"] == 2
    assert s["training"]["flop_budget"]["stopped_on_budget"] is True
    assert len(evals) == len(set(evals)) and 2 in evals, "one final evaluation point at the stop"
    assert s["distilled"]["step"] == 2


def test_budget_outcome_of_a_run_that_reached_max_steps_first():
    recs = [{"step": 1, "cum_flops": 10.0}, {"step": 2, "cum_flops": 20.0}]
    out = loop.budget_outcome(recs, 50.0, 2, 2)
    assert out["stopped_on_budget"] is False
    assert out["budget_step"] is None and out["over_budget"] is None and out["train_flops"] == 20.0


def test_flop_budget_is_range_checked():
    with pytest.raises(ParamsError, match="flop_budget"):
        config.load("params/smoke.yaml", overrides={"run.flop_budget": -1.0})
    assert config.load("params/smoke.yaml", overrides={"run.flop_budget": "2.5e12"}).run.flop_budget == 2.5e12


def test_the_budget_changes_the_training_hashes_and_not_the_data_stage():

    none, some = config.load("params/smoke.yaml"), config.load("params/smoke.yaml", overrides={"run.flop_budget": 1e12})
    assert none.stage_hash("data") == some.stage_hash("data"), "the split and baselines never train"
    assert none.stage_hash("gkd") != some.stage_hash("gkd")
    assert train_hash(none, "grpo") != train_hash(some, "grpo"), "a changed budget is not resumed"


def test_a_budget_under_several_processes_is_refused_before_anything_runs(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    p = config.load("params/smoke.yaml", overrides={"run.flop_budget": 1e12})
    with pytest.raises(ParamsError, match="run.flop_budget = 1e\\+12 stops a single-process run only"):
        loop.run(p, "gkd", None, eval_fn=None, final_eval_fn=None, device=None, dataset_sizes={})
