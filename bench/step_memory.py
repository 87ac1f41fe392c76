"""Resident and peak memory around each phase of a low-memory GKD step, by allocator setting.

    .venv/bin/python bench/step_memory.py [--steps 2] [--optimizer adamw_8bit_bf16]

One fixed batch (``bench/optimizer.py``'s), the bf16 teacher scoring it once, the student with
gradient checkpointing and the chosen optimizer (kit-lowmem / kit-8bit of ``train_step.py``).
Each allocator setting runs in its own interpreter (glibc's thresholds are process state):

- glibc: glibc's adaptive thresholds (what a process gets by default);
- return: ``atlas_lib.core.runtime.return_freed_memory``, which the kit's training loop enters for
  ``optimizer: adamw_8bit_bf16``.

Printed per phase: resident GB after it and the peak during it (``VmHWM``, reset before each phase
through ``/proc/self/clear_refs``; Linux only), then the whole run's peak ratio return / glibc.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import torch
from isolated import emit, run_worker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _status() -> tuple[float, float]:
    st = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(st["VmRSS"].split()[0]) / 1e6, int(st["VmHWM"].split()[0]) / 1e6


def worker(args) -> dict:
    import optimizer as ob

    from atlas_lib.core import models, runtime

    phases: list[tuple[str, float, float]] = []

    def mark(name: str) -> None:
        now, hwm = _status()
        phases.append((name, now, hwm))
        Path("/proc/self/clear_refs").write_text("5")  # the next phase's peak starts from here

    scope = runtime.return_freed_memory if args.allocator == "return" else contextlib.nullcontext
    with scope():
        tok = models.load_tokenizer(args.student)
        ids, att, comp = ob.fixed_batch(tok, args.batch)
        teacher = models.load_model(args.teacher, dtype=torch.bfloat16, device="cpu")[0]  # stays, as in training
        t_N_V = ob.teacher_logits(teacher, ids, att, comp)
        mark("teacher loaded + scored")
        dtype = torch.bfloat16 if args.optimizer == "adamw_8bit_bf16" else torch.float32
        model = models.load_model(args.student, dtype=dtype, device="cpu", for_training=True)[0].train()
        model.gradient_checkpointing_enable()
        opt = ob.make_optimizer(model, args.optimizer, 1e-5)
        mark("student loaded")
        for i in range(args.steps):
            loss = ob.loss_fn(model, ids, att, comp, t_N_V)
            mark(f"step {i}: forward")
            loss.backward()
            mark(f"step {i}: backward")
            opt.step()
            mark(f"step {i}: optimizer")
            opt.zero_grad(set_to_none=True)
    return {"allocator": args.allocator, "phases": phases, "peak": max(p[2] for p in phases)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--optimizer", default="adamw_8bit_bf16", choices=["adamw", "adamw_8bit_bf16"])
    ap.add_argument("--student", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--teacher", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--allocator", choices=["glibc", "return"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.allocator:
        emit(worker(args))
        return 0
    res = {}
    for alloc in ("glibc", "return"):
        # the evaluator's variable must not turn the setting off here
        r = run_worker(__file__, ["--allocator", alloc], cwd=ROOT, env={**os.environ, "ATLAS_CPU_ALLOCATOR": "keep"})
        if r is None:
            return 1
        res[alloc] = r
    print(f"GKD fixed-batch step, optimizer {args.optimizer}, gradient checkpointing, bf16 teacher; GB")
    print("| phase | glibc: resident after | glibc: peak during | return: resident after | return: peak during |")
    print("|---|---:|---:|---:|---:|")
    for (name, a_now, a_hwm), (_, b_now, b_hwm) in zip(res["glibc"]["phases"], res["return"]["phases"], strict=True):
        print(f"| {name} | {a_now:.2f} | {a_hwm:.2f} | {b_now:.2f} | {b_hwm:.2f} |")
    print(f"peak: glibc {res['glibc']['peak']:.2f} GB, return {res['return']['peak']:.2f} GB, "
          f"ratio {res['return']['peak'] / res['glibc']['peak']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
