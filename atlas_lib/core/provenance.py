"""What a run records about where it ran: package versions, device, git commit, params hash and
date; no paths, hosts or user names (the report is shared)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from atlas_lib.core.config import Params
from atlas_lib.core.paths import project_root

_PACKAGES = ("torch", "transformers", "trl", "datasets", "accelerate", "math-verify", "reasoning-gym",
             "papermill", "wandb", "peft", "atlas-distill-kit")


def provenance(params: Params | None = None) -> dict:
    """Package versions, device, git commit, params hash and date; no paths, hosts or user names."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if torch.cuda.is_available():
        device = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    else:
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        device = f"CPU ({os.cpu_count()} cores, {cpu}, torch threads {torch.get_num_threads()})"
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=project_root(), capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(), "platform": platform.system(), "device": device,
        "packages": versions, "git_commit": commit, "git_dirty": dirty,
        "params_hash": params.params_hash() if params else None,
        "params_file": Path(params.source_path).name if params and params.source_path else None,
    }
