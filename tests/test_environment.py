"""The declared environment can hold the pinned stack: pyproject's torch floor is one transformers
accepts, and environment.yml (conda-forge) asks for the same floor and installs the rest from pyproject."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _floor(spec: str, name: str) -> str:
    m = re.fullmatch(rf"{name}\s*>=\s*([0-9.]+)", spec.strip())
    assert m, f"{spec!r}: expected '{name}>=X.Y'"
    return m.group(1)


def _pyproject_torch_floor() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return _floor(next(d for d in deps if d.startswith("torch")), "torch")


def test_transformers_accepts_the_declared_torch_floor(monkeypatch):
    from transformers.utils import import_utils

    floor = _pyproject_torch_floor()
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: floor if name == "torch" else real(name))
    import_utils.is_torch_available.cache_clear()
    try:
        assert import_utils.is_torch_available(), f"transformers disables itself on torch {floor}"
    finally:
        import_utils.is_torch_available.cache_clear()


def test_environment_yml_uses_conda_forge_and_the_same_torch_floor():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    torch_spec = next(d for d in conda if d.startswith("pytorch"))
    assert _floor(torch_spec, "pytorch") == _pyproject_torch_floor()
    assert "cpuonly" not in conda  # a PyTorch-channel package; conda-forge has no such thing


def test_environment_yml_installs_the_rest_from_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == ['-e ".[dev]"']
    conda = {re.split(r"[<>=]", d)[0] for d in env["dependencies"] if isinstance(d, str)}
    assert conda <= {"python", "pip", "pytorch"}  # nothing else declared twice
