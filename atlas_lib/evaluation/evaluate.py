"""The shared evaluator: greedy completions (decoded by :mod:`atlas_lib.evaluation.generation`), one grader,
and reverse KL to the teacher.

Used for the baseline rows, every evaluation point during training, and the final rows, so all
numbers in the report come from the same code. Correctness is only ever decided by
``atlas_lib.data.answers`` (the GRPO reward calls the same functions).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from atlas_lib.core.files import atomic_write_json, atomic_write_text
from atlas_lib.core.runtime import heap_for_large_buffers
from atlas_lib.data import answers
from atlas_lib.data.prompts import build_messages, render_prompt
from atlas_lib.evaluation import logratio
from atlas_lib.evaluation.divergence import Objective
from atlas_lib.evaluation.forward import (
    batch_inputs,
    eval_mode,
    forward_batch,
    prefill,
    shared_prefix,
)
from atlas_lib.evaluation.generation import generate_greedy

log = logging.getLogger(__name__)
KL_UNDEFINED = "reverse KL undefined: student and teacher tokenizers differ (see aligned divergence)"
KL_MAX_BATCH = 4  # rows scored together: each holds full-vocabulary fp32 logits of two models (B x T x V)


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


def mean_reverse_kl(student, teacher, generations: list[dict], *, batch_size: int,
                    vocab_size: int | None = None) -> list[float | None]:
    """Per example: mean reverse KL over every position that predicts a generated token (the last
    included); see :func:`reverse_kl_tokens`. ``None`` for an empty completion."""
    return [None if kl is None else float(sum(kl) / len(kl))
            for kl in reverse_kl_tokens(student, teacher, generations, batch_size=batch_size, vocab_size=vocab_size)]


def token_pieces(tokenizer, completion_ids: list[int]) -> list[str]:
    """The text each completion token adds (incremental decoding, so a character split across
    byte-level tokens lands on the token that completes it; special tokens add nothing)."""
    pieces, done = [], ""
    for i in range(len(completion_ids)):
        text = tokenizer.decode(completion_ids[: i + 1], skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the token that completes it
            pieces.append("")
            continue
        pieces.append(text[len(done):])
        done = text
    return pieces


def reverse_kl_tokens(student, teacher, generations: list[dict], *, batch_size: int,
                      vocab_size: int | None = None) -> list[list[float] | None]:
    """Per example: the reverse KL at every position that predicts a generated token (see
    :func:`score_completions`); ``None`` for an empty completion."""
    return [None if s is None else s["kl"] for s in score_completions(student, teacher, generations,
                                                                      batch_size=batch_size, vocab_size=vocab_size)]


@torch.inference_mode()
def score_completions(student, teacher, generations: list[dict], *, batch_size: int,
                      vocab_size: int | None = None, objectives: Sequence[Objective] = ()) -> list[dict | None]:
    """Per example: ``kl``, the reverse KL ``KL(p_student || p_teacher)`` at every position that predicts
    a generated token (the last included), with the teacher scoring exactly the student's ids
    (``prompt_ids + completion_ids``): the per-token quantity GKD minimises at ``beta`` = 1; and
    ``logp_student`` / ``logp_teacher``, each model's log-probability of the completion's tokens,
    the stop token included when the completion stopped (:mod:`atlas_lib.evaluation.logratio`); with ``objectives``,
    ``objective_by_beta``: per objective's ``key``, a same-tokenizer distilling method's own loss
    (:class:`atlas_lib.evaluation.divergence.Objective`) averaged over the same positions, i.e. that
    method's training loss on this answer.

    Batches are laid out as in generation (shared prefix cached, left padding, positions from the
    mask), so all completions end in the same column and only the last ``max completion + 1``
    logits are computed. ``None`` for an empty completion.
    """
    out: list[dict | None] = [None] * len(generations)
    bs = max(1, batch_size)
    # Rows batched by length, so a short completion is not padded to a long neighbour's length
    # (greedy answers vary from ~10 to the full budget); results go back in the callers' order.
    order = sorted(range(len(generations)),
                   key=lambda i: len(generations[i]["prompt_ids"]) + len(generations[i]["completion_ids"]))
    with eval_mode(student, teacher):
        prefix = shared_prefix([student, teacher], [list(g["prompt_ids"]) for g in generations])
        caches = {id(m): prefill(m, prefix) for m in (student, teacher)}
        prefix = prefix if None not in caches.values() else []
        for start in range(0, len(order), bs):
            rows = order[start:start + bs]
            chunk = [generations[i] for i in rows]
            seqs = [list(g["prompt_ids"]) + list(g["completion_ids"]) for g in chunk]
            n_comp = [len(g["completion_ids"]) for g in chunk]
            c_max = max(n_comp)
            if c_max == 0:
                continue
            s_B_C_V, t_B_C_V = (  # column j predicts token j+1
                forward_batch(m, batch_inputs(m, seqs, 0, prefix, caches[id(m)]), len(prefix), keep=c_max + 1,
                              use_cache=bool(prefix)).logits[:, -(c_max + 1):-1]
                for m in (student, teacher))
            for r, (i, c) in enumerate(zip(rows, n_comp, strict=True)):  # one row at a time: float32
                if c == 0:  # copies of 150k-wide rows add up
                    continue
                sl = slice(c_max - c, c_max)
                kl_1_C = reverse_kl_per_token(s_B_C_V[r:r + 1, sl], t_B_C_V[r:r + 1, sl], torch.ones(1, c),
                                              vocab_size)
                ids_1_C = torch.tensor([chunk[r]["completion_ids"]])
                # every token, the stop token of a finished answer included (logratio.VERSION 2): a loop
                # cut at the budget has none, so it no longer scores like an answer that stopped
                text_1_C = torch.ones(1, c, dtype=torch.bool)
                lp_s, lp_t = (float(logratio.sequence_logprob_B(x[r:r + 1, sl], ids_1_C, text_1_C, vocab_size)[0])
                              for x in (s_B_C_V, t_B_C_V))
                out[i] = {"kl": [float(x) for x in kl_1_C[0]], "logp_student": lp_s, "logp_teacher": lp_t}
                if objectives:
                    v = vocab_size or min(s_B_C_V.shape[-1], t_B_C_V.shape[-1])
                    s_C_V, t_C_V = s_B_C_V[r, sl, :v], t_B_C_V[r, sl, :v].to(s_B_C_V.device)
                    out[i]["objective_by_beta"] = {o.key: o.per_answer(s_C_V, t_C_V) for o in objectives}
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
            "aligned_divergence": _mean(_finite(records, "aligned_divergence")),
            "mean_logratio_per_char": _mean(_finite(records, "logratio_per_char")),
            "logratio_version": logratio_version(records),
            "heldout_objective": heldout_objective(records),
            "heldout_objective_by_beta": {b: heldout_objective([{"objective": r["objective_by_beta"].get(b),
                                                                 "objective_units": r.get("objective_units")}
                                                                for r in records if r.get("objective_by_beta")])
                                          for b in sorted({b for r in records for b in r.get("objective_by_beta") or {}})}}


def logratio_version(records: list[dict]) -> int | None:
    """The scoring rule of the records' log-ratios (:data:`atlas_lib.evaluation.logratio.VERSION`): the
    oldest among them (a record without one was scored under rule 1), so a mix is never passed off as
    the current rule; None when no record has a log-ratio."""
    versions = [int(r.get("logratio_version") or 1) for r in records
                if isinstance(r.get("logratio_per_char"), (int, float))]
    return min(versions) if versions else None


def heldout_objective(records: list[dict]) -> float | None:
    """The method's own training loss on these answers: each record's ``objective`` weighted by its
    ``objective_units`` (the positions or spans its loss averages over), as the loss of one batch
    holding all of them; None when no record carries it."""
    pairs = [(float(r["objective"]), r.get("objective_units") or 1) for r in records
             if isinstance(r.get("objective"), (int, float)) and math.isfinite(r["objective"])]
    units = sum(n for _, n in pairs)
    return sum(x * n for x, n in pairs) / units if units else None


def _graded(ex: dict, prompt: str, msgs: list, g: dict) -> dict:
    """One evaluation record: the completion, its graded answer and its token counts."""
    ref = str(ex["answer"])
    return {"id": ex["id"], "prompt": prompt, "messages": msgs, "completion": g["text"],
            # a completion cut at the budget is graded as cut (the grader's module doc)
            "extracted": answers.extract_answer(g["text"], g["truncated"]), "reference": ref,
            "correct": answers.is_correct(g["text"], ref, g["truncated"]), "generated_tokens": g["n_tokens"],
            "prompt_tokens": g["prompt_tokens"], "truncated": g["truncated"], "reverse_kl": None}


def _add_teacher_scores(r: dict, g: dict, sc: dict | None, tokenizer, objective: Objective | None) -> None:
    """Put the teacher's scores of one completion on its record: the mean reverse KL, the log-ratio per
    character, each asked objective's score (``objective``: the method's own) and the per-token KL."""
    kl = None if sc is None else sc["kl"]
    r["reverse_kl"] = None if kl is None else float(sum(kl) / len(kl))
    if sc is None:
        return
    r["logratio_per_char"] = logratio.per_char(sc["logp_student"], sc["logp_teacher"], g["text"])
    r["logratio_version"] = logratio.VERSION
    if "objective_by_beta" in sc:
        r["objective_by_beta"], r["objective_units"] = sc["objective_by_beta"], len(sc["kl"])
        if objective is not None:
            r["objective"] = sc["objective_by_beta"][objective.key]
    if kl is not None:  # the per-problem page shades each token by it (report.problems)
        r["token_kl"] = [[piece, round(x, 3)] for piece, x in
                         zip(token_pieces(tokenizer, g["completion_ids"]), kl, strict=True)]


def evaluate(model, tokenizer, examples: list[dict], *, prompt_cfg, max_new_tokens: int, batch_size: int,
             teacher=None, teacher_tokenizer=None,
             divergence_fn: Callable[[list[dict]], list[float]] | None = None, desc: str = "eval",
             objectives: Sequence[Objective] = (), objective: Objective | None = None) -> EvalResult:
    """Greedy-evaluate ``model`` on ``examples`` (records with ``id``, ``question``, ``answer``).

    ``teacher`` adds the per-example reverse KL when it shares the student's tokenizer
    (``teacher_tokenizer`` defaults to the student's); otherwise ``kl_note`` says why there is none.
    ``divergence_fn(records) -> list[float]`` adds ``aligned_divergence`` (cross-tokenizer stage).
    With the teacher, ``objectives`` adds each answer's score under each (``objective_by_beta``, by
    key) and ``objective`` (scored too) makes its score the record's ``objective``: the evaluated
    method's own loss on its answer.
    """
    if not examples:
        raise ValueError("evaluate: no examples; check evaluation.limit and the prepared eval split")
    t0 = time.monotonic()
    messages = [build_messages(ex["question"], prompt_cfg) for ex in examples]
    prompts = [render_prompt(tokenizer, m) for m in messages]
    gens = generate_greedy(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc)
    gen_seconds = time.monotonic() - t0
    records = [_graded(ex, prompt, msgs, g) for ex, prompt, msgs, g in zip(examples, prompts, messages, gens, strict=True)]
    kl_note, t_kl = None, time.monotonic()
    if teacher is not None:
        if same_tokenizer(tokenizer, teacher_tokenizer if teacher_tokenizer is not None else tokenizer):
            asked = tuple({o.key: o for o in [*objectives, *([] if objective is None else [objective])]}.values())
            with heap_for_large_buffers():  # the teacher scores prompt + completion: prefill-sized buffers
                scored = score_completions(model, teacher, gens, batch_size=min(batch_size, KL_MAX_BATCH),
                                           vocab_size=len(tokenizer), objectives=asked)
            for r, g, sc in zip(records, gens, scored, strict=True):
                _add_teacher_scores(r, g, sc, tokenizer, objective)
        else:
            kl_note = KL_UNDEFINED
    kl_seconds = time.monotonic() - t_kl
    if divergence_fn is not None:  # a float (aligned divergence) or a dict of record fields per record
        for r, d in zip(records, divergence_fn(records), strict=True):
            r.update(d if isinstance(d, dict) else {"aligned_divergence": float(d)})
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
