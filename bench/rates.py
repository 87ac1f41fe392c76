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


# The machine the README's costs were measured on (2-core, 24 GiB, no GPU): its fp32 rate at the
# prefill shape class below moved between 249 and 297 GFLOP/s across sessions (RESULTS section 2).
REFERENCE_GFLOPS = (249.0, 297.0)
# Wall time of the stages there, in minutes, as the README's cost table states them (nothing else running)
MEASURED_MIN = {"make report (embedded)": (18.7, 20.2), "make study": (109.0, 109.0)}


def main() -> None:
    """Estimate the README's costs on this machine: its fp32 matmul rate against the reference's.

    Both tiers are dominated by fp32/bf16 matmuls on the CPU (decode, teacher scoring, training), so
    their times scale roughly with this rate; memory bandwidth and core count move decode too, so
    read the result as a range, not a promise."""
    rate = matmul_flops(2048, 896, 4864, torch.float32) / 1e9
    print(f"this machine: fp32 matmul [2048 x 896] x [896 x 4864] at {rate:.0f} GFLOP/s "
          f"(reference machine: {REFERENCE_GFLOPS[0]:.0f}-{REFERENCE_GFLOPS[1]:.0f}), torch threads {torch.get_num_threads()}")
    for what, (lo, hi) in MEASURED_MIN.items():
        print(f"  {what}: about {lo * REFERENCE_GFLOPS[0] / rate:.0f}-{hi * REFERENCE_GFLOPS[1] / rate:.0f} min "
              f"(measured {lo:g}-{hi:g} min on the reference)")


if __name__ == "__main__":
    main()
