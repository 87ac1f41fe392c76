"""``make report``: execute notebooks 01 -> 05 with papermill, reuse finished stages, render HTML.

Each notebook runs into ``runs/<profile>/notebooks/`` (the sources stay clean). A stage whose
fingerprint (its params, its notebook's source, its upstream stages) is unchanged and whose run
finished is reused and the log says so; a changed or ``--force``d stage first moves its old run
directories to ``runs/<profile>/.previous/`` (never deleted silently), then re-runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from atlas_lib.core import config, registry, rundir
from atlas_lib.core.paths import (
    notebooks_dir,
    project_root,
    relative_to_root,
    reports_root,
    resolve_params_path,
    runs_root,
)
from atlas_lib.core.rundir import (
    RunDir,
    RunDirError,
    atomic_write_json,
    atomic_write_text,
    disk_full,
    move_aside,
    stage_dir,
    unwritable,
)
from atlas_lib.report import problems
from atlas_lib.report.collect import Collected, collect
from atlas_lib.report.findings import headline
from atlas_lib.report.html import render_html, site_nav
from atlas_lib.report.progress import StageProgress
from atlas_lib.report.table import results_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    notebook: str
    stages: tuple[str, ...]  # "data", method keys (registry), or "report"
    run_dirs: tuple[str, ...]  # directories under runs/<profile>/ this step writes


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


class PipelineError(RuntimeError):
    """A notebook failed; the message names the cell error and the partial output."""


_INTERRUPTED: list[bool] = []


def _on_sigint(signum, frame) -> None:
    _INTERRUPTED.append(True)
    # The kernel got the same Ctrl-C and died; nbclient's pending cell task then reports "Kernel died"
    # through asyncio's "Task exception was never retrieved" when the process exits, after the
    # kit's own message. That is expected here, not news for the terminal.
    logging.getLogger("asyncio").disabled = True
    raise KeyboardInterrupt


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
    return [(params, k) for k in keys] + [(v, k) for k in keys for _, v in config.sweep_variants(params, k)]


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


@contextlib.contextmanager
def _stderr_to(log_file: Path | None):
    """While a notebook runs, file descriptor 2 points at its log: the kernel process inherits it, so
    the kernel's own chatter (its TCP warning, the traceback ipykernel prints when Ctrl-C tears it
    down) lands in the log, not on the terminal, which keeps one line per stage."""
    if log_file is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def _terminal():
    """The terminal the user watches, as a text stream on a copy of stderr taken before the kernel's
    output is sent to the stage's log; None when stderr is not a terminal (CI, a file, a pipe)."""
    try:
        return os.fdopen(os.dup(2), "w", buffering=1) if os.isatty(2) else None
    except OSError:
        return None


def stage_progress(params: config.Params, step: Step, stream) -> StageProgress:
    """The live bar for ``step``: its training steps when it trains (the sum of max_steps over its
    methods and their sweep variants, each read from its own run directory), else its notebook's cells."""
    import nbformat

    # + papermill's injected-parameters cell, which it counts with the rest
    cells = len(nbformat.read(notebooks_dir() / f"{step.notebook}.ipynb", as_version=4).cells) + 1
    runs = [(p, k) for k in step.stages if k in registry.keys()
            for p in (params, *(v for _, v in config.sweep_variants(params, k)))]
    total = sum(p.section(k).max_steps for p, k in runs) or None
    return StageProgress(step.notebook, cells=cells, metrics=[stage_dir(p, k) / "metrics.jsonl" for p, k in runs],
                         total_steps=total, stream=stream)


