"""Issue 39: a run name is a name, not a path. Every write stays under the runs root, a resume continues
only the kit's own run, the roots are pinned once, every signal is a message, and every refusal comes
before a model loads (these tests never train: the method's runner is replaced by a recorder)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas_lib import cli
from atlas_lib.core import config, paths, registry
from atlas_lib.core.config import ParamsError
from atlas_lib.core.files import RunDirError, atomic_write_json
from atlas_lib.core.preflight import preflight, stage_dir
from atlas_lib.core.rundir import RunDir
from atlas_lib.report import stage_run
from atlas_lib.report.stage_run import PipelineError, on_sigint

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "params" / "smoke.yaml")


def _tree(*dirs: Path) -> str:
    """A checksum of every file (path, bytes, link target) under ``dirs``: nothing outside the runs root may change."""
    h = hashlib.sha256()
    for d in dirs:
        for f in sorted(d.rglob("*")):
            if ".lock" == f.name:
                continue
            h.update(str(f).encode())
            if f.is_symlink():
                h.update(os.readlink(f).encode())
            elif f.is_file():
                h.update(f.read_bytes())
    return h.hexdigest()


def _outside(tmp: Path) -> str:
    """Everything a traversal could reach here: the project's notebooks, params and top-level entries, and the
    test's own folder outside the runs root."""
    top = hashlib.sha256("\n".join(sorted(p.name for p in ROOT.iterdir())).encode()).hexdigest()
    return top + _tree(ROOT / "notebooks", ROOT / "params", tmp / "outside")


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Runs under tmp/runs, an unrelated folder at tmp/outside, and a recorder in place of every runner: a
    test that reaches training fails on ``trained``."""
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("ATLAS_REPORTS", str(tmp_path / "reports"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "outside"
    (out / "eval").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("keep\n")
    (out / "eval" / "step_0.json").write_text('{"a": 1}\n')
    trained = []
    for key in registry.keys():
        monkeypatch.setitem(registry._METHODS, key, dataclasses.replace(registry.get(key), runner=trained.append))
    return tmp_path, trained


def _train(*sets: str) -> int:
    return cli.main(["train", "gkd", "--params", SMOKE, *[a for s in sets for a in ("--set", s)]])


def _params_file(tmp: Path, **top) -> str:
    text = (ROOT / "params" / "smoke.yaml").read_text()
    for k, v in top.items():
        text = text.replace("name: smoke\n", f"{k}: {json.dumps(v)}\n", 1)
    f = tmp / "p.yaml"
    f.write_text(text)
    return str(f)


# -- 1. one containment rule ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", ".", "../x", "/tmp", "a/b", ".previous", "x" * 300, "a b"])
def test_a_profile_name_that_is_a_path_is_refused_before_anything_is_written(world, capsys, name):
    tmp, trained = world
    before = _outside(tmp)
    assert cli.main(["report", "--params", _params_file(tmp, name=name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("atlas: error: name = ") and "Traceback" not in err
    assert _outside(tmp) == before
    assert not (tmp / "runs").exists()


@pytest.mark.parametrize("value", ["../../x", "OUTSIDE", "smoke/baseline", "smoke/data", "other/notebooks/x",
                                   "smoke/logs", "smoke/.previous/gkd", "smoke", "x" * 300, "a//b", "~/x"])
@pytest.mark.parametrize("resume", [False, True])
def test_a_run_name_outside_the_runs_root_is_refused_naming_the_field(world, capsys, value, resume):
    tmp, trained = world
    value = str(tmp / "outside") if value == "OUTSIDE" else value
    before = _outside(tmp)
    assert _train(f"gkd.run_name={value}", f"gkd.resume={str(resume).lower()}") == 2
    err = capsys.readouterr().err
    assert err.startswith("atlas: error: gkd.run_name = "), err
    assert "disk" not in err  # a long name is a name, not a full disk
    assert trained == []
    assert _outside(tmp) == before
    assert not (tmp / "runs").exists()


def test_a_link_under_the_runs_root_that_leads_outside_is_refused(world, capsys):
    tmp, trained = world
    (tmp / "runs").mkdir()
    (tmp / "runs" / "elsewhere").symlink_to(tmp / "outside")
    before = _outside(tmp)
    assert _train("gkd.run_name=elsewhere/gkd") == 2
    assert "leads outside" in capsys.readouterr().err
    assert _outside(tmp) == before and trained == []


def test_a_run_may_live_in_another_profiles_folder():
    p = config.load(SMOKE, overrides={"gkd.run_name": "embedded/gkd-from-smoke"})
    assert stage_dir(p, "gkd") == paths.runs_root().absolute() / "embedded" / "gkd-from-smoke"


def test_a_sweep_name_is_a_folder_name_too():
    raw = config.read_yaml(SMOKE)
    raw["sweeps"] = [{"name": "../x", "gkd": {"temperature": 0.5}}]
    with pytest.raises(ParamsError, match=r"sweeps\[0\]\.name"):
        config.from_dict(raw, SMOKE)


# -- 2. a resume continues only the kit's own run -----------------------------------------------------
def test_resume_into_a_folder_that_is_not_a_run_touches_nothing(world, capsys):
    tmp, trained = world
    foreign = tmp / "runs" / "foreign"
    (foreign / "eval").mkdir(parents=True)
    (foreign / "metrics.jsonl").write_text("mine\n")
    (foreign / "eval" / "step_0.json").write_text("{}")
    before = _tree(tmp / "runs") + _outside(tmp)
    assert _train("gkd.run_name=foreign", "gkd.resume=true") == 2
    assert "is not a run of the kit (no readable config.json)" in capsys.readouterr().err
    assert _tree(tmp / "runs") + _outside(tmp) == before
    assert trained == []


def test_resume_into_another_stages_run_is_refused(world, capsys):
    tmp, trained = world
    grpo = config.load(SMOKE, overrides={"grpo.run_name": "smoke/shared"})
    RunDir.open(grpo, "grpo").release()
    before = _tree(tmp / "runs")
    assert _train("gkd.run_name=smoke/shared", "gkd.resume=true") == 2
    assert "holds another run (stage 'grpo' of profile 'smoke'" in capsys.readouterr().err
    assert _tree(tmp / "runs") == before and trained == []


def test_a_run_of_an_older_version_resumes_only_with_resume_changed(world):
    p = config.load(SMOKE, overrides={"gkd.resume": True})
    rd = RunDir.open(config.load(SMOKE), "gkd")
    rd.release()
    cfg = json.loads((rd.path / "config.json").read_text())
    del cfg["train_hash"]  # as written before train_hash existed
    atomic_write_json(rd.path / "config.json", cfg)
    with pytest.raises(RunDirError, match="older version of the kit"):
        preflight(p, "gkd", resume=True)
    ok = config.load(SMOKE, overrides={"gkd.resume": True, "gkd.resume_changed": True})
    assert preflight(ok, "gkd", resume=True) is True


def test_a_foreign_folder_is_refused_without_resume_too(world):
    tmp, _ = world
    (tmp / "runs" / "smoke" / "gkd").mkdir(parents=True)
    (tmp / "runs" / "smoke" / "gkd" / "notes.txt").write_text("x")
    with pytest.raises(RunDirError, match="cannot be written there"):
        RunDir.open(config.load(SMOKE), "gkd")


def test_the_notebooks_check_their_runs_in_the_cell_after_parameters():
    for nb in ("02_gkd", "03_grpo", "04_cross_tokenizer"):
        cells = json.loads((ROOT / "notebooks" / f"{nb}.ipynb").read_text())["cells"]
        first = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", [])) + 1
        assert f'check_notebook_runs(cfg, "{nb}")' in "".join(cells[first]["source"]), nb


# -- 3. roots pinned once ---------------------------------------------------------------------------
def test_a_relative_atlas_runs_is_pinned_where_the_command_starts(world, monkeypatch, capsys):
    tmp, _ = world
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("ATLAS_RUNS", "myruns")
    monkeypatch.setenv("ATLAS_REPORTS", "myreports")
    assert _train("gkd.run_name=../x") == 2  # any command: the roots are pinned first
    assert os.environ["ATLAS_RUNS"] == str(tmp / "myruns")
    assert os.environ["ATLAS_REPORTS"] == str(tmp / "myreports")
    assert str(tmp / "myruns") in capsys.readouterr().err
    monkeypatch.chdir(ROOT)  # where the notebooks run: the same folder
    assert paths.runs_root() == tmp / "myruns"


# -- 4. signals and locks -----------------------------------------------------------------------------
SLOW_TRAIN = """
import dataclasses, sys, time
from atlas_lib import cli
from atlas_lib.core import registry
from atlas_lib.core.rundir import RunDir

