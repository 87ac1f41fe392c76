"""No run is lost or silently replaced: finished runs are never resumed, changed parameters are
not resumed into, damaged metrics are named, re-prepared data moves the old split aside, one
report per profile at a time, run files readable by collaborators."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_lib.core import config
from atlas_lib.core.files import FILE_MODE, RunDirError, atomic_write_json, read_jsonl, share_tree, unwritable
from atlas_lib.core.rundir import RunDir
from atlas_lib.data import splits
from atlas_lib.report import pipeline, site, stage_run
from atlas_lib.report.stage_run import execute


def _params(**over):
    return config.load("params/smoke.yaml", overrides={"tracking.wandb": "disabled", **over})


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".lock"):
        h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


def _started(params, stage="gkd") -> RunDir:
    rd = RunDir.open(params, stage)
    rd.append({"kind": "train", "step": 1, "loss": 0.5})
    rd.release()
    return rd


def test_resuming_a_finished_run_is_refused_and_changes_nothing(env):
    p = _params()
    rd = _started(p)
    atomic_write_json(rd.path / "summary.json", {"status": "complete"})
    before = _tree_hash(rd.path)
    with pytest.raises(RunDirError, match="finished .*never modified"):
        RunDir.open(_params(**{"gkd.resume": True, "gkd.max_steps": 9}), "gkd", resume=True)
    assert _tree_hash(rd.path) == before


def test_resuming_with_changed_training_parameters_needs_an_explicit_yes(env):
    rd = _started(_params())
    before = _tree_hash(rd.path)
    with pytest.raises(RunDirError, match="resume_changed"):
        RunDir.open(_params(**{"gkd.resume": True, "gkd.learning_rate": 0.5}), "gkd", resume=True)
    assert _tree_hash(rd.path) == before
    RunDir.open(_params(**{"gkd.resume": True, "gkd.learning_rate": 0.5, "gkd.resume_changed": True}), "gkd",
                resume=True).release()


def test_resume_itself_is_not_a_parameter_change(env, caplog):
    _started(_params())
    with caplog.at_level(logging.WARNING):
        RunDir.open(_params(**{"gkd.resume": True}), "gkd", resume=True).release()
    assert "differ" not in caplog.text and "changed" not in caplog.text


def test_resuming_a_run_that_never_existed_says_so(env, caplog):
    with caplog.at_level(logging.INFO):
        RunDir.open(_params(**{"gkd.resume": True}), "gkd", resume=True).release()
    assert "no earlier run: starting fresh" in caplog.text


def test_a_damaged_line_inside_metrics_is_an_error_naming_file_and_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"kind": "train", "step": 1}\nnot json\n{"kind": "train", "step": 2}\n')
    with pytest.raises(RunDirError, match=r"metrics.jsonl: line 2 is not a JSON object"):
        read_jsonl(f)


def test_only_a_torn_last_line_is_skipped(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"kind": "train", "step": 1}\n{"kind": "tra')
    assert read_jsonl(f) == [{"kind": "train", "step": 1}]


def test_run_files_are_readable_by_the_group(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == FILE_MODE


def test_a_library_written_tree_gets_the_run_file_modes_less_the_umask(tmp_path):
    (tmp_path / "final").mkdir(mode=0o700)
    (tmp_path / "final" / "model.safetensors").touch(mode=0o600)
    old = os.umask(0o027)
    try:
        share_tree(tmp_path / "final")
    finally:
        os.umask(old)
    modes = [oct(p.stat().st_mode & 0o777) for p in (tmp_path / "final", tmp_path / "final" / "model.safetensors")]
    assert modes == ["0o750", "0o640"]


def test_re_preparing_another_split_moves_the_old_one_aside(env):
    first = splits.prepare(_params())
    old_eval = (first.dir / "eval.jsonl").read_text()
    (first.dir.parent / "baseline").mkdir()
    (first.dir.parent / "baseline" / "summary.json").write_text("{}")
    splits.prepare(_params(**{"run.seed": 8}))
    moved = list((first.dir.parent / ".previous").glob("data-*"))
    assert len(moved) == 1 and (moved[0] / "eval.jsonl").read_text() == old_eval
    assert list((first.dir.parent / ".previous").glob("baseline-*"))
    assert not (first.dir.parent / "baseline").exists()


def test_re_preparing_the_same_split_moves_nothing(env):
    first = splits.prepare(_params())
    splits.prepare(_params())
    assert not (first.dir.parent / ".previous").exists()


def test_a_new_split_changes_every_stage_fingerprint(env):
    p = _params()
    profile = env / "runs" / p.name
    splits.prepare(p)
    before = [pipeline.fingerprint(p, s, "", profile) for s in pipeline.steps(p)[:-1]]
    splits.prepare(_params(**{"run.seed": 8}))
    after = [pipeline.fingerprint(p, s, "", profile) for s in pipeline.steps(p)[:-1]]
    assert all(a != b for a, b in zip(before, after, strict=True))


def test_a_second_report_on_a_profile_is_refused_naming_the_holder(env):
    profile = env / "runs" / "smoke"
    profile.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (profile / ".lock").write_text(str(holder.pid))
        with pytest.raises(RunDirError, match=f"another `atlas report` \\(process {holder.pid}\\)"):
            pipeline.run_pipeline("params/smoke.yaml")
    finally:
        holder.kill()
        holder.wait()
    assert (profile / ".lock").read_text() == str(holder.pid)  # the holder's lock was left alone


def test_a_dead_holders_profile_lock_is_taken_over(env):
    profile = env / "runs" / "smoke"
    profile.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (profile / ".lock").write_text(str(dead.pid))
    lock = RunDir(profile)
    lock.acquire()
    assert (profile / ".lock").read_text() == str(os.getpid())
    lock.release()


def test_the_cli_turns_a_kit_error_into_one_message_and_exit_2(env):
    proc = subprocess.run([sys.executable, "-m", "atlas_lib.cli", "train", "gkd", "--params", "params/smoke.yaml",
                           "--set", "gkd.max_new_tokens=8"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ATLAS_RUNS": str(env / "runs")})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "gkd.max_new_tokens" in proc.stderr.strip().splitlines()[-1]


def test_papermill_with_an_unknown_notebook_parameter_fails_before_training(env):
    # papermill itself only warns "Passed unknown parameter" and injects it; the notebook refuses it
    out = env / "out.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", "notebooks/02_gkd.ipynb", str(out), "-p", "params_file",
                           "params/smoke.yaml", "-p", "lerning_rate", "1e-6"], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, "ATLAS_RUNS": str(env / "runs"), "WANDB_MODE": "disabled"})
    assert proc.returncode != 0
    assert "unknown notebook parameter 'lerning_rate' (did you mean 'learning_rate'?)" in proc.stderr
    assert not (env / "runs" / "smoke" / "gkd").exists()


def test_summary_files_round_trip(tmp_path):
    atomic_write_json(tmp_path / "summary.json", {"status": "complete", "x": float("nan")})
    assert json.loads((tmp_path / "summary.json").read_text())["x"] == "nan"


def _interrupted_run(params, key="grpo") -> RunDir:
    rd = _started(params, key)
    ckpt = rd.checkpoints / "checkpoint-1"
    ckpt.mkdir(parents=True)
    rd.mark_checkpoint(1, {"seconds": 1.0})
    return rd


def test_report_resumes_an_interrupted_single_method_stage(env):
    p = _params()
    _interrupted_run(p)
    step = next(s for s in pipeline.steps(p) if s.stages == ("grpo",))
    assert pipeline.resumable(p, step)


def test_a_finished_or_changed_stage_is_not_resumed(env):
    p = _params()
    rd = _interrupted_run(p)
    step = next(s for s in pipeline.steps(p) if s.stages == ("grpo",))
    assert not pipeline.resumable(_params(**{"grpo.learning_rate": 0.5}), step)
    atomic_write_json(rd.path / "summary.json", {"status": "complete"})
    assert not pipeline.resumable(p, step)


def _notebook_02(p):
    return next(s for s in pipeline.steps(p) if "gkd" in s.stages)  # gkd, off_policy and a sweep


def test_a_notebook_of_several_runs_resumes_its_interrupted_method(env):
    p = _params()
    _interrupted_run(p, "gkd")
    assert pipeline.resumable(p, _notebook_02(p))


def test_a_notebook_of_several_runs_resumes_after_its_finished_ones(env):
    p = _params()
    atomic_write_json(_started(p, "gkd").path / "summary.json", {"status": "complete"})
    _started(p, "off_policy")  # interrupted before its first checkpoint
    assert pipeline.resumable(p, _notebook_02(p))


def test_a_notebook_whose_runs_all_finished_starts_over_when_its_fingerprint_changed(env):
    p = _params()
    for key, variant in [("gkd", p), ("off_policy", p), *(("gkd", v) for _, v in config.sweep_variants(p, "gkd"))]:
        atomic_write_json(_started(variant, key).path / "summary.json", {"status": "complete"})
    assert not pipeline.resumable(p, _notebook_02(p))


def test_a_notebook_with_one_run_of_other_parameters_starts_over(env):
    p = _params()
    _interrupted_run(p, "gkd")
    _interrupted_run(_params(**{"off_policy.learning_rate": 0.5}), "off_policy")
    assert not pipeline.resumable(p, _notebook_02(p))


def test_a_resumed_notebook_asks_every_method_to_resume(env, monkeypatch):
    import papermill

    seen = {}
    monkeypatch.setattr(papermill, "execute_notebook", lambda src, out, parameters, **kw: seen.update(parameters))
    execute(_notebook_02(_params()), Path("params/smoke.yaml"), env / "02.ipynb", resume=True)
    assert {k: v for k, v in seen.items() if k != "params_file"} == {"gkd": {"resume": True},
                                                                      "off_policy": {"resume": True}}


def test_a_key_written_twice_in_a_params_file_is_refused(tmp_path):
    f = tmp_path / "twice.yaml"
    f.write_text("name: twice\ngkd:\n  learning_rate: 1.0e-6\n  max_steps: 3\n  learning_rate: 1.0e-5\n")
    with pytest.raises(config.ParamsError, match=r"twice.yaml: key 'learning_rate' appears twice .*line 5"):
        config.load(f)


TOKEN = "hf_" + "a1B2c3D4e5" * 4  # a canary shaped like a Hugging Face token
WANDB_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 hex digits, the shape of a W&B key


@pytest.mark.parametrize("field, value, home", [
    ("description", f"my run {TOKEN}", "HF_TOKEN"),
    ("tracking.project", f"team {WANDB_KEY}", "WANDB_API_KEY"),
    ("prompt.system", f"key {WANDB_KEY}", "WANDB_API_KEY"),
])
def test_a_token_typed_into_any_params_field_is_refused_naming_field_and_variable(field, value, home):
    with pytest.raises(config.ParamsError, match=rf"^{re.escape(field)} looks like it holds an access token.*{home}") as e:
        config.load("params/smoke.yaml", overrides={field: value})
    assert TOKEN not in str(e.value) and WANDB_KEY not in str(e.value)  # the message never repeats the key


def test_a_token_in_a_params_file_is_refused_at_load(tmp_path):
    f = tmp_path / "leaky.yaml"
    f.write_text(f"name: leaky\ndescription: shared with {TOKEN}\n")
    with pytest.raises(config.ParamsError, match="description looks like it holds an access token"):
        config.load(f)


def test_a_token_in_a_sweep_variant_is_refused():
    raw = config.read_yaml("params/smoke.yaml")
    raw["sweeps"] = [{"name": "t", "label": TOKEN, "gkd": {"temperature": 0.6}}]
    with pytest.raises(config.ParamsError, match=r"sweeps\[0\]\.label looks like"):
        config.from_dict(raw)


def test_a_hub_snapshot_directory_is_not_mistaken_for_a_key(tmp_path):
    snap = tmp_path / "snapshots" / WANDB_KEY
    snap.mkdir(parents=True)
    assert config.load("params/smoke.yaml", overrides={"models.student": str(snap)}).models.student == str(snap)


@pytest.mark.parametrize("key, home", [("tracking.api_key", "WANDB_API_KEY"), ("models.hf_token", "HF_TOKEN")])
def test_a_key_field_points_at_its_environment_variable(key, home):
    with pytest.raises(config.ParamsError, match=rf"{re.escape(key)}: .*set the environment variable {home}"):
        config.load("params/smoke.yaml", overrides={key: "x"})


def test_a_key_field_in_a_params_file_points_at_its_environment_variable():
    raw = {**config.read_yaml("params/smoke.yaml"), "tracking": {"api_key": "x"}}
    with pytest.raises(config.ParamsError, match="tracking.api_key: .*WANDB_API_KEY"):
        config.from_dict(raw)


def test_the_html_scrubber_still_removes_a_token(caplog):
    from atlas_lib.report.html import scrub_text

    text, counts = scrub_text(f"<p>project team {TOKEN}</p>")
    assert TOKEN not in text and counts["secrets"] == 1


def _make_read_only(path: Path) -> bool:
    """``chattr -R +i``: nobody may write under ``path``, root included; False where not allowed."""
    import shutil

    return shutil.which("chattr") is not None and subprocess.run(
        ["chattr", "-R", "+i", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("command", [["data"], ["baseline"], ["train", "gkd"], ["report"]])
def test_a_read_only_runs_directory_is_one_message_from_every_command(tmp_path, command):
    runs = tmp_path / "ro-runs"
    runs.mkdir()
    env = {**os.environ, "ATLAS_RUNS": str(runs), "WANDB_MODE": "disabled"}

    def atlas(*args):
        return subprocess.run([sys.executable, "-m", "atlas_lib.cli", *args, "--params", "params/smoke.yaml"],
                              capture_output=True, text=True, timeout=300, env=env,
                              cwd=Path(__file__).resolve().parent.parent)

    if command != ["data"]:  # the others need a prepared split to get as far as writing
        assert atlas("data").returncode == 0
    before = _tree_hash(runs)
    if not _make_read_only(runs):
        pytest.skip("cannot make a directory read-only for this user (chattr +i)")
    try:
        proc = atlas(*command)
    finally:
        subprocess.run(["chattr", "-R", "-i", str(runs)], check=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "cannot write" in last and str(runs) in last, last
    assert _tree_hash(runs) == before


def test_ctrl_c_in_a_terminal_stops_the_report_with_one_message(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it (the kernel gets it too)."""
    import signal
    import time

    env = {**os.environ, "ATLAS_RUNS": str(tmp_path / "runs"), "ATLAS_REPORTS": str(tmp_path / "reports"),
           "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "atlas_lib.cli", "report", "--params", "params/smoke.yaml"],
                            cwd=Path(__file__).resolve().parent.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = tmp_path / "runs" / "smoke" / "logs" / "02_gkd.log"
    deadline = time.monotonic() + 240
    while not (log.exists() and "Executing" in log.read_text()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "interrupted (Ctrl-C)" in err.strip().splitlines()[-1], err[-3000:]
    assert "Traceback" not in err  # the kernel's own teardown noise goes to the stage's log
    assert len(err.strip().splitlines()) <= 6
    assert (tmp_path / "runs" / "smoke" / "notebooks" / "01_data.done.json").exists()  # finished stage kept


def _finished_profile(p, profile: Path) -> None:
    """Done markers as a finished `atlas report` leaves them, and its executed report notebook."""
    nb_dir = profile / "notebooks"
    nb_dir.mkdir(parents=True)
    upstream = ""
    for step in pipeline.steps(p)[:-1]:
        fp = pipeline.fingerprint(p, step, upstream, profile)
        atomic_write_json(nb_dir / f"{step.notebook}.done.json", {"fingerprint": fp, "seconds": 1})
        upstream += fp
    (nb_dir / "05_comparison.ipynb").write_text("{}")


def _cannot_lock(self, busy=None):
    raise unwritable(self.path / ".lock", PermissionError(1, "Operation not permitted")) \
        from PermissionError(1, "Operation not permitted")


def test_a_report_renders_finished_runs_it_cannot_lock(env, monkeypatch):
    p = config.load("params/smoke.yaml")  # as the report reads it
    _finished_profile(p, env / "runs" / "smoke")
    rendered = []
    monkeypatch.setattr(RunDir, "acquire", _cannot_lock)
    monkeypatch.setattr(site, "render_html", lambda nb, out, with_code, **kw: rendered.append(nb.name) or out)
    monkeypatch.setattr(site, "write_table_files", lambda params, out, col=None, nav="": None)
    monkeypatch.setattr(site, "collect", lambda params: None)
    monkeypatch.setattr(site, "page_title", lambda col, params: "title")
    pipeline.run_pipeline("params/smoke.yaml")
    assert "05_comparison.ipynb" in rendered


def test_a_report_that_would_have_to_run_a_stage_it_cannot_write_says_so(env, monkeypatch):
    p = config.load("params/smoke.yaml")
    _finished_profile(p, env / "runs" / "smoke")
    (env / "runs" / "smoke" / "notebooks" / "03_grpo.done.json").unlink()
    monkeypatch.setattr(RunDir, "acquire", _cannot_lock)
    with pytest.raises(RunDirError, match=r"cannot write .*\(03_grpo would have to run"):
        pipeline.run_pipeline("params/smoke.yaml")


@pytest.mark.parametrize("command", ["baseline", "train"])
def test_a_command_checks_it_can_write_before_it_computes(tmp_path, monkeypatch, capsys, command):
    from atlas_lib import cli
    from atlas_lib.core import registry
    from atlas_lib.evaluation import baselines

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path / "file" / "runs"))  # under a file: nothing can be written
    computed = []
    monkeypatch.setattr(baselines, "evaluate_baselines", lambda params: computed.append(params))
    monkeypatch.setitem(registry._METHODS, "gkd", dataclasses.replace(registry.get("gkd"), runner=computed.append))
    assert cli.main([command, *(["gkd"] if command == "train" else []), "--params", "params/smoke.yaml"]) == 2
    assert computed == [] and "cannot write" in capsys.readouterr().err


