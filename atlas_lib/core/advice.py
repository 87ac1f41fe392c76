"""Advice in the syntax of the interface the user typed: one home for "set this field" and "run it again".

The kit is driven four ways, and a message that tells the user to change a field must say it the way
that interface takes it:

- ``cli``: ``atlas train gkd --set gkd.resume=true``
- ``report``: ``atlas report`` (a params file only: ``gkd: {resume: true}`` in that file)
- ``papermill``: ``papermill notebooks/02_gkd.ipynb ... -y '{gkd: {resume: true}}'``
- ``notebook``: a notebook opened by hand (``gkd = {"resume": True}`` in its parameters cell)

The CLI entry point says which (:func:`using`); it also exports ``ATLAS_INTERFACE`` so the notebooks
``atlas report`` runs, in their own kernels, know it. A kernel without it was started by papermill
when papermill is its parent process, else by hand.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

ENV = "ATLAS_INTERFACE"
INTERFACES = ("cli", "report", "papermill", "notebook")
_current: list[str] = []


def _parent_is_papermill() -> bool:
    """Whether this process (a notebook kernel) was started by the ``papermill`` command."""
    ppid = os.getppid()
    try:
        cmd = Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            cmd = subprocess.run(["ps", "-o", "command=", "-p", str(ppid)], capture_output=True, text=True,
                                 timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return False
    return "papermill" in cmd


def interface() -> str:
    """The interface the user typed: ``cli``, ``report``, ``papermill`` or ``notebook``."""
    if _current:
        return _current[-1]
    name = os.environ.get(ENV, "")
    if name in INTERFACES:
        return name
    if "ipykernel" in sys.modules:
        return "papermill" if _parent_is_papermill() else "notebook"
    return "notebook"  # the Python API (a script or a REPL): keywords, as in a notebook


@contextlib.contextmanager
def using(name: str):
    """Messages raised inside speak ``name``'s syntax; notebook kernels started inside inherit it."""
    if name not in INTERFACES:
        raise ValueError(f"interface {name!r}: one of {', '.join(INTERFACES)}")
    saved = os.environ.get(ENV)
    _current.append(name)
    os.environ[ENV] = name
    try:
        yield
    finally:
        _current.pop()
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved


def _yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _notebook_parameter(section: str, key: str) -> bool:
    """Whether ``section.key`` is a flat parameter of the notebook that runs ``section`` (its parameters
    cell declares ``key`` and flat names resolve to the notebook's first method)."""
    from atlas_lib.core import notebook_params, registry

    if section not in registry.keys() or registry.notebook_lead(section) is not None:
        return False
    try:
        return key in notebook_params.declared_parameters(registry.get(section).notebook)
    except (OSError, ValueError):
        return False


def set_field(field: str, value) -> str:
    """How to set ``field`` (``section.key``) to ``value`` in the current interface, as an instruction."""
    section, _, key = field.partition(".")
    how = interface()
    if how == "cli":
        return f"add --set {field}={_yaml(value)}"
    if how == "report":
        return f"set {key}: {_yaml(value)} under {section}: in the params file (atlas report takes no --set)"
    if how == "papermill":
        if _notebook_parameter(section, key):  # -p wins over -y, so a declared name is set with -p
            return f"set -p {key} {value} in the papermill command"
        return f"add -y '{{{section}: {{{key}: {_yaml(value)}}}}}' to the papermill command"
    return f"set {section} = {{{key!r}: {value!r}}} in the notebook's parameters cell (Python: " \
           f"config.load(..., overrides={{{field!r}: {value!r}}}))"


def run_again() -> str:
    """How to run the same thing again in the current interface."""
    return {"cli": "run the same atlas command again", "report": "run the same `atlas report` again",
            "papermill": "run the same papermill command again"}.get(interface(), "run the notebook again")


def resume_again(stage: str) -> str:
    """How to continue an interrupted ``stage`` in the current interface (``atlas report`` resumes by itself)."""
    if interface() == "report":
        return run_again()
    return f"{run_again()} ({set_field(f'{stage}.resume', True)})"
