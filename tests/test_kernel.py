"""`make kernel`: a Jupyter kernel named after the project that runs this checkout's .venv Python."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("make") is None or not (ROOT / ".venv" / ".installed").exists(),
                    reason="needs make and a `make setup` .venv")
def test_make_kernel_registers_the_venv_python_under_the_project_name(tmp_path):
    subprocess.run(["make", "-s", "kernel", f"KERNEL_INSTALL=--prefix={tmp_path}"], cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    spec = json.loads((tmp_path / "share" / "jupyter" / "kernels" / "atlas-distill-kit" / "kernel.json").read_text())
    assert spec["display_name"] == "Python (atlas-distill-kit)"
    # not resolved: .venv/bin/python is a link to the base interpreter, which would pass as well
    assert Path(spec["argv"][0]) == ROOT / ".venv" / "bin" / "python"
