"""The notebooks' parameters cells and method leads, from one source, and what papermill put into a
notebook's globals.

The ``parameters`` cell of every notebook is written by :func:`write` (``python -m
atlas_lib.core.notebook_params --write``) from :data:`FLAT_PARAMETERS` (a notebook's own ``-p``
knobs) and the sections (the shared ones, then each registered method's): papermill needs
literals there, so the cell is generated text. So is each method's lead, the Markdown cell tagged
``method-lead`` (its ``metadata.method`` the method's key) that explains the method: its text lives in
the method's folder (``methods/<key>/lead.md``, the registry's ``lead_md``), one cell per method the
notebook runs, in registration order, where the first lead cell stands (after the notebook's title
cell when there is none yet). ``--check`` (a test runs it) fails when a notebook drifts from either,
or one of its cells assigns a name papermill injects. At run time :func:`injected_sections` returns
the sections ``papermill -f params.yaml`` injected and refuses any name the notebook does not declare."""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import logging
import sys
import types
from pathlib import Path

from atlas_lib.core import config, registry
from atlas_lib.core.paths import notebooks_dir
from atlas_lib.core.validate import ParamsError

log = logging.getLogger(__name__)

DATA_NOTEBOOK, REPORT_NOTEBOOK = "01_data", "05_comparison"
PARAMS_FILE = ("params_file", "params/embedded.yaml", "parameter set (YAML in params/)")
# the knobs most training notebooks expose; a new method's notebook gets these unless listed below
_TRAINING = (("max_steps", None, "optimizer steps (None: the file's value)"),
             ("learning_rate", None, "AdamW learning rate"), ("eval_steps", None, "evaluate every N steps"),
             ("save_steps", None, "checkpoint every N steps"), ("resume", None, "True continues an interrupted run"),
             ("run_name", None, "run directory under runs/"))
# A notebook's own flat ``-p`` parameters: (name, default, comment). Each is passed to config.load in
# the cell after the parameters (resolved against the notebook's stage, then the shared sections),
# except NOTEBOOK_ONLY ones, which the notebook itself reads.
FLAT_PARAMETERS: dict[str, tuple[tuple[str, object, str], ...]] = {
    DATA_NOTEBOOK: (("source", None, "data.source override: reasoning_gym, gsm8k, metamathqa or local"),
                    ("eval_limit", None, "held-out problems (None: the file's value)"),
                    ("train_limit", None, "training problems"),
                    ("run_baselines", True, "evaluate the untrained student and the teacher")),
    "02_gkd": (("lmbda", None, "fraction of on-policy batches"), ("beta", None, "generalized JSD interpolation"),
               ("temperature", None, "sampling temperature"),
               ("max_completion_length", None, "tokens sampled per training completion"), *_TRAINING),
    "03_grpo": (("num_generations", None, "completions per prompt (the group)"),
                ("temperature", None, "sampling temperature"), ("max_completion_length", None, "tokens per completion"),
                ("beta", None, "KL coefficient"), *_TRAINING),
    "04_cross_tokenizer": (("teacher", None, "teacher model"), ("student", None, "student model with another tokenizer"),
                           ("lmbda", None, "fraction of on-policy batches"),
                           ("beta", None, "generalized JSD interpolation"),
                           ("max_completion_length", None, "tokens sampled per training completion"), *_TRAINING),
    REPORT_NOTEBOOK: (),
}
NOTEBOOK_ONLY = frozenset({"params_file", "run_baselines"})
_SECTIONS_COMMENT = "# whole sections that `papermill -f params/<file>.yaml` injects (None: from params_file)"
LEAD_TAG = "method-lead"  # the Markdown cell written from a method's lead.md; metadata.method names the method

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


def notebooks() -> list[str]:
    """Every notebook of the pipeline, in order: data, each registered method's, the report."""
    methods = list(dict.fromkeys(m.notebook for m in registry.methods()))
    return [DATA_NOTEBOOK, *methods, REPORT_NOTEBOOK]


def section_names() -> list[str]:
    """The names ``papermill -f params/<file>.yaml`` may inject: the top-level fields, the shared
    sections, ``sweeps``, then each registered method's section (registration order)."""
    methods = registry.keys()
    shared = [k for k in config.section_types() if k not in methods]
    return ["name", "description", *shared, "sweeps", *methods]


def flat_parameters(notebook: str) -> tuple[tuple[str, object, str], ...]:
    """``params_file`` then the notebook's own flat parameters (a method notebook not listed in
    :data:`FLAT_PARAMETERS` gets the common training knobs)."""
    return (PARAMS_FILE, *FLAT_PARAMETERS.get(notebook, _TRAINING))


def _literal(value) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)  # double quotes, as ruff formats


def parameters_source(notebook: str) -> str:
    """The text the notebook's ``parameters`` cell must hold."""
    lines = [f"{name} = {_literal(value)}  # {comment}" for name, value, comment in flat_parameters(notebook)]
    lines += [_SECTIONS_COMMENT, *(f"{k} = None" for k in section_names())]
    return "\n".join(lines)


def _path(notebook: str, directory: Path | None) -> Path:
    return (directory or notebooks_dir()) / f"{notebook}.ipynb"


