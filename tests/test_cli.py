"""The command line answers at once: help and argument errors without torch; help shows the file's values."""

from __future__ import annotations

import subprocess
import sys

from atlas_lib.core import config

PROBE = """
import sys
from atlas_lib import cli
try:
    cli.main({argv!r})
except SystemExit:
    pass
print("torch" in sys.modules, "transformers" in sys.modules)
"""


def _imports_after(argv: list[str]) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_help_does_not_import_torch():
    assert _imports_after(["--help"]) == "False False"


def test_train_help_does_not_import_torch():
    assert _imports_after(["train", "gkd", "--params", "params/study.yaml", "--help"]) == "False False"


def test_an_argument_error_does_not_import_torch():
    assert _imports_after(["memory", "--no-such-flag"]) == "False False"


def test_train_help_shows_the_params_files_values(capsys):
    from atlas_lib import cli

    study = config.load("params/study.yaml")
    try:
        cli.main(["train", "grpo", "--params", "params/study.yaml", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    assert "grpo parameters, as params/study.yaml sets them" in out
    assert f"num_generations = {study.grpo.num_generations!r}" in out
    assert f"max_steps = {study.grpo.max_steps!r}" in out


def test_train_help_without_a_loadable_file_shows_the_defaults(capsys, tmp_path):
    from atlas_lib import cli

    try:
        cli.main(["train", "gkd", "--params", str(tmp_path / "missing.yaml"), "--help"])
    except SystemExit:
        pass
    captured = capsys.readouterr()
    assert "gkd parameters, built-in defaults" in captured.out
    assert "did not load" in captured.err
