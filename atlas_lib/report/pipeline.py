"""``make report``: execute notebooks 01 -> 05 with papermill, reuse finished stages, render HTML.

Each notebook runs into ``runs/<profile>/notebooks/`` (the sources stay clean). A stage whose
fingerprint (its params, its notebook's source, its upstream stages) is unchanged and whose run
finished is reused and the log says so; a changed or ``--force``d stage first moves its old run
directories to ``runs/<profile>/.previous/`` (never deleted silently), then re-runs. With several
training seeds the method notebooks run seed-major (:mod:`atlas_lib.report.seed_order`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from atlas_lib.core import config, registry, rundir, seeds
from atlas_lib.core.files import RunDirError, atomic_write_json
from atlas_lib.core.paths import (
    contained,
    notebooks_dir,
    pin_roots,
    relative_to_root,
    reports_root,
    resolve_params_path,
)
from atlas_lib.core.preflight import check_marker, stage_dir
from atlas_lib.core.rundir import RunDir, move_aside
from atlas_lib.report import seed_order
from atlas_lib.report.site import render_site
from atlas_lib.report.stage_run import (
    INTERRUPTED,
    PipelineError,
    Step,
    disk_full_is_a_message,
    execute_shown,
    interruption,
    on_sigint,
)

log = logging.getLogger(__name__)
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def steps(params: config.Params) -> list[Step]:
    """01 data, then one step per notebook of the enabled methods (registry order), then 05 report.
    A method's notebook also runs its sweep variants (``sweep-<name>``)."""
    out = [Step("01_data", ("data",), ("data", "baseline"))]
    by_nb: dict[str, list[str]] = {}
    for key in params.enabled():
        by_nb.setdefault(registry.get(key).notebook, []).append(key)
    for nb, keys in by_nb.items():
        extra = ("sweep-*",) if any(config.sweep_method(s) in keys for s in params.sweeps) else ()
        out.append(Step(nb, tuple(keys), (*keys, *extra)))
    out.append(Step("05_comparison", ("report",), ()))
    return out


def fingerprint(params: config.Params, step: Step, upstream: str, profile_dir: Path | None = None) -> str:
    """What a step's result depends on: its notebook, its params, the steps before it and the
    prepared split's content (re-preparing data invalidates every stage that used it)."""
    nb = (notebooks_dir() / f"{step.notebook}.ipynb").read_bytes()
    nb += _data_hash(profile_dir).encode() if profile_dir is not None else b""
    if step.stages == ("report",):
        stage = str(time.time())  # the report is cheap and reads everything: always re-render
    elif step.stages == ("data",):
        stage = params.stage_hash("data")
    else:
        stage = "".join(params.stage_hash(k) for k in step.stages) + json.dumps(
            [s for s in params.sweeps if config.sweep_method(s) in step.stages])
    return hashlib.sha256(nb + stage.encode() + upstream.encode()).hexdigest()[:16]


def _split_is_current(params: config.Params) -> bool:
    """Whether the prepared split is the one notebook 01 would prepare (same data parameters and source
    file, files intact): then it stays where it is (``atlas data`` then ``atlas report``)."""
    from atlas_lib.data import splits
    from atlas_lib.data.sources import DataError

    try:
        splits.load_prepared(params)
    except (DataError, OSError, ValueError, KeyError):
        return False
    return True


def _move_aside(profile_dir: Path, step: Step, params: config.Params | None = None) -> None:
    keep = {"data"} if params is not None and "data" in step.run_dirs and _split_is_current(params) else set()
    for pattern in step.run_dirs:
        if pattern in keep:
            log.info("[%s] keeping the prepared split: it is the one this stage prepares", step.notebook)
            continue
        for d in profile_dir.glob(pattern):
            move_aside(d, profile_dir)


def _data_hash(profile_dir: Path) -> str:
    """The prepared split's content hashes (so re-preparing data invalidates every stage that used it)."""
    manifest = profile_dir / "data" / "manifest.json"
    return json.dumps(json.loads(manifest.read_text()).get("sha256"), sort_keys=True) if manifest.exists() else ""


def _step_runs(params: config.Params, step: Step) -> list[tuple[config.Params, str]]:
    """Every run a step trains: each of its methods, then their sweep variants (the notebook's order)."""
    keys = [k for k in step.stages if k in registry.keys()]
    return [(params, k) for k in keys] + [(v, k) for k in keys for v in seeds.variants(params, k)]


