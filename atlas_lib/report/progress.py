"""The terminal's live view of a running stage: one progress bar per notebook, fed by what the stage
itself writes (the cells papermill starts, the training steps and evaluation points in each run's
``metrics.jsonl``), so a 20-minute report says where it is and roughly how long is left.

Only on a terminal: logs, CI and ``-v`` (where papermill's own bar runs) print the stage lines alone.
The time left is tqdm's extrapolation of the steps so far (after a resume, the steps already done
count as instant, so it reads low at first); the test evaluation comes after the last step, where the
bar reads "final evaluation" rather than pretending to know how long that takes.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from tqdm import tqdm

_CELL = re.compile(r"Executing Cell (\d+)")
log = logging.getLogger(__name__)


def read_progress(metrics_files: Sequence[Path]) -> tuple[int, int]:
    """``(optimizer steps done, evaluation points written)`` over a stage's ``metrics.jsonl`` files;
    a line being written (no newline yet) or a damaged one is skipped, not fatal: this is a display."""
    steps = evals = 0
    for path in metrics_files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        top = 0
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("kind") == "train" and isinstance(rec.get("step"), int):
                top = max(top, rec["step"])
            elif rec.get("kind") == "eval":
                evals += 1
        steps += top
    return steps, evals


class _CellCounter(logging.Handler):
    """Counts papermill's "Executing Cell N" log records (it logs one per cell it starts)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.cell = 0

    def emit(self, record: logging.LogRecord) -> None:
        if m := _CELL.search(record.getMessage()):
            self.cell = int(m.group(1))


class StageProgress:
    """A context manager: ``with StageProgress("02_gkd", cells=15, metrics=[...], total_steps=3,
    stream=terminal): execute(...)``. Polls every ``interval`` seconds from a daemon thread."""

    def __init__(self, name: str, *, cells: int, metrics: Sequence[Path], total_steps: int | None,
                 stream: IO[str] | None, interval: float = 1.0):
        self.name, self.cells, self.metrics, self.total_steps = name, cells, list(metrics), total_steps
        self.stream, self.interval = stream, interval
        self._stop = threading.Event()
        self._counter = _CellCounter()
        self._thread: threading.Thread | None = None
        self.bar: tqdm | None = None

    def __enter__(self) -> StageProgress:
        if self.stream is None:
            return self
        by_steps = bool(self.total_steps)
        self.bar = tqdm(total=self.total_steps if by_steps else self.cells, unit="step" if by_steps else "cell",
                        desc=f"[{self.name}]", file=self.stream, leave=False, mininterval=0,
                        ncols=shutil.get_terminal_size((100, 24)).columns,  # 0 columns (a bare pty) draws nothing
                        bar_format="{desc} {n_fmt}/{total_fmt} {unit}s |{bar:20}| {elapsed}<{remaining}{postfix}")
        pm_log = logging.getLogger("papermill")
        self._level = pm_log.level
        if pm_log.getEffectiveLevel() > logging.INFO:  # its cell records are INFO
            pm_log.setLevel(logging.INFO)
        pm_log.addHandler(self._counter)
        self._thread = threading.Thread(target=self._run, name=f"progress-{self.name}", daemon=True)
        self._thread.start()
        return self

    def poll(self) -> None:
        """Bring the bar up to date once (the thread calls this; tests call it directly)."""
        if self.bar is None:
            return
        steps, evals = read_progress(self.metrics)
        n = min(steps, self.total_steps) if self.total_steps else min(self._counter.cell, self.cells)
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)
        parts = [f"cell {min(self._counter.cell, self.cells)}/{self.cells}"]
        if self.total_steps:
            parts.insert(0, f"eval points {evals}")
            if steps >= self.total_steps:
                parts.insert(0, "final evaluation")
        self.bar.set_postfix_str(", ".join(parts), refresh=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # a display must not end the stage; fd 2 is the stage's log here
                log.debug("progress bar for %s stopped updating", self.name, exc_info=True)
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()  # a poll is a file read: the thread ends within one interval
        if self.bar is not None:
            logging.getLogger("papermill").removeHandler(self._counter)
            logging.getLogger("papermill").setLevel(self._level)
            self.bar.close()
