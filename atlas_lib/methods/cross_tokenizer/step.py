"""One cross-tokenizer distillation step (sample, align, score, loss) and the aligned span
divergence the evaluator reports; the objective itself is :mod:`atlas_lib.methods.cross_tokenizer.objective`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import torch
from transformers import GenerationConfig
from trl.experimental.utils import is_byte_level_tokenizer

from atlas_lib.data.prompts import render_prompt
from atlas_lib.evaluation import logratio
from atlas_lib.evaluation.forward import (
    completion_logits,
    encode_prompts,
    eos_token_ids,
    eval_mode,
    left_pad,
    pad_token,
    prefix_cache,
)
from atlas_lib.methods.cross_tokenizer.alignment import (
    align_ends,
    align_one_to_one,
    encode_with_completion,
    ends_from_ids,
    tokenizer_kind,
)
from atlas_lib.methods.cross_tokenizer.objective import aligned_divergence, aligned_loss
from atlas_lib.methods.cross_tokenizer.vocab_map import build_vocab_map
from atlas_lib.training.finite import NonFiniteError

log = logging.getLogger(__name__)
_CONTEXT_TOKENS = 4  # prompt tokens decoded before a completion so its first token reads in context


def gold_supported(student_tok, teacher_tok) -> tuple[bool, str]:
    """Whether TRL GOLD's cross-tokenizer ULD (``use_extended_uld=True``) accepts this pair, and why."""
    for role, tok in (("student", student_tok), ("teacher", teacher_tok)):
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None:
            return False, f"the {role} tokenizer is not a fast tokenizer (GOLD needs byte offsets)"
        if not is_byte_level_tokenizer(backend):
            return False, (f"the {role} tokenizer is {tokenizer_kind(tok)}, not ByteLevel BPE "
                           "(trl.experimental.utils.encode_with_byte_offsets raises NotImplementedError)")
    return True, "both tokenizers are ByteLevel BPE"


# ---- batching: completions left-padded so that one logits_to_keep covers every row -------------



def _sample(student, tok, prompt_ids: list[list[int]], cfg, eos: list[int]) -> list[list[int]]:
    """On-policy completions (ids up to and including the first EOS), pure temperature sampling."""
    device = next(student.parameters()).device
    width = max(len(p) for p in prompt_ids)
    ids = left_pad(prompt_ids, pad_token(tok, eos), width, device)
    mask = left_pad([[1] * len(p) for p in prompt_ids], 0, width, device)
    # top_k/top_p/repetition_penalty pinned: a model's generation_config defaults would skew the samples
    gen = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0,
                           repetition_penalty=1.0, max_new_tokens=cfg.max_completion_length, eos_token_id=eos,
                           pad_token_id=pad_token(tok, eos), use_cache=True)
    with eval_mode(student), torch.no_grad():
        out = student.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
    rows = []
    for row in out[:, width:].tolist():
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        rows.append(row[:stop + 1] if stop is not None else row)
    return rows


def _score(student, s_tok, teacher, t_tok, s_seqs, s_comp, t_seqs, t_comp, aligns, vmap, *, beta: float,
           grad: bool, s_prefix=([], None), t_prefix=([], None)) -> tuple[torch.Tensor, dict, torch.Tensor, float, float]:
    """Teacher forward (no grad, eval mode), student forward, loss; plus the per-row divergence.
    ``s_prefix`` / ``t_prefix``: :func:`prefix_cache` of each side's prompts (the student's only when
    ``grad`` is off)."""
    device = next(student.parameters()).device
    s_spans = [a.span_index("student", len(c)) for a, c in zip(aligns, s_comp, strict=True)]
    t_spans = [a.span_index("teacher", len(c)) for a, c in zip(aligns, t_comp, strict=True)]
    cs, ct = max(max(map(len, s_comp)), 1), max(max(map(len, t_comp)), 1)
    k = max(max(len(a.two_sided()) for a in aligns), 1)
    rows = [[a.chars[j][1] > a.chars[j][0] for j in a.two_sided()] for a in aligns]
    text_B_K = torch.tensor([r + [False] * (k - len(r)) for r in rows], dtype=torch.bool, device=device)
    t0 = time.perf_counter()
    with eval_mode(teacher), torch.no_grad():
        t_logits = completion_logits(teacher, t_seqs, list(map(len, t_comp)), pad_token(t_tok, eos_token_ids(teacher, t_tok)),
                                     t_prefix)
    t1 = time.perf_counter()
    with torch.set_grad_enabled(grad):
        s_logits = completion_logits(student, s_seqs, list(map(len, s_comp)), pad_token(s_tok, eos_token_ids(student, s_tok)),
                                     ([], None) if grad else s_prefix)
        loss, st = aligned_loss(s_logits, t_logits, left_pad(s_comp, -1, cs, device), left_pad(t_comp, -1, ct, device),
                                left_pad(s_spans, -1, cs, device), left_pad(t_spans, -1, ct, device), vmap, beta=beta)
    if not grad:  # evaluation: each model's log-probability of its own tokens of the answer (evaluation.logratio)
        for side, logits, comp, width, tok in (("student", s_logits, s_comp, cs, s_tok),
                                               ("teacher", t_logits, t_comp, ct, t_tok)):
            ids_B_C = left_pad(comp, -1, width, device)
            # every token, each model's own stop token of a finished answer included (logratio.VERSION 2)
            st[f"logp_{side}_B"] = logratio.sequence_logprob_B(logits, ids_B_C, ids_B_C >= 0, len(tok))
    kk = st["span_logp_student_B_K"].shape[1]
    div_B = aligned_divergence(st["span_logp_student_B_K"], st["span_logp_teacher_B_K"],
                               text_B_K[:, :kk] & st["valid_B_K"])
    return loss, st, div_B, t1 - t0, time.perf_counter() - t1


