"""The kit's CPU allocator setting (:mod:`atlas_lib.core.runtime`) against glibc's defaults, in one run.

Each setting runs in its own interpreter (``ATLAS_CPU_ALLOCATOR=keep`` / ``system``): the evaluator on ``--n`` gsm_symbolic prompts at ``--batch-size`` (prefill and decode
timed apart), plus an elementwise product on a prefill-sized MLP activation; ``--repeats``
alternating runs of each. Printed: seconds, the ratio of medians, peak RSS, and whether the
completions are identical.

    .venv/bin/python bench/allocator.py --n 48 --batch-size 48
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from isolated import emit, run_worker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def worker(args) -> dict:
    import torch
    from eval_throughput import ForwardClock, gsm_prompts

    from atlas_lib.core import models, runtime
    from atlas_lib.evaluation import generation

    with runtime.heap_for_large_buffers() as applied:  # as the evaluator runs
        a, b = torch.randn(16, 155, 4864), torch.randn(16, 155, 4864)  # 48 MB each: one MLP activation
        a * b
        best = float("inf")
        for _ in range(10):
            t0 = time.perf_counter()
            a * b
            best = min(best, time.perf_counter() - t0)
        del a, b
    model, tok = models.load_model(args.model, dtype=torch.float32, device="cpu")
    prompts = gsm_prompts(tok, args.n)
    generation.generate_greedy(model, tok, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up
    clock = ForwardClock(model)
    t0 = time.perf_counter()
    out = generation.generate_greedy(model, tok, prompts, max_new_tokens=args.max_new_tokens,
                                     batch_size=args.batch_size)
    secs = time.perf_counter() - t0
    return {"applied": applied, "mul_ms": 1e3 * best, "seconds": secs, "prefill": clock.t["prefill"],
            "decode": clock.t["decode"], "tokens": sum(o["n_tokens"] for o in out),
            "completions": [o["completion_ids"] for o in out],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each setting")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        emit(worker(args))
        return 0
    res: dict[str, list[dict]] = {"system": [], "keep": []}
    for rep in range(args.repeats):  # alternated, so drift on a shared machine hits both settings
        for setting in ("system", "keep"):
            r = run_worker(__file__, ["--worker"], cwd=ROOT, env={**os.environ, "ATLAS_CPU_ALLOCATOR": setting})
            if r is None:
                return 1
            res[setting].append(r)
            print(f"[{rep + 1}] {setting:6s} ({r['applied']}): mul on [16,155,4864] {r['mul_ms']:.1f} ms; evaluator "
                  f"{r['seconds']:.1f} s (prefill {r['prefill']:.1f} s, decode {r['decode']:.1f} s), "
                  f"{r['tokens'] / r['seconds']:.1f} tok/s; peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)

    def med(setting: str, key: str) -> float:
        return statistics.median(r[key] for r in res[setting])

    s, k = res["system"][0], res["keep"][0]
    print(f"keep vs system (medians of {args.repeats}): mul x{med('system', 'mul_ms') / med('keep', 'mul_ms'):.2f}, "
          f"evaluator x{med('system', 'seconds') / med('keep', 'seconds'):.2f} (prefill "
          f"x{med('system', 'prefill') / med('keep', 'prefill'):.2f}, decode "
          f"x{med('system', 'decode') / med('keep', 'decode'):.2f}), peak RSS "
          f"x{med('keep', 'peak_rss_gb') / med('system', 'peak_rss_gb'):.2f}; completions identical: "
          f"{sum(a == b for a, b in zip(s['completions'], k['completions'], strict=True))}/{len(k['completions'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
