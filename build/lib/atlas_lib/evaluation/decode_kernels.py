"""Two measures that make a decode step cheaper without changing its math: on a CPU, fp32
``nn.Linear`` products over decode-sized inputs in the weight-major layout
(:func:`weight_major_decode`), and a KV cache that appends in place (:func:`decode_cache`).
:mod:`atlas_lib.evaluation.generation` uses both; ``bench/eval_throughput.py`` measures them."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

DECODE_ROWS = (8, 96)  # CPU products over this many rows use the weight-major layout (below)
OUT_CHUNK = 2048  # weight-major outputs are made row-major in blocks of this many features (below)
SPARE_COLUMNS = 64  # a decoding cache layer appends into this many spare columns before it copies


def param_device(model) -> torch.device:
    """Where the model's weights are (plain ``nn.Module`` too, which has no ``.device``)."""
    return next(model.parameters()).device


def _weight_major_linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, computed as ``(W @ x.T).T`` when ``x`` has ``DECODE_ROWS`` rows."""
    x_N_I = x.reshape(-1, x.shape[-1])
    if not DECODE_ROWS[0] <= x_N_I.shape[0] <= DECODE_ROWS[1]:
        return F.linear(x, module.weight, module.bias)
    w_O_I = module.weight
    y_N_O = x_N_I.new_empty(x_N_I.shape[0], w_O_I.shape[0])
    # The result must be row-major (a transposed view pushes attention off its fused kernel and argmax
    # onto strided reads). Transposing it block by block keeps each block in L2: one whole-matrix
    # transpose of the 152k-wide output projection added 15-40% to its product (bench/RESULTS.md 2c).
    for lo in range(0, w_O_I.shape[0], OUT_CHUNK):
        y_N_O[:, lo:lo + OUT_CHUNK] = (w_O_I[lo:lo + OUT_CHUNK] @ x_N_I.T).T
    if module.bias is not None:
        y_N_O += module.bias
    return y_N_O.reshape(*x.shape[:-1], y_N_O.shape[-1])


@contextmanager
def weight_major_decode(model) -> Iterator[None]:
    """Inside, the CPU model's ``nn.Linear`` layers multiply decode-sized inputs as ``(W @ x.T).T``.

    A decode step multiplies a few rows by every weight matrix, none of which is in cache. For that
    shape, oneDNN/MKL run ``x @ W.T`` (``nn.Linear``'s layout) at 55 / 85 / 130 / 215 GFLOP/s
    for 12 / 16 / 32 / 96 rows of a [4864, 896] weight on this project's 2-core CPU, and
    ``(W @ x.T).T`` at 84 / 113 / 197 / 253 (``bench/rates.py``, ``cold_matmul_rate``); under 8 rows
    the two are even or the swap loses (2 rows: 27 vs 14). Same products; only the summation order inside the
    BLAS kernel differs (as between batch sizes). fp32 weights only: in bf16 the two layouts were
    within 8% of each other either way. Scoped to this model's exact ``nn.Linear``
    instances (subclasses such as LoRA or quantized layers, and layers whose ``forward`` was already
    replaced, e.g. by accelerate's offload hooks, keep theirs), restored on exit; no-op off CPU.
    """
    if param_device(model).type != "cpu":
        yield
        return
    patched = [m for m in model.modules()
               if type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 and "forward" not in vars(m)]
    try:
        for m in patched:
            m.forward = functools.partial(_weight_major_linear, m)
        yield
    finally:
        for m in patched:
            vars(m).pop("forward", None)


class _GrowingLayer(DynamicLayer):
    """A :class:`DynamicLayer` that appends new keys/values into spare columns of a buffer instead of
    concatenating (which copies the whole cache every decode step; decode 1.02-1.07x, RESULTS 2c).
    ``keys``/``values`` are views of the buffer's first columns, as the attention expects. Whoever
    replaces them (merging or trimming batches) simply makes the next ``update`` start a new buffer."""

    def _appendable(self, width: int) -> bool:
        bufs = getattr(self, "_bufs", None)
        return bufs is not None and width <= bufs[0].shape[-2] and all(
            t.data_ptr() == b.data_ptr() and t.shape[:-2] == b.shape[:-2] and t.stride() == b.stride()
            for t, b in zip((self.keys, self.values), bufs, strict=True))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized or self.keys.numel() == 0:
            return super().update(key_states, value_states, *args, **kwargs)
        old, new = self.keys.shape[-2], key_states.shape[-2]
        if not self._appendable(old + new):
            bufs = []
            for t in (self.keys, self.values):
                b = t.new_empty(*t.shape[:-2], old + new + SPARE_COLUMNS, t.shape[-1])
                b[..., :old, :] = t
                bufs.append(b)
            self._bufs = tuple(bufs)
        for b, t in zip(self._bufs, (key_states, value_states), strict=True):
            b[..., old:old + new, :] = t
        self.keys, self.values = (b[..., :old + new, :] for b in self._bufs)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        width = self.get_seq_length()
        if width and self._appendable(width):  # select from the buffers, spare columns included
            self._bufs = tuple(b[indices] for b in self._bufs)
            self.keys, self.values = (b[..., :width, :] for b in self._bufs)
        else:
            super().batch_select_indices(indices)


def decode_cache(model):
    """An empty cache of :class:`_GrowingLayer`, or None when the model's own cache would hold
    anything but plain dynamic layers (the model then builds its own)."""
    cache = DynamicCache(config=model.config)
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [_GrowingLayer() for _ in cache.layers]
    return cache