def cross_tokenizer_step(student, student_tok, teacher, teacher_tok, prompts: list[str], *, cfg,
                         teacher_prompts: list[str], references: list[str] | None = None) -> tuple[torch.Tensor, dict]:
    """One micro-batch: sample (prob ``cfg.lmbda``, else ``references``), align, score, loss.

    ``prompts`` are rendered for the student, ``teacher_prompts`` the same prompts rendered for the
    teacher. The returned loss carries the student's graph (the caller runs backward); metrics are
    plain floats. The token term's outcomes come from :func:`build_vocab_map`'s automatic choice.
    """
    if len(prompts) != len(teacher_prompts) or not prompts:
        raise ValueError(f"cross_tokenizer_step: {len(prompts)} student prompts vs {len(teacher_prompts)} "
                         "teacher prompts; pass one teacher rendering per prompt")
    s_eos, t_eos = eos_token_ids(student, student_tok), eos_token_ids(teacher, teacher_tok)
    s_prompt = encode_prompts(student_tok, prompts)
    t0 = time.perf_counter()
    on_policy = references is None or random.random() <= cfg.lmbda  # GKD's rule
    if on_policy:
        s_comp = _sample(student, student_tok, s_prompt, cfg, s_eos)
    else:
        refs = student_tok(list(references), add_special_tokens=False)["input_ids"]
        s_comp = [ids + s_eos[:1] for ids in refs]
    t1 = time.perf_counter()
    vmap = build_vocab_map(student_tok, teacher_tok, mode="auto", student_eos=tuple(s_eos),
                           teacher_eos=tuple(t_eos))
    t_seqs, t_comp, aligns, t_prompt_ids = [], [], [], []
    for comp, p_ids, t_prompt in zip(s_comp, s_prompt, teacher_prompts, strict=True):
        s_ends, text = ends_from_ids(comp, student_tok, context=p_ids[-_CONTEXT_TOKENS:])
        if vmap.mode == "identity":  # same vocabulary: the teacher scores the sampled ids themselves (GKD)
            ids = encode_prompts(teacher_tok, [t_prompt])[0]
            ids, first, al = ids + comp, len(ids), align_one_to_one(s_ends, text)
        else:
            ids, first, t_ends = encode_with_completion(teacher_tok, t_prompt, text)
            if comp and comp[-1] in s_eos:  # the student stopped: the teacher's end of turn is the same event
                ids, t_ends = ids + t_eos[:1], t_ends + [None]
            al = align_ends(s_ends, t_ends, text)
        t_seqs.append(ids)
        t_comp.append(ids[first:])
        t_prompt_ids.append(ids[:first])
        aligns.append(al)
    t2 = time.perf_counter()
    with eval_mode(teacher), torch.no_grad():  # the teacher reads the shared system/few-shot prefix once
        t_prefix = prefix_cache(teacher, t_prompt_ids)
    s_seqs = [p + c for p, c in zip(s_prompt, s_comp, strict=True)]
    loss, st, div_B, t_sec, s_sec = _score(student, student_tok, teacher, teacher_tok, s_seqs, s_comp, t_seqs,
                                           t_comp, aligns, vmap, beta=cfg.beta, grad=True, t_prefix=t_prefix)
    if not torch.isfinite(loss):
        raise NonFiniteError(f"cross-tokenizer loss became {loss.item()}; the step was not applied")
    one = [a.stats()["one_to_one"] for a in aligns]
    return loss, {
        "loss": float(loss.detach()), "aligned_divergence": float(div_B.mean()),
        "on_policy": float(on_policy),
        "completion_tokens": float(sum(map(len, s_comp))),
        "teacher_completion_tokens": float(sum(map(len, t_comp))), "spans": float(st["spans"]),
        "student_sequence_tokens": float(sum(map(len, s_seqs))), "teacher_sequence_tokens": float(sum(map(len, t_seqs))),
        "one_to_one": sum(one) / len(one), "token_term": st["token_term"], "span_term": st["span_term"],
        "generation_seconds": t1 - t0, "align_seconds": t2 - t1, "teacher_forward_seconds": t_sec,
        "student_forward_seconds": s_sec,
    }


