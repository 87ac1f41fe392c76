"""What papermill put into a notebook's globals: the parameters cell's names, the sections that
``papermill -f params.yaml`` injected, and any name the notebook does not declare (refused)."""

from __future__ import annotations

import ast
import difflib
import json
import types

from atlas_lib.core import config
from atlas_lib.core.paths import notebooks_dir
from atlas_lib.core.validate import ParamsError

# What IPython itself puts in a kernel's globals (names starting with "_" are skipped as well).
_KERNEL_GLOBALS = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})


def declared_parameters(notebook: str) -> set[str]:
    """The names the ``parameters`` cell of ``notebooks/<notebook>.ipynb`` assigns."""
    path = notebooks_dir() / f"{notebook}.ipynb"
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise ParamsError(f"{path} has no cell tagged 'parameters'")
    tree = ast.parse("".join(cell["source"]))
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


def injected_sections(namespace: dict, notebook: str) -> dict:
    """The sections papermill ``-f params.yaml`` injected into a notebook's globals.

    Refuses a name the notebook's ``parameters`` cell does not declare: papermill only warns about
    ``-p lerning_rate 1e-6`` and injects it, and the run would silently train with the file's value.
    """
    # every params section is accepted whether or not this notebook names it: `papermill -f` injects
    # them all, and a method added through the registry need not touch the other notebooks
    declared = declared_parameters(notebook) | set(config.section_types())
    extra = sorted(k for k, v in namespace.items()
                   if not k.startswith("_") and k not in _KERNEL_GLOBALS and k not in declared
                   and not isinstance(v, types.ModuleType) and not callable(v))
    if extra:
        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, sorted(declared), n=1))
                             else "") for k in extra]
        raise ParamsError(f"unknown notebook parameter {', '.join(hints)} for notebooks/{notebook}.ipynb; its "
                          f"parameters cell declares: {', '.join(sorted(declared))}. Other settings go in the "
                          "params file, or a whole section: -y '{section: {key: value}}'")
    keys = ("name", "description", *config.section_types(), "sweeps")
    return {k: namespace[k] for k in keys if k in namespace and isinstance(namespace[k], (dict, list, str))}