def resumable(params: config.Params, step: Step) -> bool:
    """Whether ``step`` was interrupted and can go on where it stopped: every run it trains either
    finished, was interrupted, or has not started, with the same training parameters, and one of them
    was interrupted after a complete checkpoint, or one finished while a later one did not. Then the
    notebook runs again with ``resume`` for each method: a finished run is reused, the interrupted one
    continues from its last checkpoint, the rest start. (A stage whose runs all finished but whose
    fingerprint changed, or any run with other parameters, starts over; its old runs are moved aside.)"""
    states = [rundir.run_state(p, k) for p, k in _step_runs(params, step)]
    if not states or "other" in states:
        return False
    return "interrupted" in states or ("finished" in states and bool({"started", "absent"} & set(states)))


def _run_steps(params: config.Params, path: Path, profile_dir: Path, nb_dir: Path, force: bool,
               only: list[str] | None, verbose: bool = False, read_only: RunDirError | None = None) -> dict:
    """Run or reuse each step. ``read_only``: the runs directory cannot be written (the error that said
    so): finished stages are reused and the last executed report notebook rendered again; a stage that
    would have to run raises that error instead."""
    upstream, timings = "", {}
    passes, seeded = ([] if read_only is not None else seed_order.seed_passes(params, steps(params))), set()
    for step in steps(params):
        if passes and step in seed_order.training_steps([step]):  # seed-major: seed 42 of every arm, then 43, ...
            for sp in passes:
                if only is None or set(sp.stages) & set(only):
                    seed_order.run_pass(params, sp, path, profile_dir, nb_dir, force, verbose, seeded, timings,
                                        stale=lambda st: not resumable(params, st), move_aside=_move_aside)
            passes = []
        fp = fingerprint(params, step, upstream, profile_dir)
        marker = nb_dir / f"{step.notebook}.done.json"
        done = json.loads(marker.read_text()) if marker.exists() else {}
        skip = only is not None and not set(step.stages) & {*only, "report"}
        if _reused(params, step, profile_dir, fp, done, skip=skip, force=force, read_only=read_only is not None):
            upstream += fp
            continue
        if read_only is not None:
            if step.stages == ("report",) and (nb_dir / f"{step.notebook}.ipynb").exists() and not force:
                log.info("[%s] runs directory read-only: rendering its last execution over the finished runs",
                         step.notebook)
                continue
            raise RunDirError(f"{read_only} ({step.notebook} would have to run: "
                              f"{'--force' if force else 'its stage is unfinished or its inputs changed'})")
        marker.unlink(missing_ok=True)
        timings[step.notebook] = _execute_step(params, step, path, profile_dir, nb_dir, force, verbose, seeded)
        fp = fingerprint(params, step, upstream, profile_dir)  # after the run: with the split it wrote
        upstream += fp
        atomic_write_json(marker, {"fingerprint": fp, "seconds": timings[step.notebook]})
        log.info("[%s] done in %.0f s", step.notebook, timings[step.notebook])
    return timings


def _reused(params: config.Params, step: Step, profile_dir: Path, fp: str, done: dict, *, skip: bool, force: bool,
            read_only: bool) -> bool:
    """Whether ``step`` is left as it is: skipped by --only, or (without --force) finished with these
    params and inputs (its marker's fingerprint) and complete on disk (not checked when read-only)."""
    same = done.get("fingerprint") == fp
    missing = None if skip or force or read_only or not same else _incomplete(params, step, profile_dir)
    if missing:
        log.info("[%s] its finished run is incomplete on disk (%s): running it again", step.notebook, missing)
    if skip or (not force and same and not missing):
        log.info("[%s] %s", step.notebook, "skipped (--only)" if skip else
                 "reusing the finished run (params and inputs unchanged; --force re-runs)")
        return True
    return False


def _execute_step(params: config.Params, step: Step, path: Path, profile_dir: Path, nb_dir: Path, force: bool,
                  verbose: bool, seeded: set) -> float:
    """Run ``step``'s notebook (resuming its interrupted run, or moving an old one aside first); the
    seconds it took."""
    resume = step.notebook in seeded or (not force and resumable(params, step))
    if resume:
        log.info("[%s] %s", step.notebook, "every seed: reusing the seed passes' runs, training the last seed"
                 if step.notebook in seeded else "resuming the interrupted run from its last checkpoint")
    elif step.run_dirs and any(any(profile_dir.glob(p)) for p in step.run_dirs):
        _move_aside(profile_dir, step, params)
    log.info("[%s] running -> %s", step.notebook, relative_to_root(nb_dir / f"{step.notebook}.ipynb"))
    t0 = time.monotonic()
    try:
        execute_shown(step, path, nb_dir / f"{step.notebook}.ipynb", progress_params=params, resume=resume,
                      log_file=profile_dir / "logs" / f"{step.notebook}.log", verbose=verbose)
    finally:
        if INTERRUPTED:
            _release_stale_locks(params, step)
    if INTERRUPTED:  # papermill's client may swallow the KeyboardInterrupt: never go on after Ctrl-C
        raise PipelineError(f"interrupted ({interruption()}) in {step.notebook}; its run keeps its last "
                            "checkpoint: run the same command again to resume")
    return round(time.monotonic() - t0, 1)