def aligned_divergence_fn(student, student_tok, teacher, teacher_tok, *, beta: float = 0.5, batch_size: int = 8
                          ) -> Callable[[list[dict]], list[dict]]:
    """``divergence_fn(records) -> list[dict]``: per record's completion (``"prompt"``: the student's
    rendering, ``"completion"``: text), the aligned span divergence, the sequence log-ratio to the
    teacher per character (:mod:`atlas_lib.evaluation.logratio`) and ``objective``: the training loss
    itself (:func:`aligned_loss` at ``beta``) on that completion, with ``objective_units`` its spans
    (a set of rows' loss is ``sum(objective * units) / sum(units)``). A completion that stopped
    (``truncated`` false) ends in both models' stop tokens, as a sampled one does in training. The
    teacher's prompt is ``record["teacher_prompt"]``, else ``record["messages"]`` rendered with the
    teacher's template, else ``record["prompt"]`` (logged once). Both models tokenize prompt +
    completion."""
    warned = []
    s_eos, t_eos = eos_token_ids(student, student_tok), eos_token_ids(teacher, teacher_tok)

    def teacher_prompt(r: dict) -> str:
        if r.get("teacher_prompt") is not None:
            return r["teacher_prompt"]
        if r.get("messages"):
            return render_prompt(teacher_tok, r["messages"])
        if not warned:
            warned.append(True)
            log.warning("divergence records carry no teacher_prompt/messages: the teacher reads the "
                        "student's prompt string")
        return r["prompt"]

    def fn(records: list[dict]) -> list[dict]:
        vmap = build_vocab_map(student_tok, teacher_tok, mode="auto", student_eos=tuple(s_eos),
                               teacher_eos=tuple(t_eos))  # the training step's outcomes
        rows = []  # per record: s_seqs, s_comp, t_seqs, t_comp, aligns entries, then both prompts' ids
        for r in records:
            s_all, s_first, s_ends = encode_with_completion(student_tok, r["prompt"], r["completion"])
            t_all, t_first, t_ends = encode_with_completion(teacher_tok, teacher_prompt(r), r["completion"])
            if r.get("truncated") is False:  # it stopped: the two stop tokens are one event (as in training)
                s_all, s_ends, t_all, t_ends = s_all + s_eos[:1], s_ends + [None], t_all + t_eos[:1], t_ends + [None]
            rows.append((s_all, s_all[s_first:], t_all, t_all[t_first:], align_ends(s_ends, t_ends, r["completion"]),
                         s_all[:s_first], t_all[:t_first]))
        # batched by length (less padding); the shared system/few-shot prefix is read once per model
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][2]))
        out: list[dict] = [{}] * len(rows)
        with eval_mode(student, teacher), torch.no_grad():
            s_prefix = prefix_cache(student, [r[5] for r in rows]) if rows else ([], None)
            t_prefix = prefix_cache(teacher, [r[6] for r in rows]) if rows else ([], None)
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                cols = [[rows[j][c] for j in idx] for c in range(5)]  # s_seqs, s_comp, t_seqs, t_comp, aligns
                _, st, div_B, _, _ = _score(student, student_tok, teacher, teacher_tok, *cols, vmap, beta=beta,
                                            grad=False, s_prefix=s_prefix, t_prefix=t_prefix)
                for j, x, lp_s, lp_t, tot, n in zip(idx, div_B.tolist(), st["logp_student_B"].tolist(),
                                                    st["logp_teacher_B"].tolist(), st["loss_sum_B"].tolist(),
                                                    st["loss_spans_B"].tolist(), strict=True):
                    out[j] = {"aligned_divergence": float(x),
                              "logratio_per_char": logratio.per_char(lp_s, lp_t, records[j]["completion"]),
                              "logratio_version": logratio.VERSION,
                              "objective": tot / n if n else None, "objective_units": int(n)}
        return out

    return fn
