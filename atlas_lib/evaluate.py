"""The shared evaluator: batched greedy generation, one grader, and reverse KL to the teacher.

Used for the baseline rows, every evaluation point during training, and the final rows, so all
numbers in the report come from the same code. Correctness is only ever decided by
``atlas_lib.answers`` (the GRPO reward calls the same function).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from atlas_lib import answers
from atlas_lib.prompts import build_messages, has_chat_template, render_prompt
from atlas_lib.rundir import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)
KL_UNDEFINED = "reverse KL undefined: student and teacher tokenizers differ (see aligned divergence)"


@dataclass
class EvalResult:
    metrics: dict
    records: list[dict] = field(default_factory=list)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials (well-behaved at 0 and n)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.inference_mode()
def generate_greedy(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                    desc: str = "eval") -> list[dict]:
    """Greedy completions: left padding, length-sorted batches, KV cache, stop at EOS.

    Returns, in the input order, dicts with ``prompt_ids``, ``completion_ids`` (up to and including
    EOS), ``text``, ``n_tokens``, ``truncated`` and ``prompt_tokens``.
    """
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    special = not has_chat_template(tokenizer)  # chat templates already carry their special tokens
    encoded = [tokenizer(p, add_special_tokens=special)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths -> little padding
    eos = _eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    out: list[dict | None] = [None] * len(prompts)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            idx = order[start:start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt").to(device)
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id, use_cache=True, temperature=None,
                                 top_p=None, top_k=None)
            width = batch["input_ids"].shape[1]
            for row, i in enumerate(idx):
                comp = gen[row, width:].tolist()
                stop = next((j for j, t in enumerate(comp) if t in eos), None)
                comp = comp[:stop + 1] if stop is not None else comp
                out[i] = {"prompt_ids": encoded[i], "completion_ids": comp, "prompt_tokens": len(encoded[i]),
                          "text": tokenizer.decode(comp, skip_special_tokens=True), "n_tokens": len(comp),
                          "truncated": stop is None and len(comp) >= max_new_tokens}
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out  # type: ignore[return-value]


def reverse_kl_per_token(student_logits_B_T_V: torch.Tensor, teacher_logits_B_T_V: torch.Tensor,
                         mask_B_T: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher) over the full vocabulary at each position, float32, 0 where masked."""
    s = F.log_softmax(student_logits_B_T_V.float(), dim=-1)
    t = F.log_softmax(teacher_logits_B_T_V.float(), dim=-1)
    kl_B_T = (s.exp() * (s - t)).sum(-1)
    return kl_B_T * mask_B_T.to(kl_B_T.dtype)


@torch.inference_mode()
def mean_reverse_kl(student, teacher, generations: list[dict], *, batch_size: int, vocab: int | None = None) -> list[float]:
    """Per example: mean reverse KL at every position predicting a generated token (the last included).

    The teacher scores exactly the student's ids (prompt + completion). Embedding matrices padded
    to different sizes share the tokenizer's first ``vocab`` rows; the padding rows are never
    produced, so both distributions are taken over those ``vocab`` entries.
    """
    s_dev, t_dev = next(student.parameters()).device, next(teacher.parameters()).device
    out = []
    for start in range(0, len(generations), batch_size):
        chunk = generations[start:start + batch_size]
        seqs = [g["prompt_ids"] + g["completion_ids"] for g in chunk]
        width = max(len(s) for s in seqs)
        ids_B_T = torch.zeros(len(seqs), width, dtype=torch.long)
        attn_B_T = torch.zeros(len(seqs), width, dtype=torch.long)
        mask_B_T = torch.zeros(len(seqs), width - 1)
        for r, (g, s) in enumerate(zip(chunk, seqs, strict=True)):
            ids_B_T[r, :len(s)], attn_B_T[r, :len(s)] = torch.tensor(s), 1
            p = len(g["prompt_ids"])
            mask_B_T[r, p - 1:p - 1 + len(g["completion_ids"])] = 1  # logits at i predict token i+1
        s_logits = student(input_ids=ids_B_T.to(s_dev), attention_mask=attn_B_T.to(s_dev)).logits[:, :-1]
        t_logits = teacher(input_ids=ids_B_T.to(t_dev), attention_mask=attn_B_T.to(t_dev)).logits[:, :-1]
        v = vocab or min(s_logits.shape[-1], t_logits.shape[-1])
        kl = reverse_kl_per_token(s_logits[..., :v], t_logits[..., :v].to(s_logits.device), mask_B_T.to(s_dev))
        n = mask_B_T.sum(-1).to(s_dev)
        out += [float(x) if c > 0 else float("nan") for x, c in zip((kl.sum(-1) / n.clamp_min(1)).tolist(),
                                                                     n.tolist(), strict=True)]
    return out


