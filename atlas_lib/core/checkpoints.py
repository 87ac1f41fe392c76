"""Checkpoint markers: a checkpoint counts only once its ``.complete`` marker is written (after the
trainer has put every file on disk), and the marker records each file's size, so a checkpoint
damaged afterwards (truncated by a full disk, a copy cut short) is recognised on resume instead
of failing deep inside ``torch.load`` or resuming from broken weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)
MARKER = ".complete"


class DamagedCheckpoint(RuntimeError):
    """The newest complete checkpoint no longer matches what was written, and no older one does."""


def _files(ckpt: Path) -> dict[str, int]:
    return {str(f.relative_to(ckpt)): f.stat().st_size for f in sorted(ckpt.rglob("*")) if f.is_file()
            and f.name != MARKER}


def mark(ckpt: Path, step: int, state: dict, write_json) -> None:
    """Write ``ckpt``'s marker: its step, ``state`` and every file's size."""
    if ckpt.is_dir():
        write_json(ckpt / MARKER, {"step": step, **state, "files": _files(ckpt)})


def damage(ckpt: Path, marker: dict) -> str | None:
    """What no longer matches the marker (a missing or resized file), or None. Markers written
    before sizes were recorded have nothing to compare."""
    for name, size in (marker.get("files") or {}).items():
        f = ckpt / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} were written"
    return None


def newest(checkpoints: Path) -> tuple[Path, dict] | None:
    """The newest complete, undamaged checkpoint under ``checkpoints``; half-written ones are skipped,
    a damaged one falls back to an older complete one, and with none left raises
    :class:`DamagedCheckpoint` naming the file."""
    found = []
    for ckpt in checkpoints.glob("checkpoint-*"):
        path = ckpt / MARKER
        if not path.exists():
            log.warning("ignoring incomplete checkpoint %s", ckpt.name)
            continue
        try:
            marker = json.loads(path.read_text())
            found.append((int(marker["step"]), ckpt, marker))
        except (ValueError, KeyError, TypeError):
            continue
    damaged = []
    for _, ckpt, marker in sorted(found, key=lambda x: x[0], reverse=True):
        why = damage(ckpt, marker)
        if why is None:
            if damaged:
                log.warning("%s is damaged (%s); resuming from %s instead", damaged[0][0].name, damaged[0][1], ckpt.name)
            return ckpt, {k: v for k, v in marker.items() if k != "files"}
        damaged.append((ckpt, why))
    if damaged:
        ckpt, why = damaged[0]
        raise DamagedCheckpoint(f"checkpoint {ckpt} is damaged ({why}) and no older complete checkpoint is kept. "
                                f"Delete {ckpt.name} (the run then starts again from step 0) or restore the file")
    return None
