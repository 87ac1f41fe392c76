"""A benchmark's worker in a fresh interpreter: its own peak RSS and process-wide settings.

The parent re-runs its own script with extra arguments; the worker prints one ``RESULT {json}``
line, which the parent reads back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PREFIX = "RESULT "


def emit(result: dict) -> None:
    """The worker's side: print ``result`` for :func:`run_worker`."""
    print(PREFIX + json.dumps(result))


def run_worker(script: str | Path, extra_args: list[str], *, cwd: Path, env: dict | None = None) -> dict | None:
    """Run ``script`` with this process's arguments plus ``extra_args``; its result, or None (its
    stderr's tail written to ours) when it printed none."""
    out = subprocess.run([sys.executable, str(script), *sys.argv[1:], *extra_args], capture_output=True, text=True,
                         env=env, cwd=cwd)
    line = next((x for x in out.stdout.splitlines() if x.startswith(PREFIX)), None)
    if line is None:
        sys.stderr.write(out.stderr[-3000:])
        return None
    return json.loads(line[len(PREFIX):])
