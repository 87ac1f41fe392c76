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

from atlas_lib.core import runtime
from atlas_lib.core.paths import project_root

PROBE = """
import ctypes, json, sys
import torch
from atlas_lib.core import runtime

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


RETURN_PROBE = PROBE.split("first = ")[0] + """
def mapped_4mb():
    before = libc.mallinfo2().hblkhd
    t = torch.empty(6 << 20, dtype=torch.uint8)  # 6 MiB: mapped only below a fixed low threshold
    return libc.mallinfo2().hblkhd - before

for _ in range(3):  # glibc raises its adaptive threshold past 6 MiB once such a mapping is freed
    mapped_4mb()
res = {"default": mapped_4mb()}
with runtime.return_freed_memory() as applied:
    res["inside"] = mapped_4mb()
    with runtime.heap_for_large_buffers():  # an evaluation point during training
        res["eval"] = mmapped_while_alive()
res.update(applied=applied, after=mapped_4mb())
print(json.dumps(res))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_low_memory_training_maps_and_returns_buffers():
    out = subprocess.run([sys.executable, "-c", RETURN_PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, runtime.ENV: "keep"}, cwd=project_root())
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["applied"] == "return"
    assert res["default"] == 0  # glibc's adaptive threshold: a 6 MiB buffer comes from the heap
    assert res["inside"] >= 6 << 20  # mapped, so unmapped again on free
    assert res["eval"] == 0  # the evaluation's own setting still applies inside
    assert res["after"] == 0  # restored on exit


def test_an_evaluation_during_low_memory_training_restores_the_training_setting(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))

    monkeypatch.setenv(runtime.ENV, "keep")
    monkeypatch.setattr(runtime, "_glibc", FakeLibc)
    mmap = runtime._M_MMAP_THRESHOLD
    with runtime.return_freed_memory():
        with runtime.heap_for_large_buffers():
            pass
    thresholds = [v for p, v in calls if p == mmap]
    assert thresholds == [runtime.RETURN_BYTES, runtime.KEEP_BYTES, runtime.RETURN_BYTES, runtime._GLIBC_MMAP_MAX]
    assert runtime._outside == (runtime._GLIBC_MMAP_MAX, runtime._GLIBC_TRIM_MAX)
