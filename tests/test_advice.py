"""Every message gives the fix in the syntax of the interface that raised it (CLI --set, papermill -y,
notebook keyword), names the variable that moves the directory it could not write, and the user's
own section name."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_lib.core import advice, config
from atlas_lib.core.files import RunDirError, atomic_write_json, atomic_write_text
from atlas_lib.core.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent


def _params(**over):
    return config.load("params/smoke.yaml", overrides={"tracking.wandb": "disabled", **over})


def _unfinished(stage="off_policy") -> None:
    rd = RunDir.open(_params(), stage)
    rd.append({"kind": "train", "step": 1, "loss": 0.5})
    rd.release()


@pytest.mark.parametrize("interface, fix", [
    ("cli", "--set off_policy.resume=true"),
    ("papermill", "-y '{off_policy: {resume: true}}'"),
    ("notebook", "off_policy = {'resume': True}"),
    ("report", "resume: true under off_policy: in the params file"),
])
def test_an_existing_run_is_resumed_in_the_syntax_of_the_interface(env, interface, fix):
    _unfinished()
    with advice.using(interface), pytest.raises(RunDirError) as e:
        RunDir.open(_params(), "off_policy")
    assert fix in str(e.value)


def test_the_cli_never_says_pass_resume_true(env):
    _unfinished()
    with advice.using("cli"), pytest.raises(RunDirError) as e:
        RunDir.open(_params(), "off_policy")
    assert "resume=True" not in str(e.value)


def test_a_finished_run_is_never_offered_resume(env):
    _unfinished()
    atomic_write_json(env / "runs" / "smoke" / "off_policy" / "summary.json", {"status": "complete"})
    with advice.using("papermill"), pytest.raises(RunDirError) as e:
        RunDir.open(_params(), "off_policy")
    assert "resume" not in str(e.value) and "-y '{off_policy: {run_name: smoke/off_policy-2}}'" in str(e.value)


def test_changed_parameters_point_at_resume_changed_in_the_interfaces_syntax(env):
    _unfinished("gkd")
    with advice.using("cli"), pytest.raises(RunDirError, match=r"--set gkd\.resume_changed=true"):
        RunDir.open(_params(**{"gkd.resume": True, "gkd.learning_rate": 0.5}), "gkd", resume=True)


def test_the_interface_travels_to_child_processes_and_is_restored(monkeypatch):
    monkeypatch.delenv(advice.ENV, raising=False)
    with advice.using("report"):
        child = subprocess.run([sys.executable, "-c", "from atlas_lib.core import advice; print(advice.interface())"],
                               capture_output=True, text=True, cwd=ROOT).stdout.strip()
    assert (child, os.environ.get(advice.ENV)) == ("report", None)


def _full(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("variable", ["ATLAS_REPORTS", "ATLAS_CACHE", "ATLAS_RUNS"])
def test_an_unwritable_file_names_the_variable_of_its_own_root(tmp_path, monkeypatch, variable):
    for v in ("ATLAS_REPORTS", "ATLAS_CACHE", "ATLAS_RUNS"):
        monkeypatch.setenv(v, str(tmp_path / v))
    monkeypatch.setattr(os, "fdopen", _full)
    with pytest.raises(RunDirError) as e:
        atomic_write_text(tmp_path / variable / "smoke" / "index.html", "x")
    assert f"point {variable} at another directory" in str(e.value)


def test_a_full_reports_disk_does_not_blame_atlas_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_REPORTS", str(tmp_path / "reports"))
    monkeypatch.setattr(os, "fdopen", _full)
    with pytest.raises(RunDirError) as e:
        atomic_write_text(tmp_path / "reports" / "smoke" / "index.html", "x")
    assert "ATLAS_RUNS" not in str(e.value)


def test_a_full_disk_says_so_and_leaves_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fdopen", _full)
    with pytest.raises(RunDirError, match="the disk is full"):
        atomic_write_text(tmp_path / "x.json", "x")
    assert list(tmp_path.iterdir()) == []


def test_a_local_file_without_usable_answers_is_not_told_about_reasoning_gym(env, tmp_path):
    from atlas_lib.data import splits
    from atlas_lib.data.sources import DataError

    f = tmp_path / "bad.jsonl"
    f.write_text("".join(json.dumps({"question": f"q{i}", "answer": "n/a"}) + "\n" for i in range(20)))
    with pytest.raises(DataError) as e:
        splits.prepare(_params(**{"data.source": "local", "data.path": str(f)}))
    assert "data.size" not in str(e.value) and "data.columns" in str(e.value)


class _Tiny:
    """A model of 1,000 trainable fp32 parameters (what check_disk reads)."""

    def parameters(self):
        import torch

        return iter([torch.nn.Parameter(torch.zeros(1000))])


def _preflight(monkeypatch, tmp_path, free: int) -> str:
    import shutil

    from atlas_lib.training import loop

    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**12, 10**12 - free, free))
    p = _params()
    with advice.using("cli"), pytest.raises(RunDirError) as e:
        loop.check_disk(tmp_path, _Tiny(), p.off_policy, "off_policy")
    return str(e.value)


def test_the_disk_preflight_gives_sizes_that_are_not_zero(monkeypatch, tmp_path):
    msg = _preflight(monkeypatch, tmp_path, free=2_000)
    assert "0.0 GB" not in msg and "28 kB" in msg and "2.0 kB are free" in msg


def test_the_disk_preflight_names_the_users_section_not_a_class(monkeypatch, tmp_path):
    msg = _preflight(monkeypatch, tmp_path, free=2_000)
    assert "OffPolicyConfig" not in msg and "the off_policy run" in msg and "--set off_policy.save_steps=3" in msg


def test_papermills_unknown_parameter_hint_is_not_an_atlas_report_flag():
    from atlas_lib.core import notebook_params

    with pytest.raises(config.ParamsError) as e:
        notebook_params.injected_sections({"lerning_rate": 1e-6}, "02_gkd")
    assert "atlas report --set" not in str(e.value)


@pytest.mark.parametrize("command, fix", [("data", "add --set gkd.resume=true"),
                                          ("report", "set resume: true under gkd: in the params file")])
def test_the_cli_entry_point_says_which_interface_raised(monkeypatch, capsys, command, fix):
    from atlas_lib import cli

    def fails(args):
        raise config.ParamsError(advice.set_field("gkd.resume", True))

    monkeypatch.setattr(cli, "_run", fails)
    assert cli.main([command, "--params", "params/smoke.yaml"]) == 2
    assert fix in capsys.readouterr().err


def test_papermill_advice_uses_p_for_a_name_the_notebook_declares():
    """-p run_name x overrides -y '{gkd: {run_name: ...}}', so advice for a declared name is -p."""
    with advice.using("papermill"):
        assert advice.set_field("gkd.run_name", "smoke/gkd-2") == "set -p run_name smoke/gkd-2 in the papermill command"
