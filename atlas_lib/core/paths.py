"""Every filesystem location the kit uses, decided in one place.

Environment variables let a user move the heavy parts (model cache, runs) without editing code:
``ATLAS_CACHE`` (converted models, default ``<root>/.cache``) and ``ATLAS_RUNS`` (run
directories, default ``<root>/runs``).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # atlas_lib/core/paths.py -> the project


def project_root() -> Path:
    """The checkout the kit runs from (where ``params/`` and ``notebooks/`` live)."""
    return PROJECT_ROOT


def cache_root() -> Path:
    """Where converted (safetensors) models and assembled GGUF files are cached."""
    return Path(os.environ.get("ATLAS_CACHE", PROJECT_ROOT / ".cache")).expanduser()


def runs_root() -> Path:
    """Where run directories, executed notebooks and W&B offline files go (git-ignored)."""
    return Path(os.environ.get("ATLAS_RUNS", PROJECT_ROOT / "runs")).expanduser()


def reports_root() -> Path:
    """Where rendered HTML reports go (committed for the embedded profile)."""
    return Path(os.environ.get("ATLAS_REPORTS", PROJECT_ROOT / "reports")).expanduser()


def root_variable(path: str | os.PathLike) -> str | None:
    """The environment variable that moves the kit's root holding ``path`` (ATLAS_RUNS, ATLAS_REPORTS,
    ATLAS_CACHE), for messages that say where to write instead; None outside them."""
    p = Path(os.path.abspath(Path(path).expanduser()))
    found = []
    for var, root in (("ATLAS_RUNS", runs_root()), ("ATLAS_REPORTS", reports_root()), ("ATLAS_CACHE", cache_root())):
        root = Path(os.path.abspath(root))
        if p == root or root in p.parents:
            found.append((len(root.parts), var))
    return max(found)[1] if found else None  # the innermost root (ATLAS_RUNS may sit inside the project)


def params_dir() -> Path:
    return PROJECT_ROOT / "params"


def notebooks_dir() -> Path:
    return PROJECT_ROOT / "notebooks"


def resolve_params_path(path: str | os.PathLike) -> Path:
    """A params file given as absolute, relative to cwd, relative to the root, or a bare profile name."""
    p = Path(path)
    for cand in (p, PROJECT_ROOT / p, params_dir() / p, params_dir() / f"{p}.yaml"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"params file {str(path)!r} not found; pass a path such as params/embedded.yaml "
        f"(available: {', '.join(sorted(x.name for x in params_dir().glob('*.yaml')))})"
    )


def relative_to_root(path: str | os.PathLike) -> str:
    """Render a path for reports and logs without the user's absolute home directory."""
    p = Path(path).resolve()
    for base, label in ((runs_root().resolve(), "runs"), (PROJECT_ROOT, "."), (cache_root().resolve(), "$ATLAS_CACHE")):
        try:
            rel = p.relative_to(base)
        except ValueError:
            continue
        return str(Path(label) / rel) if label != "." else str(rel)
    return p.name


# Files a parameter set names (data.path): one resolution for the CLI, atlas report and papermill
def base_dir_of(source_path: str | None) -> Path:
    """Where a parameter set's relative paths are read from: its params file's directory; for a dict
    or papermill ``-f`` sections, the directory the command ran in."""
    if source_path and source_path != "papermill -f":
        try:
            return resolve_params_path(source_path).resolve().parent
        except FileNotFoundError:
            pass
    return Path.cwd()


def resolve_file(params, value: str) -> Path:
    """A file a parameter set names (``data.path``): absolute as given, else relative to the params
    file (:func:`base_dir_of`), so the CLI, ``atlas report`` (notebooks run from the project root) and
    papermill all read the same file."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(params.base_dir or base_dir_of(params.source_path)) / p


def data_file(params) -> Path | None:
    """``data.path`` resolved (:func:`resolve_file`), or None when the source is not a file."""
    return resolve_file(params, params.data.path) if params.data.path else None


def relative_hint(value: str, base_dir: str) -> str:
    """For a relative path not found: where it was looked for, and the path to write when it exists
    relative to the directory the command ran in instead."""
    if Path(value).expanduser().is_absolute():
        return ""
    hint = f" in {base_dir} (a relative data.path is read relative to the params file)"
    if (Path.cwd() / value).exists() and Path(base_dir) != Path.cwd():
        hint += f"; for the file relative to the directory you ran in, write data.path: {os.path.relpath(Path.cwd() / value, base_dir)}"
    return hint


def resolve_model_dirs(params) -> None:
    """A model named by a relative directory (``models.student: ../models/mine``) is read relative to the
    params file, as ``data.path`` is: rewritten to that directory when it exists there (a hub id such
    as ``Qwen/Qwen2.5-7B-Instruct`` is left alone unless such a directory exists beside the file)."""
    base = Path(params.base_dir or Path.cwd())
    for section in (params.models, *params.methods.values()):
        for role in ("student", "teacher"):
            value = getattr(section, role, None)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() \
                    and (base / value).is_dir() and base.resolve() != Path.cwd().resolve():
                setattr(section, role, str((base / value).resolve()))
