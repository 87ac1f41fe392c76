"""W&B sees each eval point at its own optimizer step with a table of its completions, and the run's
W&B summary gets the reported test row before the run closes (a stub stands in for wandb)."""

from __future__ import annotations

import sys
import types

from atlas_lib.core.rundir import RunDir
from atlas_lib.training import callback, clock, wandb_log


class _Table:
    def __init__(self, columns, data):
        self.columns, self.data = columns, data


def _stub_wandb(monkeypatch):
    calls = {"log": [], "summary": {}, "finished": 0, "teardown": 0}
    run = types.SimpleNamespace(summary=types.SimpleNamespace(update=calls["summary"].update))
    stub = types.SimpleNamespace(run=run, Table=_Table, log=calls["log"].append)

    def finish():
        calls["finished"] += 1
        stub.run = None

    stub.finish = finish
    stub.teardown = lambda: calls.__setitem__("teardown", calls["teardown"] + 1)
    monkeypatch.setitem(sys.modules, "wandb", stub)
    calls["stub"], calls["run"] = stub, run
    return calls


def test_an_eval_point_reaches_wandb_at_its_step_with_its_completions(monkeypatch, tmp_path):
    calls = _stub_wandb(monkeypatch)
    cb = callback.AtlasCallback(RunDir(tmp_path), clock.DeviceClock(), lambda m: None, 1, lambda *a: None,
                                wandb_on=True)
    records = [{"id": "p1", "prompt": "2+2?", "completion": "Final Answer: 4", "reference": "4", "correct": True}]
    cb._log_wandb({"kind": "eval", "step": 3, "accuracy": 1.0, "n": 1}, records)
    (row,) = calls["log"]
    assert row["train/global_step"] == 3 and row["atlas/accuracy"] == 1.0
    table = row["atlas/completions"]
    assert table.data == [[3, "p1", "2+2?", "Final Answer: 4", "4", True]]


def test_finishing_adds_the_test_row_to_the_summary(monkeypatch):
    calls = _stub_wandb(monkeypatch)
    wandb_log.finish_wandb({"atlas/test/accuracy": 0.475, "atlas/test/n": 200})
    assert calls["summary"] == {"atlas/test/accuracy": 0.475, "atlas/test/n": 200}
    assert calls["finished"] == 1
    assert calls["teardown"] == 1  # the next run in this process re-reads WANDB_DIR
    wandb_log.finish_wandb()  # closing twice is a no-op
    assert calls["finished"] == 1


def test_the_baselines_get_their_own_wandb_run_with_their_rows(monkeypatch, env):
    from atlas_lib.core import config
    from atlas_lib.evaluation import evaluate as ev

    calls = _stub_wandb(monkeypatch)
    stub, run = calls["stub"], calls["run"]
    inits = []
    run.log = calls["log"].append

    def init(**kw):
        inits.append(kw)
        stub.run = run
        return run

    stub.init = init
    params = config.load("params/smoke.yaml", overrides={"tracking.wandb": "offline"})
    out = env / "runs" / "smoke" / "baseline"
    records = [{"id": "p1", "prompt": "2+2?", "completion": "Final Answer: 4", "reference": "4", "correct": True}]
    ev.save_eval(ev.EvalResult({"accuracy": 1.0, "n": 1}, records), out, "student")
    summary = {"student": {"accuracy": 1.0, "n": 1}, "teacher": {"accuracy": 0.5, "n": 1}, "student_val": None}
    assert wandb_log.log_baselines(params, summary)
    assert inits[0]["name"] == "smoke-baseline" and inits[0]["dir"] == str(out)
    assert calls["summary"]["atlas/teacher/accuracy"] == 0.5
    assert calls["log"][0]["atlas/student/completions"].data == [["p1", "2+2?", "Final Answer: 4", "4", True]]
    assert calls["finished"] == 1


def test_no_baseline_run_when_tracking_is_disabled(monkeypatch, env):
    from atlas_lib.core import config

    _stub_wandb(monkeypatch)
    params = config.load("params/smoke.yaml", overrides={"tracking.wandb": "disabled"})
    assert not wandb_log.log_baselines(params, {"student": {"accuracy": 1.0}})
