"""Where the evaluator's large CPU buffers live: glibc's heap instead of a fresh mapping each.

glibc's ``malloc`` serves a request above its mmap threshold (128 KiB, raised adaptively to at
most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``. A prefill forward over a batch of
prompts allocates many larger buffers (a [16, 155, 4864] MLP activation is 48 MB), so each one is
zero-filled by the kernel page by page again: an elementwise ``mul`` on it took 12 ms instead of
3 ms here, prefill 1.30x and the whole evaluation 1.12x longer (``bench/allocator.py``, medians
of 3 alternating runs; peak RSS 1.01x, completions identical). Inside
:func:`heap_for_large_buffers` such buffers come from the heap, where freed memory is reused;
results are unchanged (the same arithmetic on the same values; only where the bytes live differs).

Scoped to evaluation on purpose: left on through a GKD training step it raised peak RSS by 1.1 GB
in two runs while its speed effect was within this machine's noise (0.98x and 1.17x;
``bench/train_step.py``, variant kit-heap). On exit the thresholds
go back to glibc's adaptive ceiling and the freed heap is returned to the OS (``malloc_trim``).

The opposite, :func:`return_freed_memory`, is for training with ``optimizer: adamw_8bit_bf16``
(the low-memory choice): buffers of 4 MiB and more are mapped and unmapped each time, so what an
optimizer step frees goes back to the OS instead of staying in a fragmented heap. With glibc's
adaptive thresholds a GKD step of the embedded pair held 9.0 GB after its first optimizer step and
peaked at 10.1 GB; with a fixed 4 MiB threshold 7.8 and 8.8 GB (the expected weights, grads and
8-bit moments; same arithmetic).

``ATLAS_CPU_ALLOCATOR=system`` turns both off (to compare, or to rule it out). Other C libraries
(musl, macOS) and preloaded allocators (jemalloc, tcmalloc) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

log = logging.getLogger(__name__)

ENV = "ATLAS_CPU_ALLOCATOR"
CHOICES = ("keep", "system")
# mallopt(3) parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_BYTES = 1 << 30  # inside: buffers up to 1 GiB from the heap (a 48-row prefill's MLP activations
# reach ~280 MB; a 256 MiB threshold recovered only part of the gain)
# outside: glibc's adaptive thresholds at their 64-bit ceiling (mmap 32 MiB, trim twice that)
_GLIBC_MMAP_MAX, _GLIBC_TRIM_MAX = 32 << 20, 64 << 20

RETURN_BYTES = 4 << 20  # training with the low-memory optimizer: map buffers of 4 MiB and more
_GLIBC_TRIM_DEFAULT = 128 << 10

_depth = 0
_outside = (_GLIBC_MMAP_MAX, _GLIBC_TRIM_MAX)  # what heap_for_large_buffers restores on exit


def allocator_choice() -> str:
    """``ATLAS_CPU_ALLOCATOR`` (default ``keep``), checked against :data:`CHOICES`."""
    choice = os.environ.get(ENV, "keep").strip().lower() or "keep"
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)} "
                         "(keep = the kit's settings: the evaluator's large buffers stay in the heap, low-memory "
                         "training returns what it frees; system = glibc's defaults)")
    return choice


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL("libc.so.6")


def _set(libc, mmap_bytes: int, trim_bytes: int) -> bool:
    # Both: the mmap threshold sends large requests to the heap; the trim threshold stops free()
    # from handing the heap's top straight back to the OS (which would page-fault it again).
    return libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, trim_bytes) == 1


def _applicable():
    """(libc, state): glibc to set thresholds on and ``keep``, or None and why not (``system``:
    turned off, ``unsupported``: not glibc)."""
    choice = allocator_choice()
    if choice == "system":
        return None, choice
    libc = _glibc()
    return libc, "keep" if libc is not None else "unsupported"


@contextmanager
def heap_for_large_buffers() -> Iterator[str]:
    """Inside, CPU buffers up to :data:`KEEP_BYTES` come from glibc's heap and are reused after
    ``free``. Yields what is in effect: ``keep``, ``system`` (turned off) or ``unsupported`` (not
    glibc). Nested uses apply it once; the outermost exit restores and trims."""
    global _depth
    libc, state = _applicable()
    if libc is None:
        yield state
        return
    if _depth == 0 and not _set(libc, KEEP_BYTES, KEEP_BYTES):
        log.warning("mallopt refused the evaluator's allocator thresholds; running with glibc's")
    _depth += 1
    try:
        yield state
    finally:
        _depth -= 1
        if _depth == 0:
            _set(libc, *_outside)
            libc.malloc_trim(0)


@contextmanager
def return_freed_memory() -> Iterator[str]:
    """Inside, CPU buffers of :data:`RETURN_BYTES` and more get their own mapping, unmapped on
    ``free``; evaluations inside keep their heap setting and come back to this one. Yields what is
    in effect, like :func:`heap_for_large_buffers`."""
    global _outside
    libc, state = _applicable()
    if libc is None:
        yield state
        return
    previous, _outside = _outside, (RETURN_BYTES, _GLIBC_TRIM_DEFAULT)
    if not _set(libc, *_outside):
        log.warning("mallopt refused the training allocator thresholds; running with glibc's")
    try:
        yield "return"
    finally:
        _outside = previous
        _set(libc, *_outside)
        libc.malloc_trim(0)


def seed_everything(params, seed: int | None = None) -> None:
    """Python, numpy and torch seeded from ``seed`` (default ``run.seed``); ``run.num_threads`` applied."""
    seed = params.run.seed if seed is None else seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if params.run.num_threads:
        torch.set_num_threads(params.run.num_threads)
