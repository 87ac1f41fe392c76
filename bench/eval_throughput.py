"""Throughput of the shared evaluator against a naive one-example-at-a-time ``model.generate`` loop.

Prompts are reasoning-gym ``gsm_symbolic`` problems rendered with the kit's one prompt template.
Both paths decode greedily with the KV cache and the same ``generate`` arguments
(:func:`atlas_lib.evaluate.greedy_kwargs`). Reported per dtype and batch size: generated tokens/s,
the speed-up over the naive loop, how many completions agree token-for-token with the naive
ones, and the forward-FLOP "% of limit":

    2 x (parameters except the input embedding table) x generated tokens / seconds
    ---------------------------------------------------------------------------
    matmul FLOP/s measured here, in the same dtype, on a [2048, hidden] x [hidden, ffn] product

The input embedding is a table lookup (no FLOPs); the output projection is a matmul and counts.
Attention-score FLOPs (context-dependent, small at these lengths) are left out.

    .venv/bin/python bench/eval_throughput.py --n 32 --batch-size 8 16 32 --dtype bf16 fp32
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch

from atlas_lib import evaluate as ev
from atlas_lib import models
from atlas_lib.config import PromptConfig
from atlas_lib.prompts import DEFAULT_SHOTS, build_messages, render_prompt

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gsm_prompts(tokenizer, n: int) -> list[str]:
    import reasoning_gym

    data = reasoning_gym.create_dataset("gsm_symbolic", seed=0, size=n)
    cfg = PromptConfig()
    return [render_prompt(tokenizer, build_messages(x["question"], cfg, DEFAULT_SHOTS)) for x in data]


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


def naive_loop(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[list[list[int]], float]:
    kwargs = ev.greedy_kwargs(model, tokenizer, max_new_tokens)
    eos = set(kwargs["eos_token_id"])
    comps, t0 = [], time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor(ev.encode_prompts(tokenizer, [p]))
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)[0, ids.shape[1]:]
            comp = out.tolist()
            stop = next((j for j, t in enumerate(comp) if t in eos), None)
            comps.append(comp[:stop + 1] if stop is not None else comp)
    return comps, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--n", type=int, default=32, help="gsm_symbolic problems")
    ap.add_argument("--naive-n", type=int, default=None, help="problems for the naive loop (default: --n)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[16], help="one or more, e.g. 8 16 32")
    ap.add_argument("--compare-prefix", action="store_true", help="also time the first batch size without "
                    "the shared-prefix cache")
    ap.add_argument("--dtype", choices=sorted(DTYPES), nargs="+", default=["fp32"],
                    help="fp32 and/or bf16 (bf16 was 2-6x slower than fp32 on a 2-core AVX512-BF16 CPU)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"model {args.model}, n={args.n}, max_new_tokens={args.max_new_tokens}")
    rows = []
    for name in args.dtype:
        dtype = DTYPES[name]
        model, tok = models.load_model(args.model, dtype=dtype, device="cpu")
        model.eval()
        cfg = model.config
        work = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
        big = matmul_flops(2048, cfg.hidden_size, cfg.intermediate_size, dtype)
        decode = matmul_flops(max(args.batch_size), cfg.hidden_size, cfg.intermediate_size, dtype, seconds=1.0)
        peak = max(big, decode)  # the limit: the best rate this machine showed on either shape
        prompts = gsm_prompts(tok, args.n)
        prefix = len(os.path.commonprefix(ev.encode_prompts(tok, prompts)))
        print(f"\n[{name}] shared prompt prefix {prefix} tokens; matmul [M,{cfg.hidden_size}]x[{cfg.hidden_size},"
              f"{cfg.intermediate_size}]: M=2048 {big / 1e9:.1f}, M={max(args.batch_size)} {decode / 1e9:.1f} GFLOP/s "
              f"(limit {peak / 1e9:.1f}); {work / 1e6:.0f}M matmul parameters", flush=True)
        ev.generate_greedy(model, tok, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up (allocator, oneDNN)
        naive, t_naive = naive_loop(model, tok, prompts[:args.naive_n or args.n], args.max_new_tokens)
        n_naive = sum(map(len, naive))
        tps_naive = n_naive / t_naive
        print(f"  naive loop : {len(naive)} ex, {n_naive} tokens in {t_naive:.1f} s = {tps_naive:.1f} tok/s, "
              f"{100 * 2 * work * tps_naive / peak:.1f}% of limit")
        for bs in args.batch_size:
            t0 = time.perf_counter()
            outs = ev.generate_greedy(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=bs,
                                      desc=f"{name} bs={bs}")
            secs = time.perf_counter() - t0
            n_tok = sum(o["n_tokens"] for o in outs)
            tps = n_tok / secs
            same = sum(o["completion_ids"] == c for o, c in zip(outs, naive, strict=False))
            trunc = sum(o["truncated"] for o in outs)
            print(f"  batched bs={bs:<3}: {n_tok} tokens in {secs:.1f} s = {tps:.1f} tok/s, "
                  f"x{tps / tps_naive:.2f} vs naive, {100 * 2 * work * tps / peak:.1f}% of limit, "
                  f"{same}/{len(naive)} identical to naive, {trunc}/{len(outs)} truncated")
            rows.append((name, bs, tps, tps / tps_naive))
        if args.compare_prefix:  # the same, with every prompt's shared system/few-shot prefix re-encoded
            t0 = time.perf_counter()
            outs = ev.generate_greedy(model, tok, prompts, max_new_tokens=args.max_new_tokens,
                                      batch_size=args.batch_size[0], prefix_cache=False)
            secs = time.perf_counter() - t0
            tps = sum(o["n_tokens"] for o in outs) / secs
            print(f"  batched bs={args.batch_size[0]}, no prefix cache: {tps:.1f} tok/s, x{tps / tps_naive:.2f} vs naive")
            rows.append((f"{name} no-prefix", args.batch_size[0], tps, tps / tps_naive))
        del model
    print("\nsummary: " + "; ".join(f"{d} bs={b}: {t:.1f} tok/s (x{r:.2f})" for d, b, t, r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
