"""The shared evaluator: batched greedy generation, one grader, and reverse KL to the teacher.

Used for the baseline rows, every evaluation point during training, and the final rows, so all
numbers in the report come from the same code. Correctness is only ever decided by
``atlas_lib.answers`` (the GRPO reward calls the same functions).
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
PREFIX_MIN_TOKENS = 16  # shorter shared prefixes are not worth a cache copy per batch
KL_MAX_BATCH = 4  # full-vocabulary fp32 logits (150k wide for Qwen) of two models: 8 x 193 rows was ~1.9 GB


@dataclass
class EvalResult:
    metrics: dict
    records: list[dict] = field(default_factory=list)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% for z=1.96) for k successes in n trials; sane at k=0 and k=n.

    ``n == 0`` carries no information and gives the whole range ``(0.0, 1.0)``.
    """
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@contextmanager
def _eval_mode(*models) -> Iterator[None]:
    """Eval mode inside, each model's own train/eval mode restored after (we run mid-training)."""
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def eos_token_ids(model, tokenizer) -> list[int]:
    """The generation config's EOS ids (an int or a list) plus the tokenizer's EOS."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("no EOS token: set tokenizer.eos_token or model.generation_config.eos_token_id")
    return ids


def greedy_kwargs(model, tokenizer, max_new_tokens: int) -> dict:
    """``model.generate`` arguments for plain greedy decoding with the KV cache.

    Values left unset are filled from ``model.generation_config``; an instruct model's shipped
    ``repetition_penalty`` or ``no_repeat_ngram_size`` would silently change "greedy", so they are
    pinned to neutral values here (the bench's one-at-a-time loop uses the same arguments).
    """
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    return dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True, eos_token_id=eos,
                pad_token_id=pad, repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0,
                temperature=1.0, top_p=1.0, top_k=50)


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered prompts. Chat-template output already carries its special tokens;
    plain-text prompts (base models) get the tokenizer's own (e.g. BOS)."""
    ids = tokenizer(list(prompts), add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise ValueError(f"prompts {empty[:5]} encode to zero tokens; every prompt needs at least one token")
    return ids


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids_B_T = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn_B_T = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids_B_T[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        attn_B_T[r, width - len(s):] = 1
    return ids_B_T, attn_B_T


def shared_prefix(models: Sequence, encoded: list[list[int]]) -> list[int]:
    """The token prefix all prompts share (system turn + few-shot examples: over half of each
    prompt here), so its keys/values are computed once, not once per prompt; ``[]`` when shorter
    than ``PREFIX_MIN_TOKENS`` or unsafe. Causal attention makes the prefix's keys/values
    independent of what follows, so reusing them is exact. Sliding-window layers are left out:
    padding placed after the prefix would count towards their window."""
    for model in models:
        layer_types = getattr(model.config, "layer_types", None) or ()
        if any(t != "full_attention" for t in layer_types) or (
                not layer_types and getattr(model.config, "sliding_window", None)):
            return []
    if len(encoded) < 2:
        return []
    prefix = os.path.commonprefix(encoded)[:min(map(len, encoded)) - 1]  # every prompt keeps >= 1 token
    return prefix if len(prefix) >= PREFIX_MIN_TOKENS else []


def _prefill(model, prefix: list[int]):
    """The prefix's cache, or None (no prefix, or a cache type that cannot be repeated over a batch)."""
    if not prefix:
        return None
    out = model(input_ids=torch.tensor([prefix], device=_device(model)), use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return cache if hasattr(cache, "batch_repeat_interleave") else None


def _batch_inputs(model, seqs: list[list[int]], pad_id: int, prefix: list[int], cache) -> dict:
    """``[prefix][left padding][rest]`` ids and mask (full width) plus a copy of the prefix cache
    repeated over the batch. Positions are taken from the mask (as ``generate`` does), so the
    padding shifts nothing and results equal unpadded one-at-a-time runs."""
    ids_B_T, attn_B_T = _left_pad([s[len(prefix):] for s in seqs], pad_id)
    extra = {}
    if prefix:
        b = len(seqs)
        ids_B_T = torch.cat([torch.tensor([prefix] * b), ids_B_T], 1)
        attn_B_T = torch.cat([torch.ones(b, len(prefix), dtype=torch.long), attn_B_T], 1)
        arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        extra[arg] = copy.deepcopy(cache)  # the model appends to the cache it is given
        extra[arg].batch_repeat_interleave(b)
    dev = _device(model)
    return {"input_ids": ids_B_T.to(dev), "attention_mask": attn_B_T.to(dev), **extra}


@torch.inference_mode()
def generate_greedy(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                    desc: str = "eval", prefix_cache: bool = True) -> list[dict]:
    """Greedy completions: left padding, length-sorted batches, KV cache, stop at EOS.

    Returns, in the input order, dicts with ``prompt_ids`` and ``completion_ids`` (unpadded; the
    completion up to and including EOS when one was produced), ``text`` (decoded without special
    tokens), ``n_tokens`` (generated, EOS included), ``truncated`` (hit ``max_new_tokens`` with no
    EOS) and ``prompt_tokens``. ``prefix_cache``: encode the prompts' :func:`shared_prefix` once.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"generate_greedy: batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) "
                         "must be >= 1")
    encoded = encode_prompts(tokenizer, prompts) if prompts else []
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths -> little padding
    kwargs = greedy_kwargs(model, tokenizer, max_new_tokens)
    eos = set(kwargs["eos_token_id"])
    out: list[dict] = [{}] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, unit="ex", leave=False)
    with _eval_mode(model):
        prefix = shared_prefix([model], encoded) if prefix_cache else []
        cache = _prefill(model, prefix)
        prefix = prefix if cache is not None else []
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            inputs = _batch_inputs(model, [encoded[i] for i in idx], kwargs["pad_token_id"], prefix, cache)
            gen_B_T = model.generate(**inputs, **kwargs)
            for row, i in enumerate(idx):
                comp = gen_B_T[row, inputs["input_ids"].shape[1]:].tolist()
                stop = next((j for j, t in enumerate(comp) if t in eos), None)
                comp = comp[:stop + 1] if stop is not None else comp  # rows that ended early are padded
                out[i] = {"prompt_ids": encoded[i], "completion_ids": comp, "prompt_tokens": len(encoded[i]),
                          "text": tokenizer.decode(comp, skip_special_tokens=True), "n_tokens": len(comp),
                          "truncated": stop is None}
            bar.update(len(idx))
    bar.close()
    return out


def reverse_kl_per_token(student_logits_B_T_V: torch.Tensor, teacher_logits_B_T_V: torch.Tensor,
                         mask_B_T: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
    """``kl_B_T`` = KL(student || teacher) = sum_v p_s (log p_s - log p_t), float32, 0 where masked.

    ``vocab_size`` (pass ``len(tokenizer)``) cuts both to the tokenizer's real tokens. Checkpoints of
    one family pad their embedding matrices to different sizes (Qwen2.5: 151936 rows for 151665
    tokens); the padding rows are no token of the tokenizer, never appear in text and hold
    untrained logits, so they are left out of both distributions and the same index means the same
    token in both. Without it the two vocabulary sizes must be equal.
    """
    vs, vt = student_logits_B_T_V.shape[-1], teacher_logits_B_T_V.shape[-1]
    v = vocab_size if vocab_size is not None else vs
    if v > min(vs, vt) or (vocab_size is None and vs != vt):
        raise ValueError(f"reverse KL: student logits have {vs} entries, teacher {vt}, vocab_size={vocab_size}; "
                         "pass vocab_size=len(tokenizer) when the matrices differ only by padding rows")
    log_s = F.log_softmax(student_logits_B_T_V[..., :v].float(), dim=-1)
    log_t = F.log_softmax(teacher_logits_B_T_V[..., :v].float().to(log_s.device), dim=-1)
    kl_B_T = (log_s.exp() * (log_s - log_t)).sum(-1)
    return torch.where(mask_B_T.to(kl_B_T.device).bool(), kl_B_T, torch.zeros_like(kl_B_T))  # masked NaN stays out


def _last_logits(model, inputs: dict, n_prefix: int, keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions of a :func:`_batch_inputs` batch (``logits_to_keep``
    when the model takes it, so prompt positions never materialise a vocabulary-wide row)."""
    pos_B_T = (inputs["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    kwargs = {**inputs, "input_ids": inputs["input_ids"][:, n_prefix:], "position_ids": pos_B_T[:, n_prefix:],
              "use_cache": n_prefix > 0}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = keep
    return model(**kwargs).logits[:, -keep:]


@torch.inference_mode()
def mean_reverse_kl(student, teacher, generations: list[dict], *, batch_size: int,
                    vocab_size: int | None = None) -> list[float | None]:
    """Per example: mean reverse KL over every position that predicts a generated token (the last
    included), with the teacher scoring exactly the student's ids (``prompt_ids + completion_ids``).

    Batches are laid out as in generation (shared prefix cached, left padding, positions from the
    mask), so all completions end in the same column and only the last ``max completion + 1``
    logits are computed. ``None`` for an empty completion.
    """
    out: list[float | None] = []
    bs = max(1, batch_size)
    with _eval_mode(student, teacher):
        prefix = shared_prefix([student, teacher], [list(g["prompt_ids"]) for g in generations])
        caches = {id(m): _prefill(m, prefix) for m in (student, teacher)}
        prefix = prefix if None not in caches.values() else []
        for start in range(0, len(generations), bs):
            chunk = generations[start:start + bs]
            seqs = [list(g["prompt_ids"]) + list(g["completion_ids"]) for g in chunk]
            n_comp = [len(g["completion_ids"]) for g in chunk]
            c_max = max(n_comp)
            s_B_C_V, t_B_C_V = (  # column j predicts token j+1
                _last_logits(m, _batch_inputs(m, seqs, 0, prefix, caches[id(m)]), len(prefix), c_max + 1)[:, :-1]
                for m in (student, teacher))
            for r, c in enumerate(n_comp):  # one row at a time: float32 copies of 150k-wide rows add up
                if c == 0:
                    out.append(None)
                    continue
                sl = slice(c_max - c, c_max)
                kl_1_C = reverse_kl_per_token(s_B_C_V[r:r + 1, sl], t_B_C_V[r:r + 1, sl], torch.ones(1, c),
                                              vocab_size)
                out.append(float(kl_1_C.mean()))
    return out


def same_tokenizer(tok_a, tok_b) -> bool:
    """Same token -> id mapping and the same EOS/BOS, so distributions compare index by index."""
    if tok_a is tok_b:
        return True
    return (len(tok_a) == len(tok_b) and tok_a.eos_token == tok_b.eos_token and tok_a.bos_token == tok_b.bos_token
            and tok_a.get_vocab() == tok_b.get_vocab())


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _finite(records: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]


def aggregate(records: list[dict]) -> dict:
    """The record-level metrics, recomputable by any reader of ``<stem>.records.jsonl``."""
    n = len(records)
    k = sum(bool(r["correct"]) for r in records)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "n_correct": k, "accuracy": k / n if n else None, "ci_low": lo, "ci_high": hi,
            "avg_generated_tokens": _mean([r["generated_tokens"] for r in records]),
            "avg_prompt_tokens": _mean([r["prompt_tokens"] for r in records]),
            "truncation_rate": _mean([float(bool(r["truncated"])) for r in records]),
            "format_rate": _mean([float(r["extracted"] is not None) for r in records]),
            "mean_reverse_kl": _mean(_finite(records, "reverse_kl")),
            "aligned_divergence": _mean(_finite(records, "aligned_divergence"))}


def evaluate(model, tokenizer, examples: list[dict], *, prompt_cfg, max_new_tokens: int, batch_size: int,
             shots=None, teacher=None, teacher_tokenizer=None,
             divergence_fn: Callable[[list[dict]], list[float]] | None = None, desc: str = "eval") -> EvalResult:
    """Greedy-evaluate ``model`` on ``examples`` (records with ``id``, ``question``, ``answer``).

    ``teacher`` adds the per-example reverse KL when it shares the student's tokenizer
    (``teacher_tokenizer`` defaults to the student's); otherwise ``kl_note`` says why there is none.
    ``divergence_fn(records) -> list[float]`` adds ``aligned_divergence`` (cross-tokenizer stage).
    """
    if not examples:
        raise ValueError("evaluate: no examples; check evaluation.limit and the prepared eval split")
    t0 = time.monotonic()
    messages = [build_messages(ex["question"], prompt_cfg, shots or ()) for ex in examples]
    prompts = [render_prompt(tokenizer, m) for m in messages]
    gens = generate_greedy(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc)
    gen_seconds = time.monotonic() - t0
    records = []
    for ex, prompt, msgs, g in zip(examples, prompts, messages, gens, strict=True):
        ref = str(ex["answer"])
        records.append({"id": ex["id"], "prompt": prompt, "messages": msgs, "completion": g["text"],
                        "extracted": answers.extract_answer(g["text"]), "reference": ref,
                        "correct": answers.is_correct(g["text"], ref), "generated_tokens": g["n_tokens"],
                        "prompt_tokens": g["prompt_tokens"], "truncated": g["truncated"], "reverse_kl": None})
    kl_note, t_kl = None, time.monotonic()
    if teacher is not None:
        if same_tokenizer(tokenizer, teacher_tokenizer if teacher_tokenizer is not None else tokenizer):
            kls = mean_reverse_kl(model, teacher, gens, batch_size=min(batch_size, KL_MAX_BATCH),
                                  vocab_size=len(tokenizer))
            for r, kl in zip(records, kls, strict=True):
                r["reverse_kl"] = kl
        else:
            kl_note = KL_UNDEFINED
    kl_seconds = time.monotonic() - t_kl
    if divergence_fn is not None:
        for r, d in zip(records, divergence_fn(records), strict=True):
            r["aligned_divergence"] = float(d)
    metrics = aggregate(records)
    n_gen = sum(g["n_tokens"] for g in gens)
    metrics.update(kl_note=kl_note, wall_seconds=round(time.monotonic() - t0, 3),
                   generation_seconds=round(gen_seconds, 3), kl_seconds=round(kl_seconds, 3),
                   generated_tokens_per_second=n_gen / gen_seconds if gen_seconds > 0 else None)
    return EvalResult(metrics, records)


def save_eval(result: EvalResult, directory: Path, stem: str) -> None:
    """``<stem>.json`` (metrics) and ``<stem>.records.jsonl`` (per example; the chat messages are
    left out, ``prompt`` holds the rendered text), each written atomically."""
    directory = Path(directory)
    atomic_write_json(directory / f"{stem}.json", result.metrics)
    slim = [{k: str(v) if isinstance(v, float) and not math.isfinite(v) else v  # NaN is not JSON (as rundir)
             for k, v in r.items() if k != "messages"} for r in result.records]
    atomic_write_text(directory / f"{stem}.records.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in slim))


def load_eval(directory: Path, stem: str) -> EvalResult:
    """Read back what :func:`save_eval` wrote."""
    lines = (Path(directory) / f"{stem}.records.jsonl").read_text().splitlines()
    return EvalResult(json.loads((Path(directory) / f"{stem}.json").read_text()), [json.loads(x) for x in lines if x])