def _parameters_cell(nb: dict, path: Path) -> dict:
    cell = next((c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise ParamsError(f"{path} has no cell tagged 'parameters': tag the first code cell 'parameters' "
                          "(View > Cell toolbar > Tags) and run python -m atlas_lib.core.notebook_params --write")
    return cell


def _assigned_names(source: str) -> set[str]:
    """Names a cell binds in the notebook's globals (comprehensions and functions have their own scope)."""
    out: set[str] = set()
    stack = list(ast.parse(source).body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
            continue
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
        stack.extend(ast.iter_child_nodes(node))
    return out


def leads(notebook: str) -> list[tuple[str, str]]:
    """(method key, Markdown) of each registered method the notebook runs that has a lead, in registration
    order: the text its ``method-lead`` cell must hold."""
    out = []
    for m in registry.methods():
        if m.notebook != notebook or m.lead_md is None:
            continue
        try:
            text = m.lead_text()
        except (OSError, ImportError) as e:
            raise ParamsError(f"method {m.key!r}: its lead {m.lead_md!r} cannot be read ({type(e).__name__}: {e}); "
                              "write that file in the method's folder, or fix lead_md in its registry record") from e
        out.append((m.key, text.rstrip("\n")))  # a file ends with a newline, a Jupyter cell's source does not
    return out


def _is_lead(cell: dict) -> bool:
    return cell["cell_type"] == "markdown" and LEAD_TAG in cell.get("metadata", {}).get("tags", [])


def lead_drift(notebook: str, nb: dict, path: Path) -> list[str]:
    """What is wrong with the notebook's lead cells: missing, extra, out of order, or text that is not
    the method's lead.md."""
    found = [(c["metadata"].get("method"), "".join(c["source"])) for c in nb["cells"] if _is_lead(c)]
    expected = leads(notebook)
    if [k for k, _ in found] != [k for k, _ in expected]:
        return [f"{path}: its {LEAD_TAG} cells are for {[k for k, _ in found]}, the methods it runs that have "
                f"a lead are {[k for k, _ in expected]}"]
    refs = {m.key: m.lead_md for m in registry.methods()}
    return [f"{path}: the {LEAD_TAG} cell of {key!r} is not {refs[key]} (edit that file, not the notebook)"
            for (key, text), (_, want) in zip(found, expected, strict=True) if text != want]


def drift(notebook: str, directory: Path | None = None) -> list[str]:
    """What is wrong with the notebook's generated cells: a parameters or lead cell that is not the
    generated one, or a later cell that rebinds a parameter (papermill's value, or an injected section,
    would be lost)."""
    path = _path(notebook, directory)
    nb = json.loads(path.read_text(encoding="utf-8"))
    cell = _parameters_cell(nb, path)
    out = []
    if "".join(cell["source"]) != parameters_source(notebook):
        out.append(f"{path}: its parameters cell is not the generated one")
    out += lead_drift(notebook, nb, path)
    declared = {name for name, _, _ in flat_parameters(notebook)} | set(section_names())
    for i, c in enumerate(nb["cells"]):
        if c is not cell and c["cell_type"] == "code":
            out += [f"{path}: cell {i} assigns {name!r}, a parameter papermill injects: rename it"
                    for name in sorted(_assigned_names("".join(c["source"])) & declared)]
    return out


def _write_leads(notebook: str, nb: dict) -> None:
    """Put one lead cell per method (registration order) where the first lead cell stands, or after the
    notebook's first cell (its title) when it is Markdown; a kept cell keeps its id and other metadata."""
    cells = nb["cells"]
    title = 1 if cells and cells[0]["cell_type"] == "markdown" else 0
    at = next((i for i, c in enumerate(cells) if _is_lead(c)), title)
    old = {c["metadata"].get("method"): c for c in cells if _is_lead(c)}
    rest = [c for c in cells if not _is_lead(c)]
    new = []
    for key, text in leads(notebook):
        # keys in Jupyter's own (sorted) order, so saving the notebook in Jupyter leaves the file as written
        cell = old.get(key) or {"cell_type": "markdown", "id": f"lead-{key}",
                                "metadata": {"method": key, "tags": [LEAD_TAG]}}
        cell["source"] = text.splitlines(keepends=True)
        new.append(cell)
    nb["cells"] = rest[:at] + new + rest[at:]


def write(notebook: str, directory: Path | None = None) -> bool:
    """Rewrite the notebook's parameters and lead cells from the one source; True when it changed. Only
    those cells are touched (the parameters cell kept without outputs); the file keeps Jupyter's own
    JSON layout."""
    path = _path(notebook, directory)
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    cell = _parameters_cell(nb, path)
    source = parameters_source(notebook)
    cell.update(source=source.splitlines(keepends=True), outputs=[], execution_count=None)
    _write_leads(notebook, nb)
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atlas_lib.core.notebook_params",
                                 description="Write (or check) the notebooks' parameters cells and method leads "
                                             "from one source.")
    ap.add_argument("--write", action="store_true",
                    help="rewrite the parameters and lead cells (default: only check)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.write:
            for nb in notebooks():
                if write(nb):
                    log.info("wrote the parameters and lead cells of notebooks/%s.ipynb", nb)
        problems = [p for nb in notebooks() for p in drift(nb)]
    except ParamsError as e:
        log.error("%s", e)
        return 2
    for p in problems:
        log.error("%s", p)
    if problems:
        log.error("fix: python -m atlas_lib.core.notebook_params --write (a rebound parameter needs a new name by hand)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