def execute(step: Step, params_file: Path, out_nb: Path, resume: bool = False, log_file: Path | None = None,
            verbose: bool = False, progress: StageProgress | None = None) -> None:
    """Run one notebook with papermill. Its cell-by-cell output (every library warning and progress
    frame) goes to ``log_file``; the terminal shows it too only when ``verbose``."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out_nb.parent.mkdir(parents=True, exist_ok=True)
    pm_log, handler, propagate = logging.getLogger("papermill"), None, None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text("")  # this run's log; the handler and the kernel's stderr both append to it
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        pm_log.addHandler(handler)
        propagate, pm_log.propagate = pm_log.propagate, verbose
    where = f"\nfull log: {relative_to_root(log_file)}" if log_file is not None else ""
    # papermill rewrites the executed notebook after every cell: into a temp file renamed when it is whole,
    # so a full disk or a kill never leaves a truncated out_nb
    running = out_nb.with_name(f".{out_nb.stem}.running.ipynb")
    try:
        with _stderr_to(log_file if not verbose else None), progress or contextlib.nullcontext(), \
                _disk_full_is_a_message(running, target=out_nb):
            try:
                pm.execute_notebook(str(notebooks_dir() / f"{step.notebook}.ipynb"), str(running),
                                    parameters={"params_file": str(params_file),
                                            **({k: {"resume": True} for k in step.stages} if resume else {})},
                                    kernel_name="python3", cwd=str(project_root()), log_output=True,
                                    progress_bar=verbose or log_file is None)
            except PapermillExecutionError:  # papermill wrote the failed notebook whole: the partial output
                if running.exists():
                    os.replace(running, out_nb)
                raise
            except BaseException:  # a write cut short (a full disk) or an interrupt: never a truncated file
                running.unlink(missing_ok=True)
                raise
            if running.exists():
                os.replace(running, out_nb)
    except PapermillExecutionError as e:
        if e.ename == "KeyboardInterrupt" or _INTERRUPTED:
            raise PipelineError(f"interrupted (Ctrl-C) in {step.notebook}; its run keeps its last checkpoint: run "
                                "the same command again to resume") from None
        raise PipelineError(f"{step.notebook} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                            f"partial output: {relative_to_root(out_nb)}{where}") from None
    finally:
        if handler is not None:
            pm_log.removeHandler(handler)
            handler.close()
            pm_log.propagate = propagate


@contextlib.contextmanager
def _disk_full_is_a_message(*partial: Path, target: Path | None = None):
    """A full disk while the report writes (an executed notebook, a page) is the kit's one disk message,
    exit 2, and the partial files are removed instead of left truncated."""
    try:
        yield
    except RunDirError:  # already the kit's message, naming its file
        raise
    except Exception as e:
        cause = e if disk_full(e) else e.__cause__ or e.__context__
        if cause is None or not disk_full(cause):
            raise
        for f in partial:
            f.unlink(missing_ok=True)
        raise unwritable(target or partial[-1], cause) from None


def _run_steps(params: config.Params, path: Path, profile_dir: Path, nb_dir: Path, force: bool,
               only: list[str] | None, verbose: bool = False, read_only: RunDirError | None = None) -> dict:
    """Run or reuse each step. ``read_only``: the runs directory cannot be written (the error that said
    so): finished stages are reused and the last executed report notebook rendered again; a stage that
    would have to run raises that error instead."""
    upstream, timings = "", {}
    for step in steps(params):
        fp = fingerprint(params, step, upstream, profile_dir)
        marker = nb_dir / f"{step.notebook}.done.json"
        done = json.loads(marker.read_text()) if marker.exists() else {}
        skip = only is not None and not set(step.stages) & {*only, "report"}
        if skip or (not force and done.get("fingerprint") == fp):
            log.info("[%s] %s", step.notebook, "skipped (--only)" if skip else
                     "reusing the finished run (params and inputs unchanged; --force re-runs)")
            upstream += fp
            continue
        if read_only is not None:
            if step.stages == ("report",) and (nb_dir / f"{step.notebook}.ipynb").exists() and not force:
                log.info("[%s] runs directory read-only: rendering its last execution over the finished runs",
                         step.notebook)
                continue
            raise RunDirError(f"{read_only} ({step.notebook} would have to run: "
                              f"{'--force' if force else 'its stage is unfinished or its inputs changed'})")
        resume = not force and resumable(params, step)
        if resume:
            log.info("[%s] resuming the interrupted run from its last checkpoint", step.notebook)
        elif step.run_dirs and any(any(profile_dir.glob(p)) for p in step.run_dirs):
            _move_aside(profile_dir, step, params)
        marker.unlink(missing_ok=True)
        log.info("[%s] running -> %s", step.notebook, relative_to_root(nb_dir / f"{step.notebook}.ipynb"))
        t0 = time.monotonic()
        term = None if verbose else _terminal()
        try:
            execute(step, path, nb_dir / f"{step.notebook}.ipynb", resume=resume,
                    log_file=profile_dir / "logs" / f"{step.notebook}.log", verbose=verbose,
                    progress=stage_progress(params, step, term) if term is not None else None)
        finally:
            if term is not None:
                term.close()
        if _INTERRUPTED:  # papermill's client may swallow the KeyboardInterrupt: never go on after Ctrl-C
            raise PipelineError(f"interrupted (Ctrl-C) in {step.notebook}; its run keeps its last checkpoint: "
                                "run the same command again to resume")
        timings[step.notebook] = round(time.monotonic() - t0, 1)
        fp = fingerprint(params, step, upstream, profile_dir)  # after the run: with the split it wrote
        upstream += fp
        atomic_write_json(marker, {"fingerprint": fp, "seconds": timings[step.notebook]})
        log.info("[%s] done in %.0f s", step.notebook, timings[step.notebook])
    return timings


def write_table_files(params: config.Params, out_dir: Path, col: Collected | None = None, nav: str = "") -> None:
    """``table.csv`` and ``table.json`` beside ``index.html`` (the numbers a reader would re-plot) and
    ``problems.html`` (every test problem's completions, right or wrong, per model)."""
    col = col if col is not None else collect(params)
    numbers = results_table(col)
    atomic_write_text(out_dir / "table.csv", numbers.to_csv(index_label="row"))
    atomic_write_text(out_dir / "table.json", numbers.to_json(orient="index", indent=1) + "\n")
    problems.render(params, col, out_dir / "problems.html", nav=nav)


def page_title(col: Collected, params: config.Params) -> str:
    """The report page's title: its headline without the Markdown."""
    return headline(col, params).split("\n")[0].lstrip("# ").strip()


def run_pipeline(params_file: str | os.PathLike = "params/embedded.yaml", *, force: bool = False,
                 only: list[str] | None = None, verbose: bool = False) -> Path:
    """Run every stage of a parameter set and render its report; returns the HTML path. Each
    notebook's full output goes to ``runs/<profile>/logs/<notebook>.log`` (and the terminal when
    ``verbose``)."""
    path = resolve_params_path(params_file).resolve()  # one resolution; notebooks get this absolute path
    params = config.load(path)  # validate before anything runs
    profile_dir = runs_root() / params.name
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
    _INTERRUPTED.clear()
    previous = signal.signal(signal.SIGINT, _on_sigint) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        timings = _run_steps(params, path, profile_dir, nb_dir, force, only, verbose, read_only)
    except KeyboardInterrupt:
        raise PipelineError("interrupted (Ctrl-C); finished stages are kept and an interrupted one keeps its last "
                            "checkpoint: run the same command again to resume") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if read_only is None:
            lock.release()
    out_dir = reports_root() / params.name
    plan = steps(params)
    pages = [("index.html", "Report"), ("problems.html", "Every problem")] + [
        (f"notebooks/{s.notebook}.html", s.notebook.replace("_", " ").replace("gkd", "GKD").replace("grpo", "GRPO"))
        for s in plan[:-1] if (nb_dir / f"{s.notebook}.ipynb").exists()]
    col = collect(params)
    with _disk_full_is_a_message(target=out_dir):
        html = render_html(nb_dir / "05_comparison.ipynb", out_dir / "index.html", with_code=False,
                           nav=site_nav("index.html", pages), title=page_title(col, params))
        write_table_files(params, out_dir, col, nav=site_nav("problems.html", pages))
        for step in plan[:-1]:
            nb = nb_dir / f"{step.notebook}.ipynb"
            if nb.exists():
                page = f"notebooks/{step.notebook}.html"
                render_html(nb, out_dir / page, with_code=True, nav=site_nav(page, pages))
    log.info("report: %s (stage times this run: %s)", relative_to_root(html), timings or "all reused")
    return html
