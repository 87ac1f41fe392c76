"""The run directory contract: refuse, lock, resume without duplicates, atomic files."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from atlas_lib.core import config
from atlas_lib.core.files import RunDirError, atomic_write_json, read_jsonl
from atlas_lib.core.provenance import provenance
from atlas_lib.core.rundir import RunDir


@pytest.fixture
def params(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path / "runs"))
    return config.load("params/smoke.yaml")


def test_create_then_refuse_to_overwrite(params):
    rd = RunDir.open(params, "gkd")
    rd.append({"kind": "eval", "step": 0, "accuracy": 0.5})
    rd.release()
    with pytest.raises(RunDirError, match="already exists, unfinished; to continue it set gkd = {.resume.: True}"):
        RunDir.open(params, "gkd")
    assert rd.metrics()[0]["accuracy"] == 0.5  # nothing was overwritten
    assert json.loads((rd.path / "config.json").read_text())["stage"] == "gkd"


def test_second_live_run_is_refused(params):
    rd = RunDir.open(params, "gkd")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (rd.path / ".lock").write_text(str(other.pid))
        with pytest.raises(RunDirError, match=f"in use by process {other.pid}"):
            RunDir.open(params, "gkd", resume=True)
    finally:
        other.kill()
        other.wait()
    # a dead process's lock is stale and taken over
    RunDir.open(params, "gkd", resume=True).release()


def test_truncate_after_checkpoint_removes_duplicates_and_later_points(params):
    rd = RunDir.open(params, "gkd")
    for step in (0, 1, 2, 2, 3):
        rd.append({"kind": "train", "step": step, "loss": float(step)})
    assert rd.truncate_after(2) == 2
    assert [r["step"] for r in rd.metrics()] == [0, 1, 2]


def test_torn_last_line_is_ignored(params):
    rd = RunDir.open(params, "gkd")
    rd.append({"kind": "train", "step": 1, "loss": 1.0})
    with open(rd.metrics_path, "a") as fh:
        fh.write('{"kind": "train", "st')
    assert len(read_jsonl(rd.metrics_path)) == 1


def test_incomplete_checkpoint_is_never_chosen(params):
    rd = RunDir.open(params, "gkd")
    for step in (2, 4):
        (rd.checkpoints / f"checkpoint-{step}").mkdir(parents=True)
    rd.mark_checkpoint(2, {"seconds": 5.0})  # checkpoint-4 has no marker: half-written
    ckpt, state = rd.last_checkpoint()
    assert ckpt.name == "checkpoint-2" and state["seconds"] == 5.0


def _checkpoint(rd, step, payload=b"x" * 64):
    ckpt = rd.checkpoints / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(payload)
    rd.mark_checkpoint(step, {"seconds": float(step)})
    return ckpt


def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(params, caplog):
    rd = RunDir.open(params, "gkd")
    _checkpoint(rd, 1)
    newest = _checkpoint(rd, 2)
    (newest / "model.safetensors").write_bytes(b"x" * 10)  # truncated after it was marked complete
    with caplog.at_level(logging.WARNING):
        ckpt, state = rd.last_checkpoint()
    assert ckpt.name == "checkpoint-1"
    assert "checkpoint-2 is damaged (model.safetensors has 10 bytes, 64 were written)" in caplog.text


def test_a_damaged_only_checkpoint_is_named_with_what_to_do(params):
    rd = RunDir.open(params, "gkd")
    ckpt = _checkpoint(rd, 2)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(RunDirError, match=r"checkpoint-2 is damaged \(model.safetensors is missing\).*Delete checkpoint-2"):
        rd.last_checkpoint()


def test_an_undamaged_checkpoint_is_chosen_with_its_state(params):
    rd = RunDir.open(params, "gkd")
    _checkpoint(rd, 2)
    ckpt, state = rd.last_checkpoint()
    assert (ckpt.name, state) == ("checkpoint-2", {"step": 2, "seconds": 2.0})


def test_nan_is_stored_readably(params):
    rd = RunDir.open(params, "gkd")
    rd.append({"kind": "train", "step": 1, "loss": float("nan")})
    assert rd.metrics()[0]["loss"] == "nan"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_dir_gives_clear_error_and_keeps_files(tmp_path):
    target = tmp_path / "ro" / "summary.json"
    atomic_write_json(target, {"a": 1})
    os.chmod(target.parent, 0o500)
    try:
        with pytest.raises(RunDirError, match="cannot write"):
            atomic_write_json(target, {"a": 2})
    finally:
        os.chmod(target.parent, 0o700)
    assert json.loads(target.read_text()) == {"a": 1}


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"a": 1})

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(RunDirError, match="No space left"):
        atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_provenance_has_no_paths_or_users(params):
    prov = json.dumps(provenance(params))
    assert "/work/" not in prov and os.path.expanduser("~") not in prov
    assert '"torch"' in prov and "params_hash" in prov
