"""The shared run loop on tiny models: contract, refusal, resume after SIGKILL, NaN stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas_lib.core import config
from atlas_lib.core.files import RunDirError


def _params(**over):
    base = {"tracking.wandb": "disabled", "gkd.max_steps": 2, "gkd.eval_steps": 1, "gkd.save_steps": 1}
    return config.load("params/smoke.yaml", overrides={**base, **over})


def _prepare(params):
    from atlas_lib.data import splits as data

    return data.prepare(params)


def test_gkd_run_writes_the_contract(env):
    from atlas_lib.methods.gkd.trainer import run_gkd

    p = _params()
    _prepare(p)
    s = run_gkd(p)
    run = Path(env / "runs" / "smoke" / "gkd")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in rows if r["kind"] == "eval"]
    trains = [r["step"] for r in rows if r["kind"] == "train"]
    assert evals == [0, 1, 2] and trains == [1, 2]
    loss_at = {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}
    for r in rows:  # an eval point carries its own step's loss, not the previous step's
        if r["kind"] == "eval" and r["step"] > 0:
            assert r["train_loss"] == loss_at[r["step"]], r["step"]
    for key in ("dataset", "config", "baseline", "teacher", "distilled", "training", "provenance"):
        assert key in s
    t = s["training"]
    assert t["global_step"] == 2 and t["duration_seconds"] > 0 and t["train_samples_per_second"] > 0
    assert t["device_kind"] == "CPU" and t["device_hours"] > 0 and t["peak_step"] in (0, 1, 2)
    rss = [r["peak_rss_gb"] for r in rows if r["kind"] == "train"]
    assert t["peak_rss_gb"] == max(rss) and 0.05 < rss[0] <= rss[-1] < 64  # a process peak only grows
    assert s["distilled"]["mean_reverse_kl"] is not None and s["distilled"]["mean_reverse_kl"] >= 0
    assert s["distilled"]["heldout_objective"] > 0  # GKD's own loss (JSD at its beta) on the test answers
    assert (run / "final" / "model.safetensors").exists()
    full = json.loads((run / "eval" / "final_full.json").read_text())  # the final row: the test split
    assert full["n"] == p.evaluation.limit and "reused_records" not in full  # eval points are validation
    assert s["distilled"]["n"] == p.evaluation.limit
    assert s["validation"]["final"]["n"] == p.evaluation.during_training_limit
    assert s["did_not_train"] is None and s["training"]["weights_changed"] is True
    # weights only as safetensors (optimizer/RNG state files are read back with weights_only=True)
    assert not list(run.rglob("pytorch_model*.bin")) and list(run.glob("checkpoints/*/model.safetensors"))
    with pytest.raises(RunDirError, match="already exists"):
        run_gkd(p)


def test_a_finished_runs_files_are_0644_and_directories_0755(env):
    from atlas_lib.methods.gkd.trainer import run_gkd

    p = _params(**{"gkd.max_steps": 1})
    _prepare(p)
    run_gkd(p)
    run = env / "runs" / "smoke" / "gkd"
    modes = {str(f.relative_to(run)): oct(f.stat().st_mode & 0o777) for f in (run, *run.rglob("*"))
             if f.name != ".lock"}
    wrong = {f: m for f, m in modes.items() if m != ("0o755" if (run / f).is_dir() else "0o644")}
    assert not wrong and "final/model.safetensors" in modes, wrong


def test_resuming_a_run_that_finished_with_the_same_parameters_reuses_it(env):
    """A notebook of several runs resumed after an interruption: its finished runs are not retrained."""
    from atlas_lib.methods.gkd.trainer import run_gkd

    p = _params(**{"gkd.max_steps": 1})
    _prepare(p)
    first = run_gkd(p)
    before = (env / "runs" / "smoke" / "gkd" / "metrics.jsonl").read_bytes()
    again = run_gkd(_params(**{"gkd.max_steps": 1, "gkd.resume": True}))
    assert again["training"]["global_step"] == first["training"]["global_step"] == 1
    assert (env / "runs" / "smoke" / "gkd" / "metrics.jsonl").read_bytes() == before


def test_step0_reuses_the_baseline_only_when_params_match(env):
    from atlas_lib.evaluation import baselines as stages
    from atlas_lib.evaluation.evaluate import load_eval
    from atlas_lib.methods.gkd.trainer import run_gkd

    p = _params(**{"gkd.max_steps": 1})
    _prepare(p)
    stages.evaluate_baselines(p, which=("student",))
    assert stages.baseline_records(_params(**{"evaluation.max_new_tokens": 7})) is None  # other decoding
    run_gkd(p)
    run = env / "runs" / "smoke"
    step0 = [json.loads(x) for x in (run / "gkd/metrics.jsonl").read_text().splitlines() if '"eval"' in x][0]
    n = p.evaluation.during_training_limit
    assert step0["step"] == 0 and step0["reused_records"] == n and step0["n"] == n
    base = load_eval(run / "baseline", "student_val").records
    reused = load_eval(run / "gkd/eval", "step_0").records
    # the same records, each with GKD's own objective picked from the baseline's scores at its beta
    assert [{k: v for k, v in r.items() if k != "objective"} for r in reused] == base
    assert all(r["objective"] == r["objective_by_beta"]["0.5"] > 0 for r in reused if r["completion"])
    assert step0["heldout_objective"] > 0


def test_grpo_run_logs_rewards(env):
    from atlas_lib.methods.grpo.trainer import run_grpo

    p = _params(**{"grpo.max_steps": 2, "grpo.eval_steps": 2, "evaluation.reverse_kl": False})
    _prepare(p)
    s = run_grpo(p)
    rows = [json.loads(x) for x in (env / "runs/smoke/grpo/metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(0.0 <= r["reward_mean"] <= 1.0 and 0.0 <= r["frac_zero_std"] <= 1.0 for r in train)
    assert s["trl_settings"]["loss_type"] == p.grpo.loss_type and s["status"] == "complete"


def test_grpo_holds_the_teacher_only_while_it_scores(env, monkeypatch):
    """GRPO needs the teacher for the reverse-KL column only: it is loaded per evaluation and freed."""
    import gc
    import weakref

    from atlas_lib.core import models
    from atlas_lib.methods.grpo import trainer as grpo
    from atlas_lib.training.callback import AtlasCallback

    p = _params(**{"grpo.max_steps": 2, "grpo.eval_steps": 1})
    _prepare(p)
    loaded, alive_in_training = [], []
    real = models.load_model

    def spy(name, **kw):
        out = real(name, **kw)
        if name == p.models.teacher:
            loaded.append(weakref.ref(out[0]))
        return out

    def step_begin(self, args, state, control, **kw):
        gc.collect()
        alive_in_training.append(sum(r() is not None for r in loaded))

    monkeypatch.setattr(models, "load_model", spy)
    monkeypatch.setattr(AtlasCallback, "on_step_begin", step_begin, raising=False)
    s = grpo.run_grpo(p)
    assert len(loaded) == 4  # eval points 0, 1, 2 and the rest of the final evaluation
    assert alive_in_training == [0, 0]
    assert s["distilled"]["mean_reverse_kl"] is not None


def test_a_full_disk_refuses_before_anything_is_written(env, monkeypatch):
    import shutil
    from collections import namedtuple

    from atlas_lib.methods.gkd.trainer import run_gkd

    p = _params()
    _prepare(p)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(RunDirError, match=r"free disk.*save_steps"):
        run_gkd(p)
    assert not (env / "runs" / "smoke" / "gkd").exists()


def test_a_disk_that_fills_mid_run_ends_with_a_message_and_the_run_resumes(env, monkeypatch):
    import transformers

    from atlas_lib.methods.gkd.trainer import run_gkd

    p = _params(**{"gkd.max_steps": 2, "gkd.save_steps": 1, "gkd.eval_steps": 2})
    _prepare(p)
    real, saves = transformers.Trainer._save_checkpoint, []

    def fills_at_the_second(self, *a, **kw):
        saves.append(1)
        if len(saves) == 2:  # what torch's zip writer raises on a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing "
                               "file data/3: file write failed")
        return real(self, *a, **kw)

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", fills_at_the_second)
    with pytest.raises(RunDirError, match=r"filled while training or writing a checkpoint.*resumes from its last "
                                          r"complete checkpoint \(checkpoint-1\)"):
        run_gkd(p)
    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", real)
    summary = run_gkd(_params(**{"gkd.max_steps": 2, "gkd.save_steps": 1, "gkd.eval_steps": 2, "gkd.resume": True}))
    assert summary["training"]["global_step"] == 2


def _train_cmd(*sets):
    return [sys.executable, "-m", "atlas_lib.cli", "train", "gkd", "--params", "params/smoke.yaml",
            "--set", "tracking.wandb=disabled", "--set", "gkd.max_steps=4", "--set", "gkd.eval_steps=2",
            "--set", "gkd.save_steps=1", *[x for s in sets for x in ("--set", s)]]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("gkd.lora={r: 4, alpha: 8}",), ("gkd.engine=distillation",)],
                         ids=["full", "lora", "distillation"])
def test_sigkill_then_resume_matches_uninterrupted(env, extra):
    cwd = Path(__file__).resolve().parent.parent
    e = dict(os.environ)
    subprocess.run([sys.executable, "-m", "atlas_lib.cli", "data", "--params", "params/smoke.yaml"], cwd=cwd,
                   env=e, check=True, capture_output=True)
    ref = subprocess.run(_train_cmd("gkd.run_name=smoke/ref", *extra), cwd=cwd, env=e, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    proc = subprocess.Popen(_train_cmd(*extra), cwd=cwd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = env / "runs/smoke/gkd/checkpoints/checkpoint-2/.complete"
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # mid-run, no cleanup
    proc.wait()
    res = subprocess.run(_train_cmd("gkd.resume=true", *extra), cwd=cwd, env=e, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in (env / "runs/smoke/gkd/metrics.jsonl").read_text().splitlines()]
    keys = [(r["kind"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate points after resume"
    assert sorted(s for k, s in keys if k == "train") == [1, 2, 3, 4]
    assert sorted(s for k, s in keys if k == "eval") == [0, 2, 4]
    a = json.loads((env / "runs/smoke/ref/summary.json").read_text())
    b = json.loads((env / "runs/smoke/gkd/summary.json").read_text())
    assert a["training"]["train_loss"] == pytest.approx(b["training"]["train_loss"], rel=1e-3, abs=1e-5)
    assert a["distilled"]["accuracy"] == b["distilled"]["accuracy"]
