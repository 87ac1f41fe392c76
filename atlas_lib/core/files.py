"""Files the kit writes: atomically, readable by collaborators, and one message when they cannot be.

Every file is written to a temporary name in its directory and renamed (:func:`atomic_write_text`), so
a killed process never leaves a half-written file a later read would trust; run files are 0644 and
their directories 0755, less what the umask removes (:func:`share_tree` for trees a library wrote);
a write that fails -- a full disk, a read-only directory -- is the one :func:`unwritable` message,
naming the variable that moves the root it was under.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from atlas_lib.core import advice
from atlas_lib.core.errors import KitMessage
from atlas_lib.core.paths import root_variable

log = logging.getLogger(__name__)
FILE_MODE = 0o644
DIR_MODE = 0o755


class RunDirError(KitMessage, RuntimeError):
    """A run directory cannot be used as asked (exists, locked, unwritable)."""


def clean_json(value: Any) -> Any:
    """JSON cannot hold NaN/inf: store them as strings so a reader sees them instead of a crash."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; run files are for collaborators to read too
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if "tmp" in locals() and os.path.exists(tmp):
            os.unlink(tmp)
        raise unwritable(path, e) from e


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_tree(path: Path) -> None:
    """Give a tree written by a library (transformers' safetensors writer makes 0600 files, mkdtemp a 0700
    directory) the modes of every run file: files 0644, directories 0755, less what the umask removes."""
    mask = umask()
    path = Path(path)
    for p in (path, *path.rglob("*")):
        if p.is_symlink():
            continue
        p.chmod((DIR_MODE if p.is_dir() else FILE_MODE) & ~mask)


def disk_full(e: BaseException) -> bool:
    """Whether ``e`` is a full disk: ``OSError`` ENOSPC, or torch's zip writer failing on one (it
    reports a RuntimeError from ``inline_container`` with the OS error in its text)."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    return isinstance(e, RuntimeError) and ("No space left on device" in str(e) or "file write failed" in str(e))


def elsewhere(path: Path) -> str:
    """"point ATLAS_RUNS elsewhere", naming the variable that moves the root ``path`` is under."""
    var = root_variable(path)
    return f"point {var} at another directory" if var else f"write to another directory than {Path(path).parent}"


def unwritable(path: Path, e: OSError) -> RunDirError:
    """The one message every command gives when it cannot write a file of the kit (runs, reports, cache)."""
    if disk_full(e):
        return RunDirError(f"cannot write {path}: the disk is full ({e.strerror or e}); files already there are "
                           f"intact. Free space on "
                           f"the disk holding {Path(path).parent} (or {elsewhere(path)}) and {advice.run_again()}")
    if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:  # the name, not the disk: say so
        return RunDirError(f"cannot write {str(path)[:120]}...: a file or folder name is too long for the file "
                           "system (at most 255 bytes each); shorten the profile name or run_name")
    return RunDirError(f"cannot write {path}: {e.strerror or e}; files already there are intact (check free disk "
                       f"space and the permissions of {Path(path).parent}, or {elsewhere(path)})")


def check_writable(directory: Path) -> None:
    """Before a command computes anything: can it write under ``directory`` (created if missing)? The
    one unwritable message otherwise, instead of an evaluation's or a training's worth of work lost."""
    directory = Path(directory)
    made = [d for d in (directory, *directory.parents) if not d.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise unwritable(directory, e) from e
    finally:
        for d in made:  # the folders the probe made go again: a command that fails later leaves no empty folder
            with contextlib.suppress(OSError):
                d.rmdir()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(clean_json(obj), indent=2, sort_keys=True, default=str) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file. Only a torn *last* line (a process killed mid-write) is skipped; an
    unreadable line anywhere else is an error naming the file and the line."""
    out = []
    if not Path(path).exists():
        return out
    lines = Path(path).read_text().splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            if i == last:
                log.warning("%s: ignoring unreadable last line %d (torn write)", path, i + 1)
                continue
            raise RunDirError(f"{path}: line {i + 1} is not a JSON object; the file was edited or damaged. Fix or "
                              "delete that line (or move the run aside) and run again")
        out.append(row)
    return out
