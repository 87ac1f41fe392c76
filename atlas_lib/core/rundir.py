"""The run directory: the contract between training stages and the comparison notebook.

``runs/<profile>/<stage>/`` holds ``config.json`` (resolved params), an append-only
``metrics.jsonl`` (one JSON object per train/eval point, keyed by ``kind`` and ``step``),
``eval/step_<N>.{json,records.jsonl}``, ``checkpoints/checkpoint-<N>/`` (safetensors, plus a
``.complete`` marker written only after the checkpoint is fully on disk), ``final/`` (the trained
model, safetensors) and ``summary.json``. Every file is written to a temporary name and renamed,
so a killed process never leaves a half-written file that a later read would trust.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from atlas_lib.core import checkpoints
from atlas_lib.core.config import Params
from atlas_lib.core.files import (
    RunDirError,
    atomic_write_json,
    atomic_write_text,
    clean_json,
    read_jsonl,
    share_tree,
    unwritable,
)
from atlas_lib.core.preflight import (
    load_summary,
    lock_holder,
    pid_alive,
    preflight,
    read_marker,
    stage_dir,
    train_hash,
)

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1


def move_aside(path: Path, profile_dir: Path) -> Path:
    """Move a run's directory to ``<profile>/.previous/<name>-<time>`` (never deleted silently)."""
    dest = Path(profile_dir) / ".previous" / f"{Path(path).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), dest)
    log.info("moved previous %s to %s", Path(path).name, dest.relative_to(Path(profile_dir).parent))
    return dest


class RunDir:
    """One stage's run directory. ``open`` creates it, refuses to overwrite, or resumes it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self._lock = self.path / ".lock"

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def open(cls, params: Params, stage: str, *, resume: bool = False) -> RunDir:
        """Create ``runs/<run_name>`` or resume it; a finished or foreign run is never overwritten
        (:func:`preflight` decides, before anything is written)."""
        rd = cls(stage_dir(params, stage))
        exists = preflight(params, stage, resume=resume, reuse_finished=False)
        try:
            rd.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise unwritable(rd.path, e) from e
        rd.acquire()
        if not exists:
            atomic_write_json(rd.path / "config.json", {
                "schema_version": SCHEMA_VERSION, "stage": stage, "profile": params.name,
                "stage_hash": params.stage_hash(stage), "train_hash": train_hash(params, stage),
                "params": params.to_dict()})
        return rd

    def acquire(self, busy: str | None = None) -> None:
        """Refuse a second live run in the same directory (a stale lock of a dead process is taken over).
        ``busy``: the message when another live process holds it (``{pid}`` is filled in)."""
        try:
            fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(self._lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and pid_alive(pid):
                raise RunDirError((busy or "run directory {name} is in use by process {pid}; wait for it or "
                                   "choose another run_name").format(name=self.path.name, pid=pid)) from None
            self._lock.unlink(missing_ok=True)
            fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except OSError as e:
            raise unwritable(self.path, e) from e
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))

    def release(self) -> None:
        self._lock.unlink(missing_ok=True)

    def read_config(self) -> dict | None:
        """The run's ``config.json`` (its marker), or None (:func:`atlas_lib.core.preflight.read_marker`)."""
        return read_marker(self.path)

    def holder(self) -> int | None:
        """The live process other than this one holding the directory's lock, else None."""
        return lock_holder(self._lock)

    def clear_stale_lock(self) -> bool:
        """Remove the lock of a process that is gone (a notebook kernel killed with its report); True if removed."""
        if self._lock.exists() and self.holder() is None:
            try:
                pid = int(self._lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid != os.getpid():
                self._lock.unlink(missing_ok=True)
                return True
        return False

    # -- metrics -----------------------------------------------------------------------------
    def append(self, record: dict) -> None:
        """Append one metrics point (``kind`` + ``step`` required) and flush it to disk."""
        if "kind" not in record or "step" not in record:
            raise ValueError("a metrics record needs 'kind' and 'step'")
        line = json.dumps(clean_json(record), sort_keys=True, default=str)
        try:
            with open(self.metrics_path, "a") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as e:
            raise RunDirError(f"cannot append to {self.metrics_path}: {e.strerror or e}; "
                              "earlier metrics are intact") from e

    def metrics(self, kind: str | None = None) -> list[dict]:
        rows = read_jsonl(self.metrics_path)
        return [r for r in rows if kind is None or r.get("kind") == kind]

    def truncate_after(self, step: int) -> int:
        """On resume: drop points past the checkpoint (they will be recomputed); returns how many."""
        rows = read_jsonl(self.metrics_path)
        keep, seen = [], set()
        for r in rows:
            key = (r.get("kind"), r.get("step"))
            if r.get("step", 0) <= step and key not in seen:
                keep.append(r)
                seen.add(key)
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
        return len(rows) - len(keep)

    # -- checkpoints -------------------------------------------------------------------------
    def mark_checkpoint(self, step: int, state: dict) -> None:
        ckpt = self.checkpoints / f"checkpoint-{step}"
        if ckpt.is_dir():
            share_tree(ckpt)  # before the marker: a checkpoint is complete with its final modes
        checkpoints.mark(self.checkpoints / f"checkpoint-{step}", step, state, atomic_write_json)

    def last_checkpoint(self) -> tuple[Path, dict] | None:
        """The newest complete, undamaged checkpoint (:func:`atlas_lib.core.checkpoints.newest`)."""
        try:
            return checkpoints.newest(self.checkpoints)
        except checkpoints.DamagedCheckpoint as e:
            raise RunDirError(str(e)) from None

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / "summary.json", {"schema_version": SCHEMA_VERSION, **summary})

    def save_model(self, model, tokenizer, name: str = "final") -> Path:
        """Save weights as safetensors to a temp dir, then rename (never a half-written model)."""
        target = self.path / name
        tmp = Path(tempfile.mkdtemp(dir=self.path, prefix=f".{name}."))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            share_tree(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RunDirError(f"cannot save model to {target}: {e.strerror or e}") from e
        return target


def run_state(params: Params, stage: str) -> str:
    """Where ``stage``'s run stands for these parameters: ``absent``; ``finished`` (complete, same training
    parameters); ``interrupted`` (no summary, same training parameters, a complete checkpoint);
    ``started`` (the same, no checkpoint yet); ``other`` (failed, or trained with other parameters)."""
    rd = RunDir(stage_dir(params, stage))
    if not rd.path.exists() or not any(p.name != ".lock" for p in rd.path.iterdir()):
        return "absent"
    summary = load_summary(rd.path)
    if (rd.read_config() or {}).get("train_hash") != train_hash(params, stage):
        return "other"
    if summary is not None:
        return "finished" if summary.get("status") == "complete" else "other"
    try:
        return "interrupted" if rd.last_checkpoint() is not None else "started"
    except RunDirError:
        return "other"


def finished_summary(params: Params, stage: str) -> dict | None:
    """The summary of ``stage``'s finished run when it trained with these parameters, else None."""
    return load_summary(stage_dir(params, stage)) if run_state(params, stage) == "finished" else None


def dedupe_steps(rows: Iterable[dict]) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        key = (r.get("kind"), r.get("step"))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out