def same_tokenizer(tok_a, tok_b) -> bool:
    """Same vocabulary mapping and special tokens (so distributions are comparable index by index)."""
    if tok_a is tok_b:
        return True
    return (len(tok_a) == len(tok_b) and tok_a.eos_token == tok_b.eos_token
            and tok_a.get_vocab() == tok_b.get_vocab())


def aggregate(records: list[dict]) -> dict:
    """Aggregate metrics from per-example records (so any reader can recompute them)."""
    n = len(records)
    k = sum(bool(r["correct"]) for r in records)
    lo, hi = wilson_interval(k, n)
    kls = [r["reverse_kl"] for r in records if isinstance(r.get("reverse_kl"), float) and math.isfinite(r["reverse_kl"])]
    divs = [r["aligned_divergence"] for r in records if isinstance(r.get("aligned_divergence"), float)]

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    return {"n": n, "n_correct": k, "accuracy": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi,
            "avg_generated_tokens": mean([r["generated_tokens"] for r in records]),
            "avg_prompt_tokens": mean([r["prompt_tokens"] for r in records]),
            "truncation_rate": mean([float(r["truncated"]) for r in records]),
            "format_rate": mean([float(r["extracted"] is not None) for r in records]),
            "mean_reverse_kl": mean(kls), "aligned_divergence": mean(divs)}


def evaluate(model, tokenizer, examples: list[dict], *, prompt_cfg, max_new_tokens: int, batch_size: int,
             shots=None, teacher=None, teacher_tokenizer=None, divergence_fn: Callable | None = None,
             desc: str = "eval") -> EvalResult:
    """Greedy-evaluate ``model`` on ``examples`` (records with ``id``, ``question``, ``answer``)."""
    t0 = time.monotonic()
    messages = [build_messages(ex["question"], prompt_cfg, shots or ()) for ex in examples]
    prompts = [render_prompt(tokenizer, m) for m in messages]
    gens = generate_greedy(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc)
    records = []
    for ex, prompt, msgs, g in zip(examples, prompts, messages, gens, strict=True):
        records.append({"id": ex["id"], "prompt": prompt, "messages": msgs, "completion": g["text"],
                        "extracted": answers.extract_answer(g["text"]), "reference": ex["answer"],
                        "correct": answers.is_correct(g["text"], ex["answer"]),
                        "generated_tokens": g["n_tokens"], "prompt_tokens": g["prompt_tokens"],
                        "truncated": g["truncated"], "reverse_kl": None})
    kl_note = None
    if teacher is not None:
        if same_tokenizer(tokenizer, teacher_tokenizer or tokenizer):
            kls = mean_reverse_kl(model, teacher, gens, batch_size=max(1, batch_size // 2), vocab=len(tokenizer))
            for r, kl in zip(records, kls, strict=True):
                r["reverse_kl"] = kl
        else:
            kl_note = KL_UNDEFINED
    if divergence_fn is not None:
        for r, d in zip(records, divergence_fn(records), strict=True):
            r["aligned_divergence"] = float(d)
    metrics = aggregate(records)
    wall = time.monotonic() - t0
    metrics.update(kl_note=kl_note, wall_seconds=round(wall, 2),
                   generated_tokens_per_second=sum(g["n_tokens"] for g in gens) / wall if wall > 0 else None)
    return EvalResult(metrics, records)


def save_eval(result: EvalResult, directory: Path, stem: str) -> None:
    """``<stem>.json`` (metrics) and ``<stem>.records.jsonl`` (per example), each written atomically."""
    directory = Path(directory)
    atomic_write_json(directory / f"{stem}.json", result.metrics)
    slim = [{k: v for k, v in r.items() if k != "messages"} for r in result.records]
    atomic_write_text(directory / f"{stem}.records.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in slim))
