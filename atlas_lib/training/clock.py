"""The run's clock: wall seconds and device hours, continued across resumes, and peak memory.

Every train and eval point carries the step, the wall seconds since the run started (a resumed run
continues the clock from its checkpoint) and device hours = seconds x devices / 3600. On a CPU the
unit is CPU-hours (the whole machine counts as one device) and every record says so.
"""

from __future__ import annotations

import os
import resource
import sys
import time

import torch


class DeviceClock:
    """Wall seconds and device hours of one run, continuing across resumes."""

    def __init__(self, offset_seconds: float = 0.0):
        self.start = time.monotonic()
        self.offset = offset_seconds
        if torch.cuda.is_available():
            self.kind, self.devices = "GPU", int(os.environ.get("WORLD_SIZE", torch.cuda.device_count() or 1))
        else:
            self.kind, self.devices = "CPU", 1

    @property
    def seconds(self) -> float:
        return self.offset + time.monotonic() - self.start

    @property
    def device_hours(self) -> float:
        return self.seconds * self.devices / 3600.0

    def stamp(self) -> dict:
        return {"seconds": round(self.seconds, 3), "device_hours": self.device_hours,
                "device_kind": self.kind, "devices": self.devices}


def peak_memory_gb() -> dict:
    """Peak resident memory of this process so far (loaded models included; a papermill kernel is
    one stage), and on CUDA the peak memory allocated by torch."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_gb": round(rss * (1 if sys.platform == "darwin" else 1024) / 1e9, 3)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    return out
