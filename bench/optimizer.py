"""Does a low-memory optimizer train like fp32 AdamW? Update fidelity on one fixed GKD batch.

    .venv/bin/python bench/optimizer.py [--steps 8] [--lr 1e-5 1e-6] [--batch 2] [--student ...] [--teacher ...]

The teacher (bf16, as the embedded profile runs it) scores one fixed batch once: prompts from the
embedded training problems plus their reference completions, the same token ids for every variant.
Each variant then starts from the same student weights and takes ``--steps`` optimizer steps on the
generalized JSD (beta 0.5) of that batch, with the optimizer the kit builds for it (HF Trainer's
own optimizer factory, fed by ``atlas_lib.training.loop.optimizer_args``):

- fp32-adamw: the kit's default, fp32 weights and torch AdamW (the reference);
- bf16-adamw: stock TRL's precision, bf16 weights and torch AdamW (round-to-nearest updates;
  stock's fused AdamW also rounds each update to the nearest bf16);
- bf16-adamw8bit-sr (seed 0 and 1): ``optimizer: adamw_8bit_bf16``, bf16 weights, torchao AdamW8bit,
  stochastic rounding; two seeds of the rounding give its own noise.

Printed per variant and learning rate: the loss at each step and after the last, the loss drop
as a share of the reference's, and how much of the reference's weight change the variant made:
``<dw, dw_ref> / |dw_ref|^2`` (1 = all of it, 0 = none) and ``|dw - dw_ref| / |dw_ref|``.
Peak RSS is not measured here (variants share one process): see ``train_step.py --variants``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = (("fp32-adamw", torch.float32, "adamw", 0), ("bf16-adamw", torch.bfloat16, "adamw", 0),
            ("bf16-adamw8bit-sr", torch.bfloat16, "adamw_8bit_bf16", 0),
            ("bf16-adamw8bit-sr", torch.bfloat16, "adamw_8bit_bf16", 1))


def fixed_batch(tok, batch: int):
    """Prompt + reference completion ids (left-padded) and the completion mask."""
    from atlas_lib.core import config
    from atlas_lib.core.paths import runs_root
    from atlas_lib.data import splits as data

    p = config.load("params/embedded.yaml")
    if (runs_root() / "embedded/data/manifest.json").exists():
        rows = data.load_prepared(p).train[:batch]
    else:
        rows = [{"question": f"Tom has {i} apples and buys {i + 3} more. How many apples?", "answer": str(2 * i + 3),
                 "solution": f"{i} + {i + 3} = {2 * i + 3}. Final Answer: {2 * i + 3}"} for i in range(batch)]
    seqs, masks = [], []
    for r in data.distill_view(rows, p.prompt):
        prompt = tok.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(r["messages"], tokenize=False)
        a, b = tok(prompt, add_special_tokens=False).input_ids, tok(full, add_special_tokens=False).input_ids
        seqs.append(b)
        masks.append([0] * len(a) + [1] * (len(b) - len(a)))
    width = max(map(len, seqs))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(s)) + s for s in seqs])
    att = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    comp = torch.tensor([[0] * (width - len(m)) + m for m in masks]).bool()
    return ids, att, comp


def _completion_logits(model, ids, att, comp) -> torch.Tensor:
    """Logits predicting each completion token, [N completion tokens, V] (the GKD trainer's
    ``logits_to_keep`` block, masked)."""
    keep = ids.shape[1] - int(comp.float().argmax(1).min()) + 1
    logits_B_K_V = model(input_ids=ids, attention_mask=att, logits_to_keep=keep).logits[:, :-1]
    return logits_B_K_V[comp[:, -(keep - 1):]]


def teacher_logits(teacher, ids, att, comp) -> torch.Tensor:
    """The frozen teacher's completion logits in float32, [N, V] (scored once per batch)."""
    with torch.no_grad():
        return _completion_logits(teacher, ids, att, comp).float()


def loss_fn(model, ids, att, comp, teacher_logits_N_V, beta: float = 0.5) -> torch.Tensor:
    from atlas_lib.methods.gkd.trainer import generalized_jsd

    return generalized_jsd(_completion_logits(model, ids, att, comp), teacher_logits_N_V, beta) / int(comp.sum())


def make_optimizer(model, choice: str, lr: float):
    from transformers import Trainer, TrainingArguments

    from atlas_lib.methods.gkd.config import GKDConfig
    from atlas_lib.training.loop import optimizer_args

    # adamw rows: torch's for-each AdamW (``adamw_torch``); the kit's default is HF's fused kernel,
    # the same arithmetic in one pass
    chosen = optimizer_args(GKDConfig(optimizer=choice)) or {"optim": "adamw_torch"}
    args = TrainingArguments(output_dir=str(ROOT / "runs/bench/tmp"), learning_rate=lr, use_cpu=True,
                             report_to="none", **chosen)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return cls(model.parameters(), **kwargs)


def main() -> int:
    from atlas_lib.core import models

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-5, 1e-6])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--student", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--teacher", default="qwen2.5-coder-1.5b-instruct")
    args = ap.parse_args()
    tok = models.load_tokenizer(args.student)
    ids, att, comp = fixed_batch(tok, args.batch)
    teacher = models.load_model(args.teacher, dtype=torch.bfloat16, device="cpu")[0]
    t_logits_N_V = teacher_logits(teacher, ids, att, comp)
    del teacher
    print(f"fixed batch: {args.batch} sequences, {ids.shape[1]} positions, {int(comp.sum())} completion tokens; "
          f"{args.steps} steps; torch {torch.__version__}")
    for lr in args.lr:
        ref_dw = None
        print(f"\nlr {lr:g}\n| variant | seed | loss per step | loss after | drop vs ref | dw along ref | |dw - ref| / |ref| |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for name, dtype, choice, seed in VARIANTS:
            torch.manual_seed(seed)
            model = models.load_model(args.student, dtype=dtype, device="cpu", for_training=True)[0].train()
            w0 = [p.detach().float().clone() for p in model.parameters()]
            opt = make_optimizer(model, choice, lr)
            losses = []
            for _ in range(args.steps):
                loss = loss_fn(model, ids, att, comp, t_logits_N_V)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
            with torch.no_grad():
                losses.append(float(loss_fn(model, ids, att, comp, t_logits_N_V)))
                dw = [p.detach().float() - w for p, w in zip(model.parameters(), w0, strict=True)]
            del model, opt, w0
            if ref_dw is None:
                ref_dw, ref_drop = dw, losses[0] - losses[-1]
            ref_sq = sum(float((r * r).sum()) for r in ref_dw)
            along = sum(float((d * r).sum()) for d, r in zip(dw, ref_dw, strict=True)) / ref_sq
            err = sum(float(((d - r) ** 2).sum()) for d, r in zip(dw, ref_dw, strict=True)) ** 0.5 / ref_sq ** 0.5
            drop = (losses[0] - losses[-1]) / ref_drop if ref_drop else float("nan")
            print(f"| {name} | {seed} | {' '.join(f'{x:.5f}' for x in losses[:-1])} | {losses[-1]:.5f} | "
                  f"{drop:.2f} | {along:.3f} | {err:.3f} |", flush=True)
            del dw
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
