"""One pipeline stage: a notebook executed with papermill into ``runs/<profile>/notebooks/``, its
output in the stage's log, a live bar on the terminal, a full disk as the kit's one message."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from atlas_lib.core import config, registry, seeds
from atlas_lib.core.files import RunDirError, disk_full, unwritable
from atlas_lib.core.paths import notebooks_dir, project_root, relative_to_root
from atlas_lib.core.preflight import stage_dir
from atlas_lib.report.progress import StageProgress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    notebook: str
    stages: tuple[str, ...]  # "data", method keys (registry), or "report"
    run_dirs: tuple[str, ...]  # directories under runs/<profile>/ this step writes
    seeds: tuple[int, ...] = ()  # a seed pass (report/seed_order.py): run.seeds cut to these; () = the file's


class PipelineError(RuntimeError):
    """A notebook failed; the message names the cell error and the partial output."""


INTERRUPTED: list[int] = []  # the signals received while the pipeline runs


def interruption() -> str:
    """How the pipeline was stopped, for its message: Ctrl-C, SIGTERM or SIGHUP."""
    import signal

    last = INTERRUPTED[-1] if INTERRUPTED else signal.SIGINT
    return "Ctrl-C" if last == signal.SIGINT else signal.Signals(last).name


def on_sigint(signum, frame) -> None:
    """SIGINT, SIGTERM and SIGHUP alike: stop the stage with one message, locks released on the way out."""
    INTERRUPTED.append(signum)
    # The kernel got the same Ctrl-C and died; nbclient's pending cell task then reports "Kernel died"
    # through asyncio's "Task exception was never retrieved" when the process exits, after the
    # kit's own message. That is expected here, not news for the terminal.
    logging.getLogger("asyncio").disabled = True
    raise KeyboardInterrupt


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


def terminal():
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
            for p in (params, *seeds.variants(params, k))]
    total = sum(p.section(k).max_steps for p, k in runs) or None
    return StageProgress(step.notebook, cells=cells, metrics=[stage_dir(p, k) / "metrics.jsonl" for p, k in runs],
                         total_steps=total, stream=stream)


def execute_shown(step: Step, params_file: Path, out_nb: Path, *, progress_params: config.Params, log_file: Path,
                  resume: bool, verbose: bool) -> None:
    """:func:`execute` with the terminal's live progress line (none with ``verbose``, where papermill's own
    output shows), closed whatever happens."""
    term = None if verbose else terminal()
    try:
        execute(step, params_file, out_nb, resume=resume, log_file=log_file, verbose=verbose,
                progress=stage_progress(progress_params, step, term) if term is not None else None)
    finally:
        if term is not None:
            term.close()


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
                disk_full_is_a_message(running, target=out_nb):
            try:
                pm.execute_notebook(str(notebooks_dir() / f"{step.notebook}.ipynb"), str(running),
                                    parameters={"params_file": str(params_file),
                                            **({k: {"resume": True} for k in step.stages} if resume else {}),
                                            **({"run": {"seeds": list(step.seeds)}, "sweeps": []} if step.seeds
                                               else {})},
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
        if e.ename == "KeyboardInterrupt" or INTERRUPTED:
            raise PipelineError(f"interrupted ({interruption()}) in {step.notebook}; its run keeps its last "
                                "checkpoint: run the same command again to resume") from None
        raise PipelineError(f"{step.notebook} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                            f"partial output: {relative_to_root(out_nb)}{where}") from None
    finally:
        if handler is not None:
            pm_log.removeHandler(handler)
            handler.close()
            pm_log.propagate = propagate


@contextlib.contextmanager
def disk_full_is_a_message(*partial: Path, target: Path | None = None):
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