def runner(params):  # holds its run's lock as the run loop does, and releases it on the way out
    rd = RunDir.open(params, "gkd")
    try:
        print("ready", flush=True)
        time.sleep(60)
    finally:
        rd.release()

registry._METHODS["gkd"] = dataclasses.replace(registry.get("gkd"), runner=runner)
sys.exit(cli.main(["train", "gkd", "--params", "params/smoke.yaml"]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_ends_a_command_with_one_message_and_no_lock(tmp_path, sig):
    env = {**os.environ, "ATLAS_RUNS": str(tmp_path / "runs"), "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    name = "Ctrl-C" if sig == signal.SIGINT else signal.Signals(sig).name
    assert err.strip().splitlines()[-1].startswith(f"atlas: error: interrupted ({name})"), err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "smoke" / "gkd" / ".lock").exists()


def test_sigterm_stops_atlas_report_releasing_its_lock(world, monkeypatch):
    from atlas_lib.report import pipeline

    tmp, _ = world
    monkeypatch.setattr(pipeline, "_run_steps", lambda *a, **k: on_sigint(signal.SIGTERM, None))
    with pytest.raises(PipelineError, match=r"interrupted \(SIGTERM\)"):
        pipeline.run_pipeline(SMOKE)
    assert not (tmp / "runs" / "smoke" / ".lock").exists()
    assert signal.getsignal(signal.SIGTERM) is not on_sigint  # the previous handler is back


@pytest.mark.parametrize("command", [["data"], ["baseline"], ["train", "gkd"]])
def test_data_baseline_and_train_wait_for_a_running_report(world, capsys, command):
    tmp, trained = world
    profile = tmp / "runs" / "smoke"
    profile.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (profile / ".lock").write_text(str(holder.pid))
        before = _tree(tmp / "runs")
        assert cli.main([*command, "--params", SMOKE]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert f"an `atlas report` (process {holder.pid}) is running it" in capsys.readouterr().err
    assert _tree(tmp / "runs") == before and trained == []


# -- 5. papermill's parameter errors are the kit's one message -----------------------------------------
def test_a_papermill_parameter_error_is_one_message_without_the_kits_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "papermill", "notebooks/02_gkd.ipynb", str(tmp_path / "o.ipynb"),
                           "-p", "params_file", "params/smoke.yaml", "-p", "lmbda", "1.5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ATLAS_RUNS": str(tmp_path / "runs"), "WANDB_MODE": "disabled"})
    assert proc.returncode == 1  # papermill's own exit status for a failed cell
    assert "ParamsError: gkd.lmbda = 1.5" in proc.stderr
    assert "atlas_lib/" not in proc.stderr  # no frame of the kit's code
    assert not (tmp_path / "runs").exists()


# -- 6. the smaller messages --------------------------------------------------------------------------
def _rows(n=60, group=None):
    return [{"question": f"What is {i}+1?", "answer": str(i + 1), **({"group": group} if group else {})}
            for i in range(n)]


def _local(tmp: Path, lines: list[str]) -> config.Params:
    f = tmp / "problems.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return config.load(SMOKE, overrides={"data.source": "local", "data.path": str(f)})


def test_a_broken_jsonl_line_is_named_by_its_line_number(world):
    from atlas_lib.data.sources import DataError, local_rows

    lines = [json.dumps(r) for r in _rows()]
    lines[29] = '{"question": "broken", "answer": 3'
    p = _local(world[0], lines)
    with pytest.raises(DataError, match=r"line 30 is not valid JSON \(Expecting"):
        local_rows(p.data, paths.data_file(p))


def test_a_jsonl_line_that_is_not_an_object_is_named(world):
    from atlas_lib.data.sources import DataError, local_rows

    lines = [json.dumps(r) for r in _rows()]
    lines[4] = "[1, 2]"
    p = _local(world[0], lines)
    with pytest.raises(DataError, match=r"line 5 is a JSON list, not an object"):
        local_rows(p.data, paths.data_file(p))


def test_every_row_in_one_group_says_so_and_leaves_no_empty_profile_folder(world, capsys):
    tmp, _ = world
    f = tmp / "one.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _rows(group="g")))
    assert cli.main(["data", "--params", SMOKE, "--set", "data.source=local", "--set", f"data.path={f}"]) == 2
    err = capsys.readouterr().err
    assert "every usable row is in one group" in err
    assert "add problems" not in err
    assert not (tmp / "runs" / "smoke").exists()


def test_a_name_too_long_for_the_file_system_is_not_a_disk_hint(tmp_path):
    import errno

    from atlas_lib.core.files import unwritable

    msg = str(unwritable(tmp_path / ("n" * 300), OSError(errno.ENAMETOOLONG, "File name too long")))
    assert "too long" in msg and "disk" not in msg


def _finished_run(p, key: str) -> RunDir:
    rd = RunDir.open(p, key)
    rd.write_summary({"status": "complete"})
    rd.release()
    return rd


def test_a_run_whose_summary_was_deleted_is_not_reused(world):
    from atlas_lib.report import pipeline

    tmp, _ = world
    p = config.load(SMOKE)
    step = next(s for s in pipeline.steps(p) if s.stages == ("grpo",))
    rd = _finished_run(p, "grpo")
    assert pipeline._incomplete(p, step, tmp / "runs" / "smoke") is None
    (rd.path / "summary.json").unlink()
    assert pipeline._incomplete(p, step, tmp / "runs" / "smoke") == "smoke/grpo/summary.json missing"


def test_the_report_runs_a_done_stage_again_when_its_run_is_incomplete(world, monkeypatch, caplog):
    import logging

    from atlas_lib.report import pipeline, site

    tmp, _ = world
    p = config.load(SMOKE)
    profile = tmp / "runs" / "smoke"
    (profile / "notebooks").mkdir(parents=True)
    upstream = ""
    for step in pipeline.steps(p)[:-1]:
        fp = pipeline.fingerprint(p, step, upstream, profile)
        atomic_write_json(profile / "notebooks" / f"{step.notebook}.done.json", {"fingerprint": fp, "seconds": 1})
        upstream += fp
    (_finished_run(p, "grpo").path / "summary.json").unlink()  # the run marked done, its summary deleted
    ran = []
    monkeypatch.setattr(stage_run, "execute", lambda step, *a, **k: ran.append(step.notebook))
    monkeypatch.setattr(pipeline, "render_site", lambda *a, **k: tmp / "index.html")
    monkeypatch.setattr(site, "render_site", lambda *a, **k: tmp / "index.html")
    with caplog.at_level(logging.INFO):
        pipeline.run_pipeline(SMOKE)
    assert "03_grpo" in ran
    assert "[03_grpo] its finished run is incomplete on disk (smoke/grpo/summary.json missing)" in caplog.text


# -- 7. refuse early: no model loads before a refusal --------------------------------------------------
def test_a_finished_run_is_refused_before_the_runner_starts(world, capsys):
    tmp, trained = world
    _finished_run(config.load(SMOKE), "gkd")
    t0 = time.monotonic()
    assert _train() == 2
    assert "already exists and finished" in capsys.readouterr().err
    assert trained == [] and time.monotonic() - t0 < 10


def test_a_notebook_of_several_runs_refuses_before_training_any(world):
    from atlas_lib.core import preflight

    tmp, _ = world
    p = config.load(SMOKE)
    _finished_run(p, "off_policy")  # the second run of notebook 02: refused before gkd trains
    with pytest.raises(RunDirError, match="off_policy already exists and finished"):
        preflight.check_notebook_runs(p, "02_gkd")


def test_a_changed_resume_is_refused_before_the_runner_starts(world, capsys):
    tmp, trained = world
    RunDir.open(config.load(SMOKE), "gkd").release()
    assert _train("gkd.resume=true", "gkd.learning_rate=0.5") == 2
    assert "resume_changed" in capsys.readouterr().err
    assert trained == []


def test_atlas_report_refuses_a_foreign_run_folder_before_any_notebook(world, monkeypatch):
    from atlas_lib.report import pipeline

    tmp, _ = world
    text = (ROOT / "params" / "smoke.yaml").read_text().replace("gkd:\n", "gkd:\n  run_name: foreign\n", 1)
    (tmp / "p.yaml").write_text(text)
    foreign = tmp / "runs" / "foreign"
    foreign.mkdir(parents=True)
    (foreign / "metrics.jsonl").write_text("mine\n")
    before = _tree(tmp / "runs") + _outside(tmp)
    ran = []
    monkeypatch.setattr(stage_run, "execute", lambda step, *a, **k: ran.append(step.notebook))
    with pytest.raises(RunDirError, match="runs/foreign is not a run of the kit"):
        pipeline.run_pipeline(tmp / "p.yaml")
    assert ran == []
    assert _tree(tmp / "runs") + _outside(tmp) == before