def test_a_report_keeps_the_split_atlas_data_just_prepared(env, monkeypatch):
    p = config.load("params/smoke.yaml")
    prepared = splits.prepare(p)
    profile = env / "runs" / "smoke"
    monkeypatch.setattr(stage_run, "execute", lambda *a, **k: None)  # the notebooks themselves are not the point
    pipeline._run_steps(p, Path("params/smoke.yaml"), profile, profile / "notebooks", force=False, only=["data"])
    assert not (profile / ".previous").exists() and (prepared.dir / "manifest.json").exists()


def test_a_report_still_moves_a_split_prepared_with_other_parameters(env, monkeypatch):
    splits.prepare(config.load("params/smoke.yaml", overrides={"run.seed": 8}))
    profile = env / "runs" / "smoke"
    monkeypatch.setattr(stage_run, "execute", lambda *a, **k: None)
    pipeline._run_steps(config.load("params/smoke.yaml"), Path("params/smoke.yaml"), profile, profile / "notebooks",
                        force=False, only=["data"])
    assert list((profile / ".previous").glob("data-*"))


def _papermill_fills_the_disk(monkeypatch):
    """papermill writing the executed notebook on a full disk: half a JSON file, then ENOSPC."""
    import errno

    import papermill

    def execute_notebook(src, out, **kw):
        Path(out).write_text('{"cells": [{"cell_type": "code", "sou')
        raise OSError(errno.ENOSPC, "No space left on device", out)

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)


def test_a_full_disk_under_atlas_report_is_the_kits_disk_message_and_exit_2(env, monkeypatch, capsys):
    from atlas_lib import cli

    _papermill_fills_the_disk(monkeypatch)
    assert cli.main(["report", "--params", "params/smoke.yaml"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "disk is full" in last and "point ATLAS_RUNS at another directory" in last, last


def test_a_full_disk_under_atlas_report_leaves_no_truncated_notebook(env, monkeypatch):
    _papermill_fills_the_disk(monkeypatch)
    with pytest.raises(RunDirError):
        pipeline.run_pipeline("params/smoke.yaml")
    assert [f.name for f in (env / "runs" / "smoke" / "notebooks").iterdir()] == []
