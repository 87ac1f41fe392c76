"""The evaluator's allocator setting: off by env, bad values named, and inside it large buffers
really come from the reusable heap instead of per-allocation mmaps, outside they do not (checked
in a fresh interpreter: the setting is process state)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from atlas_lib import runtime
from atlas_lib.paths import project_root

PROBE = """
import ctypes, json, sys
import torch
from atlas_lib import runtime

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mmapped_while_alive():
    before = libc.mallinfo2().hblkhd
    t = torch.empty(64 << 20, dtype=torch.uint8)  # 64 MiB: above glibc's largest adaptive threshold
    return libc.mallinfo2().hblkhd - before

first = mmapped_while_alive()
with runtime.heap_for_large_buffers() as applied:
    with runtime.heap_for_large_buffers():  # nested: applied once, restored by the outermost
        pass
    inside = mmapped_while_alive()
print(json.dumps({"applied": applied, "default": first, "inside": inside, "after": mmapped_while_alive()}))
"""


def test_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(runtime.ENV, "fast")
    with pytest.raises(ValueError, match="ATLAS_CPU_ALLOCATOR='fast'.*keep, system"):
        runtime.allocator_choice()


def test_system_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv(runtime.ENV, "system")
    monkeypatch.setattr(runtime, "_glibc", lambda: pytest.fail("system must not touch the C library"))
    with runtime.heap_for_large_buffers() as state:
        assert state == "system"


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("env", ["keep", "system"])
def test_keep_moves_large_buffers_into_the_heap(env):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, runtime.ENV: env}, cwd=project_root())
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["default"] >= 64 << 20  # glibc's default: a fresh mapping per large buffer
    assert res["applied"] == env
    assert (res["inside"] == 0) if env == "keep" else (res["inside"] >= 64 << 20)
    assert res["after"] >= 64 << 20  # restored on exit: training keeps glibc's behaviour
