"""Seconds per optimizer step and peak RSS: the kit's GKD/GRPO vs stock TRL, in one run.

    python bench/train_step.py --method gkd  [--steps 6] [--new-tokens 64] [--student ...] [--teacher ...]
    python bench/train_step.py --method grpo [--steps 6]

Each variant runs in its own subprocess (so peak RSS is its own), on the same models, prompts,
batch, lengths, lmbda/beta and seed:

- stock: what a new user writes. Models from ``AutoModelForCausalLM.from_pretrained(path)`` with
  transformers' defaults (dtype "auto" = the checkpoint's bf16), TRL's config with only the
  method's settings given: its defaults then turn on bf16 autocast and gradient checkpointing.
- stock-fp32: TRL's own trainer with the kit's precision settings (fp32 models here, no autocast,
  no gradient checkpointing): separates what precision buys from what the kit's code buys.
- kit: atlas_lib's runner: dtype from ``models.resolve_dtype("auto")`` (fp32 on a CPU without
  AMX), no gradient checkpointing, and for GKD ``AtlasGKDTrainer`` (completion-only logits for
  both models, optional chunked JSD).
- kit-bf16-teacher: the kit as the embedded profile runs it (``models.teacher_dtype: bf16``): the
  frozen teacher's weights in bf16, half its memory; the student still trains in fp32.
- kit-lowmem: kit-bf16-teacher plus gradient checkpointing, which the kit (unlike stock TRL)
  combines with cached sampling.
- kit-8bit: kit-lowmem with ``gkd.optimizer: adamw_8bit_bf16``: the student's weights and grads
  in bf16, torchao's 8-bit AdamW with stochastic rounding (``bench/optimizer.py`` measures whether it
  still trains like fp32 AdamW), and freed buffers returned to the OS as the kit's training loop
  does with that optimizer (``runtime.return_freed_memory``).
- kit-lora: kit-bf16-teacher with the student wrapped in LoRA adapters (``gkd.lora`` at its
  defaults: r 16, alpha 32, every linear layer; :func:`atlas_lib.training.common.with_lora`): the
  base weights frozen, AdamW state for the adapters only.
- kit-heap: the kit with its evaluator's allocator setting (:mod:`atlas_lib.core.runtime`: large
  buffers from glibc's heap) left on for the whole step, to show why the kit scopes it to evaluation.

``--variants`` runs a subset (stock's cache-less generation makes it ~30 min for 6 steps here).

Printed: median seconds/step after one warm-up step, peak RSS, the loss on one fixed batch
computed by each variant before training (same inputs: faster-but-different is not faster), the
mean sampled loss over the timed steps, where the time goes (generation, teacher forward, student
forward; the rest of the step is loss + backward + optimizer) and the FLOP floor: FLOPs the step
must do divided by this machine's measured matmul rate in the variant's dtype ("% of limit").
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time
from pathlib import Path

from isolated import emit, run_worker

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("stock", "stock-fp32", "kit", "kit-bf16-teacher", "kit-lowmem", "kit-8bit", "kit-heap", "kit-lora")
LOWMEM = ("kit-bf16-teacher", "kit-lowmem", "kit-8bit", "kit-lora")  # bf16 teacher
sys.path.insert(0, str(ROOT))


class Timer:
    def __init__(self):
        self.t: dict[str, float] = {}
        self.depth = 0

    def add(self, key: str, dt: float) -> None:
        self.t[key] = self.t.get(key, 0.0) + dt


def _wrap(obj, name: str, timer: Timer, key: str) -> None:
    """Time ``obj.name`` under ``key``; calls made while another wrapped call runs (the student's
    forwards inside generation) count only towards the outer one."""
    fn = getattr(obj, name)

    def timed(*a, **k):
        if timer.depth:
            return fn(*a, **k)
        timer.depth += 1
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            timer.depth -= 1
            timer.add(key, time.perf_counter() - t0)

    setattr(obj, name, timed)


def _load(name: str, variant: str, for_training: bool):
    import torch
    from transformers import AutoModelForCausalLM

    from atlas_lib.core import models

    if variant == "stock":  # transformers' defaults: dtype "auto" = the checkpoint's own (bf16)
        model = AutoModelForCausalLM.from_pretrained(models.resolve_path(name))
        return model.train() if for_training else model.eval()
    dtype = torch.float32 if for_training else models.resolve_dtype("auto", "cpu")
    if variant in LOWMEM and not for_training or variant == "kit-8bit":
        dtype = torch.bfloat16
    return models.load_model(name, dtype=dtype, device="cpu", for_training=for_training)[0]


def worker(args) -> dict:
    """One variant's run; kit-heap inside the evaluator's allocator setting from start to end, kit-8bit
    inside the one the kit's training loop uses with that optimizer (training.run)."""
    from atlas_lib.core import runtime

    scope = {"kit-heap": runtime.heap_for_large_buffers, "kit-8bit": runtime.return_freed_memory}
    with scope.get(args.variant, contextlib.nullcontext)():
        return _run_variant(args)


