"""Throughput of the shared evaluator against a naive one-example-at-a-time ``model.generate`` loop.

Prompts are reasoning-gym ``gsm_symbolic`` problems rendered with the kit's one prompt template.
The evaluator decodes with continuous batching (:mod:`atlas_lib.evaluation.generation`); both decode
greedily with the KV cache and the same arguments (:func:`atlas_lib.evaluation.evaluate.greedy_kwargs`). Reported per dtype and batch size: generated tokens/s,
the speed-up over the naive loop, how many completions agree token-for-token with the naive
ones, and the forward-FLOP "% of limit":

    2 x (parameters except the input embedding table) x generated tokens / seconds
    ---------------------------------------------------------------------------
    matmul FLOP/s measured here, in the same dtype and shape class: [batch, hidden] x [hidden, ffn]

A decode step multiplies ``batch`` rows by every weight matrix, so its shape class is M = batch
(the naive loop's is M = 1). Continuous batching runs fewer rows once the waiting prompts are used
up, so decode is also printed against the limit at each step's own rows (the rate measured on a
grid of row counts, interpolated). Also printed against the machine's peak, a [2048, hidden] product:
the rate no decode step of this batch size can reach, the gap being what a larger batch could buy.
And against a roofline: a decode step of M rows must at least read every weight once from memory
(weights / the measured streaming rate) and do its FLOPs (at the M-row matmul rate); at batch
sizes like these the weight reads, not the FLOPs, set the limit on a CPU.

The input embedding is a table lookup (no FLOPs); the output projection is a matmul and counts.
Attention-score FLOPs (context-dependent, small at these lengths) are left out.

The evaluator keeps its large CPU buffers in glibc's heap (:mod:`atlas_lib.core.runtime`);
``ATLAS_CPU_ALLOCATOR=system`` runs it with glibc's defaults (``bench/allocator.py`` compares the two).
``--compare-layout`` also times the evaluator with ``nn.Linear``'s own layout in decode
(:func:`atlas_lib.evaluation.decode_kernels.weight_major_decode` off), ``--compare-cache`` with the model's own
KV cache, which copies itself every step (:func:`atlas_lib.evaluation.decode_kernels.decode_cache` off).

    .venv/bin/python bench/eval_throughput.py --n 32 --batch-size 8 16 32 --dtype bf16 fp32
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
import unittest.mock

import torch
from rates import cold_matmul_rate, matmul_flops

from atlas_lib.core import models, runtime
from atlas_lib.core.sections import PromptConfig
from atlas_lib.data.prompts import build_messages, render_prompt
from atlas_lib.evaluation import forward, generation

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gsm_prompts(tokenizer, n: int) -> list[str]:
    import reasoning_gym

    data = reasoning_gym.create_dataset("gsm_symbolic", seed=0, size=n)
    cfg = PromptConfig()
    return [render_prompt(tokenizer, build_messages(x["question"], cfg)) for x in data]


class ForwardClock:
    """Seconds in the model's forwards, split into prefills (more than one new position per row)
    and decode steps (one), with the rows each decode step carried."""

    def __init__(self, model):
        self.t = {"prefill": 0.0, "decode": 0.0}
        self.prompt_tokens = self.decode_steps = self.decode_rows = 0
        self.rows_per_step: list[int] = []
        self.hooks = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                      model.register_forward_hook(self._post, with_kwargs=True)]

    def _pre(self, module, args, kwargs):
        ids = kwargs["input_ids"]
        self.kind = "prefill" if ids.shape[1] > 1 else "decode"
        if self.kind == "prefill":
            mask = kwargs.get("attention_mask")  # none for the shared prefix, encoded once
            self.prompt_tokens += int(mask[:, -ids.shape[1]:].sum()) if mask is not None else ids.numel()
        else:
            self.decode_steps += 1
            self.decode_rows += ids.shape[0]
            self.rows_per_step.append(ids.shape[0])
        self.t0 = time.perf_counter()

    def _post(self, module, args, kwargs, out):
        self.t[self.kind] += time.perf_counter() - self.t0

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def step_floor(rows_per_step: list[int], grid: dict[int, float], flops_per_row: float) -> float:
    """Seconds the decode steps would take at the matmul rate of their own row counts (the rate
    interpolated linearly on ``grid``): the limit for steps that carried fewer rows than the batch."""
    ms = sorted(grid)

    def rate(m: int) -> float:
        hi = next((x for x in ms if x >= m), ms[-1])
        lo = max((x for x in ms if x <= m), default=ms[0])
        return grid[lo] if hi == lo else grid[lo] + (grid[hi] - grid[lo]) * (m - lo) / (hi - lo)

    return sum(flops_per_row * m / rate(m) for m in rows_per_step)


def naive_loop(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[list[list[int]], float]:
    kwargs = generation.greedy_kwargs(model, tokenizer, max_new_tokens)
    eos = set(kwargs["eos_token_id"])
    comps, t0 = [], time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor(forward.encode_prompts(tokenizer, [p]))
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
    ap.add_argument("--compare-layout", action="store_true", help="also time each batch size with nn.Linear's "
                    "own x @ W.T layout in decode (decode_kernels.weight_major_decode off; completions compared)")
    ap.add_argument("--compare-cache", action="store_true", help="also time each batch size with the model's "
                    "own KV cache, which concatenates every step (decode_cache off; completions compared)")
    ap.add_argument("--compare-generate", action="store_true", help="also time each batch size with fixed "
                    "batches through model.generate (the evaluator before continuous batching)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), nargs="+", default=["fp32"],
                    help="fp32 and/or bf16 (bf16 was 2-6x slower than fp32 on a 2-core AVX512-BF16 CPU)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    allocator = runtime.allocator_choice()  # the evaluator applies it (ATLAS_CPU_ALLOCATOR=system: glibc's)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"model {args.model}, n={args.n}, max_new_tokens={args.max_new_tokens}; CPU allocator {allocator}")
    rows = []
    for name in args.dtype:
        dtype = DTYPES[name]
        model, tok = models.load_model(args.model, dtype=dtype, device="cpu")
        model.eval()
        cfg = model.config
        work = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
        rate = {m: matmul_flops(m, cfg.hidden_size, cfg.intermediate_size, dtype, seconds=1.0 + (m > 256))
                for m in sorted({1, 2048, *args.batch_size})}
        # the same rate on a grid of row counts, for decode steps that carried fewer rows than the batch
        grid = {m: rate.get(m) or matmul_flops(m, cfg.hidden_size, cfg.intermediate_size, dtype, seconds=1.0)
                for m in sorted({1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 96, *args.batch_size})}
        peak = max(rate.values())  # a shared 2-core VM is noisy: the best rate it showed on any shape
        # a one-row product per weight matrix reads each weight once (2 FLOPs per weight)
        stream = cold_matmul_rate(1, cfg.hidden_size, cfg.intermediate_size, dtype) * dtype.itemsize / 2
        weight_bytes = work * dtype.itemsize
        roofline = {m: m / max(weight_bytes / stream, 2 * work * m / r) for m, r in rate.items()}  # tokens/s
        if name == "fp32":
            print("  decode-shaped products over cold weights, x @ W.T (nn.Linear) vs (W @ x.T).T, GFLOP/s: " + ", ".join(
                f"M={m} {cold_matmul_rate(m, cfg.hidden_size, cfg.intermediate_size, dtype) / 1e9:.1f} vs "
                f"{cold_matmul_rate(m, cfg.hidden_size, cfg.intermediate_size, dtype, transposed=True) / 1e9:.1f}"
                for m in sorted({1, 12, *args.batch_size})), flush=True)
        prompts = gsm_prompts(tok, args.n)
        prefix = len(os.path.commonprefix(forward.encode_prompts(tok, prompts)))
        print(f"\n[{name}] shared prompt prefix {prefix} tokens; matmul [M,{cfg.hidden_size}]x[{cfg.hidden_size},"
              f"{cfg.intermediate_size}] GFLOP/s: " + ", ".join(f"M={m} {r / 1e9:.1f}" for m, r in rate.items())
              + f"; {work / 1e6:.0f}M matmul parameters ({weight_bytes / 1e9:.2f} GB), weights stream at "
              f"{stream / 1e9:.1f} GB/s", flush=True)
        generation.generate_greedy(model, tok, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up (allocator, oneDNN)
        naive, t_naive = naive_loop(model, tok, prompts[:args.naive_n or args.n], args.max_new_tokens)
        n_naive = sum(map(len, naive))
        tps_naive = n_naive / t_naive
        print(f"  naive loop : {len(naive)} ex, {n_naive} tokens in {t_naive:.1f} s = {tps_naive:.1f} tok/s, "
              f"{100 * 2 * work * tps_naive / rate[1]:.1f}% of limit (M=1), "
              f"{100 * 2 * work * tps_naive / peak:.1f}% of peak, {100 * tps_naive / roofline[1]:.1f}% of roofline")
        for bs in args.batch_size:
            clock = ForwardClock(model)
            t0 = time.perf_counter()
            outs = generation.generate_greedy(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=bs,
                                      desc=f"{name} bs={bs}")
            secs = time.perf_counter() - t0
            clock.remove()
            n_tok = sum(o["n_tokens"] for o in outs)
            tps = n_tok / secs
            same = sum(o["completion_ids"] == c for o, c in zip(outs, naive, strict=False))
            trunc = sum(o["truncated"] for o in outs)
            print(f"  batched bs={bs:<3}: {n_tok} tokens in {secs:.1f} s = {tps:.1f} tok/s, "
                  f"x{tps / tps_naive:.2f} vs naive, {100 * 2 * work * tps / rate[bs]:.1f}% of limit (M={bs}), "
                  f"{100 * 2 * work * tps / peak:.1f}% of peak, {100 * tps / roofline[bs]:.1f}% of roofline, "
                  f"{same}/{len(naive)} identical to naive, {trunc}/{len(outs)} truncated")
            dec_rows = clock.decode_rows / max(1, clock.decode_steps)
            floor = step_floor(clock.rows_per_step, grid, 2 * work)
            print(f"    where the time goes: prefill {clock.t['prefill']:.1f} s ({clock.prompt_tokens} prompt tokens "
                  f"after the cached prefix, {2 * work * clock.prompt_tokens / clock.t['prefill'] / 1e9:.0f} GFLOP/s); "
                  f"decode {clock.t['decode']:.1f} s ({clock.decode_steps} steps, {dec_rows:.1f} rows each on average, "
                  f"{clock.decode_rows / clock.t['decode']:.1f} tok/s = "
                  f"{100 * 2 * work * clock.decode_rows / clock.t['decode'] / rate[bs]:.1f}% of limit (M={bs}), "
                  f"{100 * floor / clock.t['decode']:.1f}% of the limit at each step's own rows); "
                  f"outside forwards {secs - sum(clock.t.values()):.1f} s")
            # every forward FLOP the evaluation does (prompt tokens too: the answers need them) over its wall time
            all_flops = 2 * work * (clock.prompt_tokens + clock.decode_rows)  # prompt_tokens includes the prefix
            print(f"    all forward FLOPs (prompt + generated tokens) / wall time: {all_flops / secs / 1e9:.0f} GFLOP/s = "
                  f"{100 * all_flops / secs / rate[bs]:.1f}% of the M={bs} rate, {100 * all_flops / secs / peak:.1f}% of peak")
            rows.append((name, bs, tps, tps / tps_naive))
            variants = {  # the evaluator with one decode measure taken out
                "x @ W.T": (args.compare_layout, "weight_major_decode", lambda m: contextlib.nullcontext()),
                "cat cache": (args.compare_cache, "_decode_cache", lambda m: None),
            }
            for label, (wanted, attr, off) in variants.items():
                if not wanted:
                    continue
                clock = ForwardClock(model)
                t0 = time.perf_counter()
                with unittest.mock.patch.object(generation, attr, off):
                    plain = generation.generate_greedy(model, tok, prompts, max_new_tokens=args.max_new_tokens,
                                               batch_size=bs, desc=f"{name} {label} bs={bs}")
                secs_l = time.perf_counter() - t0
                clock.remove()
                tps_l = sum(o["n_tokens"] for o in plain) / secs_l
                same_l = sum(a["completion_ids"] == b["completion_ids"] for a, b in zip(outs, plain, strict=True))
                floor_l = step_floor(clock.rows_per_step, grid, 2 * work)
                print(f"  {label:<9} bs={bs:<3}: {tps_l:.1f} tok/s, x{tps_l / tps_naive:.2f} vs naive (the evaluator "
                      f"x{tps / tps_l:.2f} faster); decode {clock.t['decode']:.1f} s = "
                      f"{100 * 2 * work * clock.decode_rows / clock.t['decode'] / rate[bs]:.1f}% of limit (M={bs}), "
                      f"{100 * floor_l / clock.t['decode']:.1f}% at each step's own rows; "
                      f"{same_l}/{len(outs)} completions identical")
                rows.append((f"{name} {label}", bs, tps_l, tps_l / tps_naive))
            if args.compare_generate:  # the sliding-window fallback: fixed batches, every row to the longest
                full_attention = generation.full_attention, forward.full_attention
                generation.full_attention = forward.full_attention = lambda model: False  # no prefix cache either
                try:
                    t0 = time.perf_counter()
                    fixed = generation.generate_greedy(model, tok, prompts, max_new_tokens=args.max_new_tokens,
                                               batch_size=bs, desc=f"{name} generate bs={bs}")
                    secs_g = time.perf_counter() - t0
                finally:
                    generation.full_attention, forward.full_attention = full_attention
                tps_g = sum(o["n_tokens"] for o in fixed) / secs_g
                same_g = sum(a["completion_ids"] == b["completion_ids"] for a, b in zip(outs, fixed, strict=True))
                print(f"  generate() bs={bs:<3}: {tps_g:.1f} tok/s, x{tps_g / tps_naive:.2f} vs naive; continuous "
                      f"batching x{tps / tps_g:.2f} faster; {same_g}/{len(outs)} completions identical")
                rows.append((f"{name} generate()", bs, tps_g, tps_g / tps_naive))
        if args.compare_prefix:  # the same, with every prompt's shared system/few-shot prefix re-encoded
            t0 = time.perf_counter()
            outs = generation.generate_greedy(model, tok, prompts, max_new_tokens=args.max_new_tokens,
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
