"""fp32 vs bf16 on this CPU, for the operations the kit runs: why ``run.dtype: auto`` picks what it picks.

    .venv/bin/python bench/dtype.py [--student ...] [--teacher ...]

Measured in one run, each against fp32 as the baseline:
- generation (batch 2, 32 greedy tokens after a 220-token prompt): fp32 weights, fp32 weights under
  bf16 autocast (what mixed-precision training does while it samples), bf16 weights;
- batched decoding (batch 12): seconds per decode step, fp32 vs bf16 weights;
- the student's training forward + backward (batch 2 x 350 tokens, logits for the last 130):
  fp32 vs bf16 autocast;
- the teacher's scoring forward (batch 2 x 350 tokens): fp32 vs bf16 weights.
A ratio > 1 means bf16 is slower than fp32.

Also printed: the share of the student's weights that one AdamW step leaves unchanged when the
weights are stored in bf16 vs fp32. Adam's first update is about ``lr`` in size for every weight;
bf16 keeps 8 significant bits, so an update far below ``|w| / 256`` rounds away. This is why the
kit trains fp32 weights (and why its peak memory is above an all-bf16 run's).
"""

from __future__ import annotations

import argparse
import time

import torch

from atlas_lib.core import models
from atlas_lib.evaluation import forward


def _timed(fn, reps: int = 2) -> float:
    """Best of ``reps`` runs after one warm-up (allocator, oneDNN kernels)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def generation(model, ids_B_T: torch.Tensor, autocast: bool, new: int = 32) -> float:
    def go():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model.generate(ids_B_T, attention_mask=torch.ones_like(ids_B_T), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False)
    return _timed(go, reps=1)


def decode_step(model, batch: int, hi: int, prompt: int = 200, steps: int = 8) -> float:
    ids = torch.randint(3, hi, (batch, prompt))
    arg = forward.cache_arg(model)
    with torch.inference_mode():
        out = model(ids, use_cache=True)
        cache, nxt = forward.out_cache(out), out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(nxt, use_cache=True, **{arg: cache})
            cache, nxt = forward.out_cache(out), out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - t0) / steps


def train_step(model, ids_B_T: torch.Tensor, autocast: bool) -> float:
    def go():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(ids_B_T, logits_to_keep=130).logits
        logits.float().logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)
    return _timed(go)


def lost_updates(model, lr: float, dtype: torch.dtype) -> float:
    """Share of weights ``w`` for which ``w - lr * sign`` rounds back to ``w`` in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    lost = total = 0
    with torch.no_grad():
        for p in model.parameters():
            w = p.detach().to(dtype)
            step = lr * (torch.randint(0, 2, w.shape, generator=g) * 2 - 1)
            lost += int(((w.float() - step).to(dtype) == w).sum())
            total += w.numel()
    return lost / total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--teacher", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--updates-only", action="store_true", help="only the lost-update shares (no timings)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; cpu_has_bf16 (AMX) = "
          f"{models.cpu_has_bf16()}; resolve_dtype('auto', 'cpu') = {models.resolve_dtype('auto', 'cpu')}")
    rows = []
    hi = min(20000, len(models.load_tokenizer(args.student)), len(models.load_tokenizer(args.teacher)))
    prompt_B_T, seq_B_T = torch.randint(3, hi, (2, 220)), torch.randint(3, hi, (2, 350))
    s32 = models.load_model(args.student, dtype=torch.float32, device="cpu")[0]
    for lr in (1e-6, 1e-5):
        print(f"one AdamW step of size lr={lr:g}: weights left unchanged in bf16 "
              f"{100 * lost_updates(s32, lr, torch.bfloat16):.1f}%, in fp32 "
              f"{100 * lost_updates(s32, lr, torch.float32):.1f}%", flush=True)
    if args.updates_only:
        return 0
    g32, gac = generation(s32, prompt_B_T, False), generation(s32, prompt_B_T, True)
    d32 = decode_step(s32, 12, hi)
    s32.train().requires_grad_(True)
    t32, tac = train_step(s32, seq_B_T, False), train_step(s32, seq_B_T, True)
    del s32
    s16 = models.load_model(args.student, dtype=torch.bfloat16, device="cpu")[0]
    g16, d16 = generation(s16, prompt_B_T, False), decode_step(s16, 12, hi)
    del s16
    rows += [("student generation, batch 2 x 32 tokens: fp32 autocast-bf16", g32, gac),
             ("student generation, batch 2 x 32 tokens: bf16 weights", g32, g16),
             ("student decode step, batch 12: bf16 weights", d32, d16),
             ("student train fwd+bwd, 2 x 350 tokens: bf16 autocast", t32, tac)]
    fwd = {}
    for dt in (torch.float32, torch.bfloat16):
        t = models.load_model(args.teacher, dtype=dt, device="cpu")[0]
        with torch.no_grad():
            fwd[dt] = _timed(lambda t=t: t(seq_B_T, logits_to_keep=130))
        del t
    rows.append(("teacher scoring fwd, 2 x 350 tokens: bf16 weights", fwd[torch.float32], fwd[torch.bfloat16]))
    print("| operation: variant | fp32 s | variant s | variant / fp32 |")
    print("|---|---:|---:|---:|")
    for name, base, other in rows:
        print(f"| {name} | {base:.3f} | {other:.3f} | {other / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