def _preflight_step(params: config.Params, step: Step, profile_dir: Path) -> None:
    """Before the first notebook: a run the pipeline would neither move aside nor resume as its own (a
    ``run_name`` outside the step's folders) must be absent or this stage's own run (its config.json)."""
    for k in (k for k in step.stages if k in registry.keys()):
        if params.run_name(k) == f"{params.name}/{k}":
            continue  # the default names (its variants' too) are the pipeline's own folders: reused, resumed or moved aside
        for p in (params, *seeds.variants(params, k)):
            path = stage_dir(p, k)
            if not (path.parent == profile_dir and any(fnmatch.fnmatch(path.name, pat) for pat in step.run_dirs)):
                check_marker(p, k)


def _incomplete(params: config.Params, step: Step, profile_dir: Path) -> str | None:
    """What a step marked done no longer has on disk (a deleted summary.json, a moved split), else None:
    a stage is reused only while its runs are whole."""
    if step.stages == ("data",):
        for f in (profile_dir / "data" / "manifest.json", profile_dir / "baseline" / "summary.json"):
            if not f.is_file():
                return f"{f.relative_to(profile_dir)} missing"
        return None
    for p, k in _step_runs(params, step):
        if (state := rundir.run_state(p, k)) != "finished":
            where = p.run_name(k)
            return {"absent": f"{where} missing", "other": f"{where} failed or trained with other parameters"}.get(
                state, f"{where}/summary.json missing")
    return None


def _release_stale_locks(params: config.Params, step: Step) -> None:
    """After an interruption: the locks the stage's notebook kernel held, once that kernel is gone (a
    SIGTERM to the report alone leaves the kernel to papermill's shutdown, which may outlive the handler)."""
    deadline = time.monotonic() + 10
    for p, k in _step_runs(params, step):
        rd = RunDir(stage_dir(p, k))
        while rd.holder() is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        rd.clear_stale_lock()


def run_pipeline(params_file: str | os.PathLike = "params/embedded.yaml", *, force: bool = False,
                 only: list[str] | None = None, verbose: bool = False) -> Path:
    """Run every stage of a parameter set and render its report; returns the HTML path. Each
    notebook's full output goes to ``runs/<profile>/logs/<notebook>.log`` (and the terminal when
    ``verbose``)."""
    pin_roots()  # runs, reports and cache as absolute paths, inherited by every notebook kernel
    path = resolve_params_path(params_file).resolve()  # one resolution; notebooks get this absolute path
    params = config.load(path)  # validate before anything runs (names through paths.contained)
    profile_dir = contained(params.name, "name")
    for step in steps(params):  # a foreign folder named as a run refuses before the first notebook starts
        _preflight_step(params, step, profile_dir)
    nb_dir = profile_dir / "notebooks"
    try:
        profile_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create {relative_to_root(profile_dir)}: {e.strerror or e} (point ATLAS_RUNS at a "
                          "writable directory)") from e
    lock, read_only = RunDir(profile_dir), None
    try:
        lock.acquire(busy="profile {name}: another `atlas report` (process {pid}) is running it; wait for it to "
                          "finish (nothing was changed)")
    except RunDirError as e:
        if not isinstance(e.__cause__, OSError):  # another report holds it
            raise
        read_only = e  # finished runs can still be rendered; nothing under runs/ is written then
    INTERRUPTED.clear()
    # SIGTERM (kill, a scheduler) and SIGHUP (the terminal closed) stop the report as Ctrl-C does: one
    # message, the profile's lock and the stage's run locks released, exit 2
    previous = {sig: signal.signal(sig, on_sigint) for sig in STOP_SIGNALS} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        timings = _run_steps(params, path, profile_dir, nb_dir, force, only, verbose, read_only)
    except KeyboardInterrupt:
        raise PipelineError(f"interrupted ({interruption()}); finished stages are kept and an interrupted one keeps "
                            "its last checkpoint: run the same command again to resume") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if read_only is None:
            lock.release()
    out_dir = reports_root() / params.name
    with disk_full_is_a_message(target=out_dir):
        html = render_site(params, [s.notebook for s in steps(params)[:-1]], nb_dir, out_dir)
    log.info("report: %s (stage times this run: %s)", relative_to_root(html), timings or "all reused")
    return html
