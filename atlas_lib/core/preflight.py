"""What a run directory must be before a stage writes it, checked before any model loads.

The run name goes through the one containment rule (:func:`atlas_lib.core.paths.contained`); an existing
directory is continued only when its ``config.json`` (stage, profile, ``train_hash``) marks it as this
stage's own run of this profile. :class:`atlas_lib.core.rundir.RunDir` writes; this module only reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from atlas_lib.core import advice, validate, versions
from atlas_lib.core.config import Params
from atlas_lib.core.files import RunDirError
from atlas_lib.core.paths import contained, runs_root

log = logging.getLogger(__name__)


def read_marker(path: Path) -> dict | None:
    """A run directory's ``config.json`` (its marker: stage, profile, train_hash); None when missing or not
    the kit's (unreadable, not a JSON object)."""
    p = Path(path) / "config.json"
    try:
        cfg = json.loads(p.read_text()) if p.is_file() else None
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def lock_holder(lock: Path) -> int | None:
    """The live process other than this one that wrote ``lock``, else None (no lock, or a dead holder's)."""
    try:
        pid = int(Path(lock).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and pid != os.getpid() and pid_alive(pid) else None


def train_hash(params: Params, stage: str) -> str:
    """What a run's training depends on: its section and the shared ones (without the resume switches
    and run name), the grader's version, and the prepared split's content."""
    d = params.to_dict()
    section = {k: v for k, v in (d.get(stage) or {}).items() if k not in ("resume", "resume_changed", "run_name")}
    run = {k: v for k, v in d["run"].items() if k != "seeds"}  # a single-seed run hashes as before run.seeds existed
    if params.run.seeds:
        run["seeds"] = params.run.seeds[:1]  # this run's own seed, not the list
    keep = {**{k: d[k] for k in ("models", "data", "prompt", "evaluation")}, "run": run, stage: section}
    keep = validate.hash_neutral(keep, stage)  # fields at their defaults hash as before they existed
    keep["grader"] = versions.GRADER_VERSION  # the reward and every eval point are graded: a new grader is a new run
    manifest = runs_root() / params.name / "data" / "manifest.json"
    if manifest.exists():  # the split's content too: a re-prepared split is not the run's split
        keep["split"] = json.loads(manifest.read_text()).get("sha256")
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stage_dir(params: Params, stage: str) -> Path:
    """``stage``'s run directory: the run name through the one containment rule (:func:`atlas_lib.core.paths.contained`)."""
    return contained(params.run_name(stage), f"{stage}.run_name", profile=params.name)


def preflight(params: Params, stage: str, *, resume: bool = False, reuse_finished: bool = True) -> bool:
    """Everything :meth:`atlas_lib.core.rundir.RunDir.open` refuses, checked without writing anything, before any model loads
    (the CLI and notebooks call it first; ``open`` again). Returns whether the directory already holds a
    run (to continue, or, ``reuse_finished``, to reuse when it finished with these parameters and ``resume``
    is set: :func:`atlas_lib.training.common.run_seed` returns its summary then).

    A resume continues only the kit's own run: the directory's ``config.json`` (stage, profile,
    train_hash) is the marker. A folder without it, or with another stage's or profile's, is refused
    and nothing in it is touched; a run written before ``train_hash`` existed is continued only with
    ``resume_changed``, since its training parameters cannot be compared."""
    name = params.run_name(stage)
    path = stage_dir(params, stage)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"runs/{name} is a file, not a run directory; choose another run name "
                          f"({advice.set_field(f'{stage}.run_name', name + '-2')}) (nothing was changed)")
    exists = path.is_dir() and any(p.name != ".lock" for p in path.iterdir())
    if not exists:
        if resume:
            log.info("resume asked for %s, but there is no earlier run: starting fresh", name)
        return False
    another = f"choose another run name ({advice.set_field(f'{stage}.run_name', name + '-2')})"
    cfg = check_marker(params, stage, resume=resume)
    if (pid := lock_holder(path / ".lock")) is not None:
        raise RunDirError(f"run directory {name} is in use by process {pid}; wait for it or choose another "
                          "run_name (nothing was changed)")
    summary = _read_summary(path)
    finished = (summary or {}).get("status") == "complete"
    same = cfg.get("train_hash") == train_hash(params, stage)
    if finished and not (resume and same and reuse_finished):
        raise RunDirError(f"run directory {name} already exists and finished (summary.json): a finished run is "
                          f"never modified. To train again, {another} (nothing was changed)")
    if not resume:
        raise RunDirError(f"run directory {name} already exists, unfinished; to continue it "
                          f"{advice.set_field(f'{stage}.resume', True)}, or {another} (nothing was overwritten)")
    if not same and not getattr(params.section(stage), "resume_changed", False):
        older = " (it was written by an older version of the kit, without train_hash)" if "train_hash" not in cfg else ""
        raise RunDirError(f"resuming {name} with training parameters that differ from the original run's "
                          f"(runs/{name}/config.json){older}; to continue anyway "
                          f"{advice.set_field(f'{stage}.resume_changed', True)}, or {another} (nothing was changed)")
    if not same:
        log.warning("resuming %s with changed training parameters (%s.resume_changed)", name, stage)
    return True


def check_marker(params: Params, stage: str, *, resume: bool = True) -> dict | None:
    """The existing run directory's ``config.json`` when it is this stage's run of this profile; None when
    there is no directory; a RunDirError (nothing touched) for a folder that is not the kit's run or is
    another stage's or profile's."""
    name = params.run_name(stage)
    path = stage_dir(params, stage)
    if not path.is_dir() or not any(p.name != ".lock" for p in path.iterdir()):
        return None
    cfg = read_marker(path)
    if cfg is None or cfg.get("stage") != stage or cfg.get("profile") != params.name:
        what = ("is not a run of the kit (no readable config.json)" if cfg is None else
                f"holds another run (stage {cfg.get('stage')!r} of profile {cfg.get('profile')!r}, its config.json)")
        raise RunDirError(f"run directory runs/{name} {what}: a {stage} run of profile {params.name!r} "
                          f"{'cannot continue it' if resume else 'cannot be written there'}; choose another run name "
                          f"({advice.set_field(f'{stage}.run_name', name + '-2')}) (nothing in it was touched)")
    return cfg


def preflight_runs(params: Params, stages: Iterable[str]) -> None:
    """:func:`preflight` for every run ``stages`` train under these params (seed and sweep variants too),
    before the first model loads: a notebook or command of several runs refuses before it trains any."""
    from atlas_lib.core import seeds  # seeds imports config's loaders; only needed here

    for stage in stages:
        for p in (params, *seeds.variants(params, stage)):
            preflight(p, stage, resume=bool(getattr(p.section(stage), "resume", False)))


def _read_summary(path: Path) -> dict | None:
    try:
        s = load_summary(path)
    except (OSError, ValueError):
        return None
    return s if isinstance(s, dict) else None


def load_summary(path: Path) -> dict | None:
    p = Path(path) / "summary.json"
    return json.loads(p.read_text()) if p.exists() else None


def check_notebook_runs(cfg: Params, notebook: str) -> None:
    """The run directories ``notebook`` will train (its enabled methods, their seed and sweep variants),
    checked in the cell after ``parameters``: foreign, finished or changed ones are refused there, before
    any model loads, as the kit's one message."""
    from atlas_lib.core import registry

    preflight_runs(cfg, [k for k in cfg.enabled() if registry.get(k).notebook == notebook])
