"""Matmul rates of this machine, the denominators of the benchmarks' "% of limit"."""

from __future__ import annotations

import time

import torch


def matmul_flops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Sustained FLOP/s of ``[m, k] @ [k, n]`` in ``dtype`` (best of repeated timed runs)."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best


def cold_matmul_rate(m: int, k: int, n: int, dtype: torch.dtype = torch.float32, transposed: bool = False,
                     total_gb: float = 0.8) -> float:
    """FLOP/s of ``[m, k]`` rows times many distinct ``[n, k]`` weights (``total_gb`` of them, so
    none is in cache, as in a decode step), computed as ``nn.Linear`` does (``x @ W.T``) or as
    ``(W @ x.T).T``; best of 3 passes."""
    ws = [torch.randn(n, k).to(dtype) for _ in range(max(1, int(total_gb * 1e9 / (n * k * dtype.itemsize))))]
    x = torch.randn(m, k).to(dtype)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for w in ws:
            (w @ x.t()).t() if transposed else torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n * len(ws) / best