def _run_variant(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from atlas_lib.core import config, models
    from atlas_lib.core.paths import runs_root
    from atlas_lib.data import splits as data
    from atlas_lib.data.prompts import build_messages

    torch.manual_seed(0)
    p = config.load("params/embedded.yaml")
    v = args.variant
    device = models.resolve_device("auto")
    tok = models.load_tokenizer(args.student)
    student = _load(args.student, v, for_training=True)
    if v == "kit-lora":
        from atlas_lib.methods.gkd.config import GKDConfig as Section
        from atlas_lib.training.common import with_lora

        student = with_lora(student, Section(lora={"r": 16}), "gkd")
    rows = data.load_prepared(p).train[: 4 * args.batch] if (runs_root() / "embedded/data/manifest.json").exists() \
        else [{"question": f"Tom has {i} apples and buys {i + 3} more. How many apples?", "answer": str(2 * i + 3),
               "solution": f"{i} + {i + 3} = {2 * i + 3}. Final Answer: {2 * i + 3}"} for i in range(4 * args.batch)]
    timer = Timer()
    step_times: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            step_times.append(time.perf_counter() - self.t0)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    common = dict(output_dir=str(ROOT / "runs/bench/tmp"), max_steps=args.steps, per_device_train_batch_size=args.batch,
                  gradient_accumulation_steps=1, learning_rate=1e-5, logging_steps=1, save_strategy="no",
                  report_to="none", use_cpu=device.type == "cpu", seed=0, disable_tqdm=True)
    if v != "stock":  # stock keeps TRL's defaults (bf16 autocast, gradient checkpointing)
        from atlas_lib.methods.gkd.config import GKDConfig
        from atlas_lib.training.loop import optimizer_args

        common.update(bf16=models.resolve_dtype("auto", device) == torch.bfloat16,
                      gradient_checkpointing=v in ("kit-lowmem", "kit-8bit"),
                      **optimizer_args(GKDConfig(optimizer="adamw_8bit_bf16" if v == "kit-8bit" else "adamw")))
    fixed_loss = None
    if args.method == "gkd":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        from atlas_lib.methods.gkd.trainer import AtlasGKDTrainer

        teacher = _load(args.teacher, v, for_training=False)
        ds = Dataset.from_list(data.distill_view(rows, p.prompt))
        cfg = GKDConfig(**common, lmbda=1.0, beta=0.5, temperature=0.9, max_new_tokens=args.new_tokens)
        kit = v.startswith("kit")
        kw = {"loss_chunk_size": p.gkd.loss_chunk_size} if kit else {}
        trainer = (AtlasGKDTrainer if kit else GKDTrainer)(
            model=student, teacher_model=teacher, args=cfg, train_dataset=ds, processing_class=tok,
            callbacks=[Clock()], **kw)
        batch = next(iter(trainer.get_train_dataloader()))  # prompt + reference: the same ids in every variant
        with torch.no_grad():
            fixed_loss = float(trainer.compute_loss(trainer.model, dict(batch)))
        _wrap(trainer, "generate_on_policy_outputs", timer, "generation")
        _wrap(trainer.teacher_model, "forward", timer, "teacher forward")
        _wrap(trainer.model, "forward", timer, "student forward")
    else:
        from trl import GRPOConfig, GRPOTrainer

        from atlas_lib.methods.grpo.rewards import exact_match_reward

        ds = Dataset.from_list([{"prompt": build_messages(r["question"], p.prompt), "answer": r["answer"]}
                                for r in rows])
        cfg = GRPOConfig(**common, num_generations=args.batch, max_completion_length=args.new_tokens,
                         temperature=0.9, beta=0.0, loss_type="dapo")
        tok.padding_side = "left"
        trainer = GRPOTrainer(model=student, reward_funcs=[exact_match_reward], args=cfg, train_dataset=ds,
                              processing_class=tok, callbacks=[Clock()])
        _wrap(trainer.model, "generate", timer, "generation")
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    return {"variant": v, "method": args.method, "step_seconds": step_times, "losses": losses,
            "fixed_batch_loss": fixed_loss, "dtype": str(next(student.parameters()).dtype),
            "autocast_bf16": bool(trainer.args.bf16), "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "total_seconds": total,
            "breakdown": timer.t}


def flop_floor(res: dict, args, prompt_tokens: int) -> tuple[float, float]:
    """FLOPs per step (2*P per generated/forward token, 6*P per trained token) and the matmul rate."""
    import torch
    from rates import matmul_flops

    from atlas_lib.training.memory import arch, n_params

    s = n_params(arch(args.student))
    seq = prompt_tokens + args.new_tokens
    flops = 2 * s * args.new_tokens * args.batch + 6 * s * seq * args.batch
    if args.method == "gkd":
        flops += 2 * n_params(arch(args.teacher)) * seq * args.batch
    bf16 = res["autocast_bf16"] or "bfloat16" in res["dtype"]
    rate = matmul_flops(args.batch * seq, 896, 4864, torch.bfloat16 if bf16 else torch.float32) / 1e9
    return flops / 1e9, rate


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["gkd", "grpo"], default="gkd")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--student", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--teacher", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        emit(worker(args))
        return 0
    results = {}
    for variant in args.variants:
        res = run_worker(__file__, ["--variant", variant], cwd=ROOT)
        if res is None:
            return 1
        results[variant] = res
    print(f"{args.method.upper()} step, batch {args.batch}, {args.new_tokens} new tokens, {args.steps} steps "
          f"(first is warm-up), student {args.student}" + (f", teacher {args.teacher}" if args.method == "gkd" else ""))
    print("| variant | weights / autocast / grad. ckpt | median s/step | peak RSS GB | fixed-batch loss | "
          "mean sampled loss | generation s | teacher fwd s | student fwd s | rest s | FLOP floor s | % of limit |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    med = {}
    for v, r in results.items():
        timed = r["step_seconds"][1:] or r["step_seconds"]
        med[v] = statistics.median(timed)
        loss = statistics.mean(r["losses"][1:] or r["losses"]) if r["losses"] else float("nan")
        gflop, rate = flop_floor(r, args, prompt_tokens=180)
        floor = gflop / rate
        b = {k: x / len(r["step_seconds"]) for k, x in r["breakdown"].items()}
        rest = statistics.mean(r["step_seconds"]) - sum(b.values())
        fixed = f"{r['fixed_batch_loss']:.5f}" if r["fixed_batch_loss"] is not None else "-"
        setting = f"{r['dtype'].removeprefix('torch.')} / {'bf16' if r['autocast_bf16'] else 'off'} / " \
                  f"{'on' if r['gradient_checkpointing'] else 'off'}"
        print(f"| {v} | {setting} | {med[v]:.1f} | {r['peak_rss_gb']:.1f} | {fixed} | {loss:.4f} | "
              f"{b.get('generation', 0):.1f} | {b.get('teacher forward', 0):.1f} | {b.get('student forward', 0):.1f} | "
              f"{rest:.1f} | {floor:.1f} | {100 * floor / med[v]:.0f}% |")
    for kit in (v for v in results if v.startswith("kit")):
        for base in (v for v in results if v.startswith("stock")):
            k, s_ = results[kit], results[base]
            diff = (f", fixed-batch loss |{kit} - {base}| = "
                    f"{abs(k['fixed_batch_loss'] - s_['fixed_batch_loss']):.2e}" if k["fixed_batch_loss"] is not None
                    else "")
            print(f"{kit} vs {base}: speed-up {med[base] / med[kit]:.2f}x, peak RSS ratio "
                  f"{k['peak_rss_gb'] / s_['peak_rss_gb']:.2f}{diff}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
