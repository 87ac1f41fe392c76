"""Every filesystem location the kit uses, decided in one place.

Environment variables let a user move the heavy parts (model cache, runs) without editing code:
``ATLAS_CACHE`` (converted models, default ``<root>/.cache``) and ``ATLAS_RUNS`` (run
directories, default ``<root>/runs``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from atlas_lib.core.validate import ParamsError

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


ROOT_VARIABLES = ("ATLAS_RUNS", "ATLAS_REPORTS", "ATLAS_CACHE")


def pin_roots() -> dict[str, str]:
    """Resolve ATLAS_RUNS / ATLAS_REPORTS / ATLAS_CACHE once, where the command starts, to absolute paths
    and put them back in the environment: every notebook kernel inherits it, so one run is one folder
    whatever directory the command or its notebooks run in (a relative ``ATLAS_RUNS=myruns`` means the
    directory the command was typed in, never the project root the notebooks run from)."""
    pinned = {}
    for var, root in zip(ROOT_VARIABLES, (runs_root, reports_root, cache_root), strict=True):
        pinned[var] = os.environ[var] = os.path.abspath(root())
    return pinned


# -- containment: a run name is a name, not a path ------------------------------------------------------
STAGE_DIRS = ("data", "baseline", "notebooks", "logs")  # a profile's own folders: never a run's
SEGMENT = re.compile(r"[\w.-]+")  # letters, digits, '_', '-', '.'
MAX_SEGMENT = 100  # characters of one folder name: suffixes (-off_policy, -sweep-<name>, -<time>) stay under 255


def check_run_names(params, keys: list[str]) -> None:
    """:func:`contained` for the run folder of each method in ``keys`` (a ``run_name`` set by hand, or the default)."""
    for key in keys:
        contained(params.run_name(key), f"{key}.run_name", profile=params.name)


def contained(value, field: str, *, profile: str | None = None, what: str = "profile name") -> Path:
    """The one containment rule for every folder the kit names after the user (the CLI, ``atlas report``
    and the notebooks all reach it through :func:`atlas_lib.core.config.from_dict` and
    :func:`atlas_lib.core.rundir.stage_dir`): ``value`` (a profile ``name`` when ``profile`` is None, else a
    ``run_name`` of that profile) is a relative name of ``/``-separated segments of letters, digits, ``-``,
    ``_`` and ``.``, no segment starting with a dot (so neither ``.``, ``..`` nor the ``.previous`` archive), a
    profile name one segment, a run name not a profile's stage folder (``<profile>/data``, ``baseline``,
    ``notebooks``, ``logs``) nor the profile's own folder; and once the links on the way are followed it
    stays inside the runs root. Returns the absolute path; anything else is one ParamsError naming
    ``field``."""
    root = Path(os.path.abspath(runs_root()))
    if profile is None:
        rule = (f"a {what} is one folder under the runs folder ({root}): letters, digits, '-', '_' and '.', "
                f"not starting with a dot, at most {MAX_SEGMENT} characters (e.g. my-{what.split()[0]}); nothing was written")
    else:
        rule = (f"a run name is a relative name under the runs folder ({root}): '/'-separated segments of letters, "
                f"digits, '-', '_' and '.', none starting with a dot, at most {MAX_SEGMENT} characters each, not a "
                f"profile's {', '.join(STAGE_DIRS)} folder (e.g. {profile}/my-run); nothing was written")
    if not isinstance(value, str) or not value:
        raise ParamsError(f"{field} = {value!r}: {rule}")
    why = _name_problem(value, profile)
    if why is None:
        path = root / value
        real_root, real = root.resolve(), path.resolve()
        if real_root not in real.parents:
            why = f"a link under the runs folder leads outside it (to {real})"
        else:
            return path
    raise ParamsError(f"{field} = {value[:80] + '...' if len(value) > 80 else value!r}: {why}; {rule}")


def _name_problem(value: str, profile: str | None) -> str | None:
    """What makes ``value`` no name :func:`contained` accepts (its rule, before links are followed), or None."""
    segments = value.split("/")
    if value.startswith("/") or value.startswith("~") or (os.sep != "/" and os.path.isabs(value)):
        return "an absolute path"
    if profile is None and len(segments) > 1:
        return "more than one folder"
    if any(not s for s in segments):
        return "an empty segment ('//' or a trailing '/')"
    dotted = next((s for s in segments if s.startswith(".")), None)
    if dotted is not None:
        return f"segment {dotted!r} starts with a dot"
    bad = next((s for s in segments if not SEGMENT.fullmatch(s)), None)
    if bad is not None:
        return f"segment {bad[:40]!r} holds {next(c for c in bad if not SEGMENT.fullmatch(c))!r}"
    if any(len(s) > MAX_SEGMENT for s in segments):
        return f"a segment of {max(len(s) for s in segments)} characters"
    if profile is not None and len(segments) >= 2 and segments[1] in STAGE_DIRS:
        return f"{'/'.join(segments[:2])} is a profile's {segments[1]} folder, not a run's"
    if profile is not None and value == profile:
        return "the profile's own folder"
    return None


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
