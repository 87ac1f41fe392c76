"""Cross-tokenizer on-policy distillation: a generalized JSD on text-aligned spans.

The student samples a completion; both models score the same completion *text*, each through its
own tokenizer (the teacher with its own rendering of the prompt). :mod:`atlas_lib.alignment` cuts
the text into spans whose boundaries both tokenizations share, so at every span start both models
have read exactly the same text. Per span the loss adds two generalized JSDs (GKD's ``beta``:
0 forward KL, 1 reverse KL, TRL's mixture convention), averaged over spans:

* **token term**, at the span's first token: the GJSD of the two next-token distributions over a
  *partition of outcomes both tokenizers define*. Same vocabulary (``identity``): the tokens
  themselves, so with identical tokenizers every span is one token and the loss *is* the
  same-tokenizer GJSD of GKD (tested against TRL). Different vocabularies (``first_byte``,
  default): "the continuation starts with byte x" (256 outcomes), "stop" (the EOS ids) and "other"
  (no text). Each token belongs to exactly one outcome, and the events are the same events under
  both tokenizers, so the term is exactly 0 when the two models define the same text
  distribution. ``shared_string`` (GOLD's hybrid idea: tokens with the same normalised string are
  one outcome) is finer but only approximate, since "next token is '12'" is not the same event for
  a tokenizer that writes "1","2"; it is available, not the default.
* **span term**: the GJSD of the two-outcome distributions {this span's text, anything else},
  with p(span) the chain-rule product of the actual tokens' probabilities: both models'
  probability of the same text piece after the same text, whatever their tokens. Spans whose
  outcome the token term already contains (one identical token on each side) are skipped, which is
  what keeps the identical-tokenizer case equal to GKD.

Not used: ULD's sorted-probability L1 (TRL GOLD's default) is 0 for any permutation of the
vocabulary, so it does not compare what the models predict. As in GKD, ``cfg.temperature`` is the
*sampling* temperature and the loss is at temperature 1.

The divergence to the teacher reported during training and evaluation is the **aligned span
divergence**: mean over text spans of KL(student || teacher) on {span, not span} at temperature 1
(cross-tokenizer; not comparable with same-tokenizer reverse KL).
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from atlas_lib.alignment import (
    Alignment,
    align_by_offsets,
    align_ends,
    align_one_to_one,
    encode_with_completion,
    ends_from_ids,
    tokenizer_kind,
)
from atlas_lib.prompts import has_chat_template, render_prompt
from atlas_lib.tracking import NonFiniteError
from atlas_lib.vocab_map import VocabMap, build_vocab_map

log = logging.getLogger(__name__)
__all__ = ["Alignment", "align_by_offsets", "tokenizer_kind", "gold_supported", "VocabMap", "build_vocab_map",
           "gjsd_logprobs", "aligned_loss", "aligned_divergence", "aligned_divergence_fn",
           "cross_tokenizer_step", "DIVERGENCE_LABEL"]
DIVERGENCE_LABEL = "aligned span divergence (cross-tokenizer; not comparable with same-tokenizer reverse KL)"
_CONTEXT_TOKENS = 4  # prompt tokens decoded before a completion so its first token reads in context


def gold_supported(student_tok, teacher_tok) -> tuple[bool, str]:
    """Whether TRL GOLD's cross-tokenizer ULD (``use_extended_uld=True``) accepts this pair, and why."""
    with warnings.catch_warnings():  # "experimental API" warning; the rule itself is pinned by a test
        warnings.simplefilter("ignore")
        from trl.experimental.utils import is_byte_level_tokenizer

    for role, tok in (("student", student_tok), ("teacher", teacher_tok)):
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None:
            return False, f"the {role} tokenizer is not a fast tokenizer (GOLD needs byte offsets)"
        if not is_byte_level_tokenizer(backend):
            return False, (f"the {role} tokenizer is {tokenizer_kind(tok)}, not ByteLevel BPE "
                           "(trl.experimental.utils.encode_with_byte_offsets raises NotImplementedError)")
    return True, "both tokenizers are ByteLevel BPE"


def gjsd_logprobs(student_logp_N_C: torch.Tensor, teacher_logp_N_C: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """Per row, the generalized JSD_beta(teacher || student) of two distributions given as log-probs.

    Same math and conventions as TRL ``GKDTrainer.generalized_jsd_loss`` (beta 0 forward, 1 reverse).
    """
    s, t = student_logp_N_C, teacher_logp_N_C
    if beta == 0:
        return F.kl_div(s, t, reduction="none", log_target=True).sum(-1)
    if beta == 1:
        return F.kl_div(t, s, reduction="none", log_target=True).sum(-1)
    m = torch.logsumexp(torch.stack([s + math.log1p(-beta), t + math.log(beta)]), dim=0)
    return (beta * F.kl_div(m, t, reduction="none", log_target=True)
            + (1 - beta) * F.kl_div(m, s, reduction="none", log_target=True)).sum(-1)


def _bernoulli_N_2(logp_N: torch.Tensor) -> torch.Tensor:
    """log of (p, 1 - p); p clamped just below 1 so log(1 - p) stays finite."""
    x = logp_N.clamp(max=-1e-7)
    log1m = torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return torch.stack([x, log1m], dim=-1)


def _fit(vec_V: torch.Tensor, v: int, fill, device) -> torch.Tensor:
    """A per-token vector sized to the logits' vocabulary (padded embedding rows get ``fill``)."""
    vec_V = vec_V.to(device)[:v]
    return F.pad(vec_V, (0, v - vec_V.numel()), value=fill) if vec_V.numel() < v else vec_V


def _buckets(logp_N_V: torch.Tensor, bucket_V: torch.Tensor, n: int) -> torch.Tensor:
    """log-probabilities of the ``n`` outcome buckets (sums of their tokens' probabilities)."""
    probs_N_V = logp_N_V.exp()
    probs_N_C = probs_N_V.new_zeros(probs_N_V.shape[0], n).index_add_(1, bucket_V, probs_N_V)
    return probs_N_C.clamp_min(1e-30).log()


def _per_span_B_K(value_B_T: torch.Tensor, span_B_T: torch.Tensor, k: int, reduce: str) -> torch.Tensor:
    """Sum (or min) of ``value`` over each span's tokens; tokens with span -1 are ignored."""
    keep, idx = span_B_T >= 0, span_B_T.clamp_min(0)
    if reduce == "sum":
        return value_B_T.new_zeros(value_B_T.shape[0], k).scatter_add(1, idx, value_B_T * keep)
    big = value_B_T.shape[1]
    init = torch.full((value_B_T.shape[0], k), big, device=value_B_T.device, dtype=value_B_T.dtype)
    return init.scatter_reduce(1, idx, value_B_T.masked_fill(~keep, big), "amin")


def aligned_loss(student_logits_B_S_V: torch.Tensor, teacher_logits_B_T_W: torch.Tensor,
                 student_ids_B_S: torch.Tensor, teacher_ids_B_T: torch.Tensor,
                 student_span_B_S: torch.Tensor, teacher_span_B_T: torch.Tensor, vmap: VocabMap, *,
                 beta: float, temperature: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Mean over aligned spans of (token term + span term); see the module docstring.

    Logits row ``j`` predicts token ``ids[j]`` (already shifted). ``*_span`` gives each token's span
    number (the same numbering on both sides), -1 for tokens outside the loss. Returns the loss and
    detached per-span tensors (``span_logp_*_B_K``, ``valid_B_K``) for metrics.
    """
    s_logits, t_logits = student_logits_B_S_V, teacher_logits_B_T_W
    if vmap.mode == "identity":  # same vocabulary: compare over the common rows (as atlas_lib.gkd)
        v = min(s_logits.shape[-1], t_logits.shape[-1])
        s_logits, t_logits = s_logits[..., :v], t_logits[..., :v]
    s_lp = F.log_softmax(s_logits.float() / temperature, dim=-1)
    dev = s_lp.device
    t_lp = F.log_softmax(t_logits.float().to(dev) / temperature, dim=-1)
    s_ids, t_ids = student_ids_B_S.clamp_min(0).to(dev), teacher_ids_B_T.clamp_min(0).to(dev)
    s_span, t_span = student_span_B_S.to(dev), teacher_span_B_T.to(dev)
    k = int(max(s_span.max().item() if s_span.numel() else -1,
                t_span.max().item() if t_span.numel() else -1)) + 1
    span_s = _per_span_B_K(s_lp.gather(-1, s_ids[..., None]).squeeze(-1), s_span, k, "sum")
    span_t = _per_span_B_K(t_lp.gather(-1, t_ids[..., None]).squeeze(-1), t_span, k, "sum")
    first_s = _per_span_B_K(torch.arange(s_span.shape[1], device=dev).expand_as(s_span), s_span, k, "amin")
    first_t = _per_span_B_K(torch.arange(t_span.shape[1], device=dev).expand_as(t_span), t_span, k, "amin")
    n_s = _per_span_B_K(torch.ones_like(s_span), s_span, k, "sum")
    n_t = _per_span_B_K(torch.ones_like(t_span), t_span, k, "sum")
    valid = (n_s > 0) & (n_t > 0)
    b, kk = valid.nonzero(as_tuple=True)
    fs, ft = first_s[b, kk], first_t[b, kk]
    id_s, id_t = s_ids[b, fs], t_ids[b, ft]
    single = (n_s[b, kk] == 1) & (n_t[b, kk] == 1)
    if vmap.mode == "identity":
        token_term = gjsd_logprobs(s_lp[b, fs], t_lp[b, ft], beta)
        covered = single & (id_s == id_t)
    else:
        c = vmap.num_buckets
        sb, tb = _fit(vmap.student_bucket_V, s_lp.shape[-1], c - 1, dev), _fit(vmap.teacher_bucket_V,
                                                                               t_lp.shape[-1], c - 1, dev)
        se = _fit(vmap.student_exact_V, s_lp.shape[-1], False, dev)
        te = _fit(vmap.teacher_exact_V, t_lp.shape[-1], False, dev)
        token_term = gjsd_logprobs(_buckets(s_lp[b, fs], sb, c), _buckets(t_lp[b, ft], tb, c), beta)
        covered = single & (sb[id_s] == tb[id_t]) & se[id_s] & te[id_t]
    span_term = gjsd_logprobs(_bernoulli_N_2(span_s[b, kk]), _bernoulli_N_2(span_t[b, kk]), beta) * (~covered)
    n = max(int(b.numel()), 1)
    loss = (token_term.sum() + span_term.sum()) / n
    if b.numel() == 0:  # nothing aligned: a zero that still depends on the student (backward stays valid)
        loss = loss + 0.0 * student_logits_B_S_V.sum()
    return loss, {"spans": int(b.numel()), "token_term": float(token_term.detach().sum()) / n,
                  "span_term": float(span_term.detach().sum()) / n,
                  "span_logp_student_B_K": span_s.detach(), "span_logp_teacher_B_K": span_t.detach(),
                  "valid_B_K": valid}


def aligned_divergence(student_span_logp_B_K: torch.Tensor, teacher_span_logp_B_K: torch.Tensor,
                       mask_B_K: torch.Tensor) -> torch.Tensor:
    """Aligned span divergence per row ``[B]``: mean over masked spans of KL(student || teacher)
    on {span, not span}; 0 for a row without spans."""
    kl_B_K = gjsd_logprobs(_bernoulli_N_2(student_span_logp_B_K), _bernoulli_N_2(teacher_span_logp_B_K), 1.0)
    m = mask_B_K.to(kl_B_K.dtype)
    return (kl_B_K * m).sum(-1) / m.sum(-1).clamp_min(1)


# ---- batching: completions left-padded so that one logits_to_keep covers every row -------------

def _left_pad(rows: list[list[int]], width: int, fill: int, device) -> torch.Tensor:
    return torch.tensor([[fill] * (width - len(r)) + list(r) for r in rows], dtype=torch.long, device=device)


def _completion_logits(model, seqs: list[list[int]], n_completion: list[int], pad_id: int) -> torch.Tensor:
    """Logits predicting each row's last ``n_completion`` tokens: ``[B, C, V]``, right-aligned."""
    device = next(model.parameters()).device
    width, c = max(len(s) for s in seqs), max(max(n_completion), 1)
    ids = _left_pad(seqs, width, pad_id, device)
    mask = _left_pad([[1] * len(s) for s in seqs], width, 0, device)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=c + 1)
    return out.logits[:, :-1]


def _eos_ids(model, tok) -> list[int]:
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    return ids + [tok.eos_token_id] if tok.eos_token_id is not None and tok.eos_token_id not in ids else ids


def _pad(tok, eos: list[int]) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else (eos or [0])[0]


def _prompt_ids(tok, prompts: list[str]) -> list[list[int]]:
    return tok(prompts, add_special_tokens=not has_chat_template(tok))["input_ids"]


def _sample(student, tok, prompt_ids: list[list[int]], cfg, eos: list[int]) -> list[list[int]]:
    """On-policy completions (ids up to and including the first EOS), pure temperature sampling."""
    from transformers import GenerationConfig

    device = next(student.parameters()).device
    width = max(len(p) for p in prompt_ids)
    ids = _left_pad(prompt_ids, width, _pad(tok, eos), device)
    mask = _left_pad([[1] * len(p) for p in prompt_ids], width, 0, device)
    # top_k/top_p/repetition_penalty pinned: a model's generation_config defaults would skew the samples
    gen = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0,
                           repetition_penalty=1.0, max_new_tokens=cfg.max_new_tokens, eos_token_id=eos,
                           pad_token_id=_pad(tok, eos), use_cache=True)
    was_training = student.training
    student.eval()
    with torch.no_grad():
        out = student.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
    student.train(was_training)
    rows = []
    for row in out[:, width:].tolist():
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        rows.append(row[:stop + 1] if stop is not None else row)
    return rows


def _score(student, s_tok, teacher, t_tok, s_seqs, s_comp, t_seqs, t_comp, aligns, vmap, *, beta: float,
           grad: bool) -> tuple[torch.Tensor, dict, torch.Tensor, float, float]:
    """Teacher forward (no grad, eval mode), student forward, loss; plus the per-row divergence."""
    device = next(student.parameters()).device
    s_spans = [a.span_index("student", len(c)) for a, c in zip(aligns, s_comp, strict=True)]
    t_spans = [a.span_index("teacher", len(c)) for a, c in zip(aligns, t_comp, strict=True)]
    cs, ct = max(max(map(len, s_comp)), 1), max(max(map(len, t_comp)), 1)
    k = max(max(len(a.two_sided()) for a in aligns), 1)
    rows = [[a.chars[j][1] > a.chars[j][0] for j in a.two_sided()] for a in aligns]
    text_B_K = torch.tensor([r + [False] * (k - len(r)) for r in rows], dtype=torch.bool, device=device)
    t0 = time.perf_counter()
    was_training = teacher.training
    teacher.eval()
    with torch.no_grad():
        t_logits = _completion_logits(teacher, t_seqs, list(map(len, t_comp)),
                                      _pad(t_tok, _eos_ids(teacher, t_tok)))
    teacher.train(was_training)
    t1 = time.perf_counter()
    with torch.set_grad_enabled(grad):
        s_logits = _completion_logits(student, s_seqs, list(map(len, s_comp)),
                                      _pad(s_tok, _eos_ids(student, s_tok)))
        loss, st = aligned_loss(s_logits, t_logits, _left_pad(s_comp, cs, -1, device),
                                _left_pad(t_comp, ct, -1, device), _left_pad(s_spans, cs, -1, device),
                                _left_pad(t_spans, ct, -1, device), vmap, beta=beta)
    kk = st["span_logp_student_B_K"].shape[1]
    div_B = aligned_divergence(st["span_logp_student_B_K"], st["span_logp_teacher_B_K"],
                               text_B_K[:, :kk] & st["valid_B_K"])
    return loss, st, div_B, t1 - t0, time.perf_counter() - t1


def cross_tokenizer_step(student, student_tok, teacher, teacher_tok, prompts: list[str], *, cfg,
                         teacher_prompts: list[str], references: list[str] | None = None,
                         vocab_mode: str = "auto") -> tuple[torch.Tensor, dict]:
    """One micro-batch: sample (prob ``cfg.lmbda``, else ``references``), align, score, loss.

    ``prompts`` are rendered for the student, ``teacher_prompts`` the same prompts rendered for the
    teacher. The returned loss carries the student's graph (the caller runs backward); metrics are
    plain floats. ``vocab_mode``: the token term's outcomes (:mod:`atlas_lib.vocab_map`).
    """
    if len(prompts) != len(teacher_prompts) or not prompts:
        raise ValueError(f"cross_tokenizer_step: {len(prompts)} student prompts vs {len(teacher_prompts)} "
                         "teacher prompts; pass one teacher rendering per prompt")
    s_eos, t_eos = _eos_ids(student, student_tok), _eos_ids(teacher, teacher_tok)
    s_prompt = _prompt_ids(student_tok, prompts)
    t0 = time.perf_counter()
    on_policy = references is None or random.random() <= cfg.lmbda  # GKD's rule
    if on_policy:
        s_comp = _sample(student, student_tok, s_prompt, cfg, s_eos)
    else:
        refs = student_tok(list(references), add_special_tokens=False)["input_ids"]
        s_comp = [ids + s_eos[:1] for ids in refs]
    t1 = time.perf_counter()
    vmap = build_vocab_map(student_tok, teacher_tok, mode=vocab_mode, student_eos=tuple(s_eos),
                           teacher_eos=tuple(t_eos))
    t_seqs, t_comp, aligns = [], [], []
    for comp, p_ids, t_prompt in zip(s_comp, s_prompt, teacher_prompts, strict=True):
        s_ends, text = ends_from_ids(comp, student_tok, context=p_ids[-_CONTEXT_TOKENS:])
        if vmap.mode == "identity":  # same vocabulary: the teacher scores the sampled ids themselves (GKD)
            ids = _prompt_ids(teacher_tok, [t_prompt])[0]
            ids, first, al = ids + comp, len(ids), align_one_to_one(s_ends, text)
        else:
            ids, first, t_ends = encode_with_completion(teacher_tok, t_prompt, text)
            if comp and comp[-1] in s_eos:  # the student stopped: the teacher's end of turn is the same event
                ids, t_ends = ids + t_eos[:1], t_ends + [None]
            al = align_ends(s_ends, t_ends, text)
        t_seqs.append(ids)
        t_comp.append(ids[first:])
        aligns.append(al)
    t2 = time.perf_counter()
    s_seqs = [p + c for p, c in zip(s_prompt, s_comp, strict=True)]
    loss, st, div_B, t_sec, s_sec = _score(student, student_tok, teacher, teacher_tok, s_seqs, s_comp, t_seqs,
                                           t_comp, aligns, vmap, beta=cfg.beta, grad=True)
    if not torch.isfinite(loss):
        raise NonFiniteError(f"cross-tokenizer loss became {loss.item()}; the step was not applied")
    one = [a.stats()["one_to_one"] for a in aligns]
    return loss, {
        "loss": float(loss.detach()), "aligned_divergence": float(div_B.mean()),
        "on_policy": float(on_policy),
        "completion_tokens": float(sum(map(len, s_comp))),
        "teacher_completion_tokens": float(sum(map(len, t_comp))), "spans": float(st["spans"]),
        "one_to_one": sum(one) / len(one), "token_term": st["token_term"], "span_term": st["span_term"],
        "generation_seconds": t1 - t0, "align_seconds": t2 - t1, "teacher_forward_seconds": t_sec,
        "student_forward_seconds": s_sec,
    }


def aligned_divergence_fn(student, student_tok, teacher, teacher_tok, *, batch_size: int = 8
                          ) -> Callable[[list[dict]], list[float]]:
    """``divergence_fn(records) -> list[float]``: the aligned span divergence of each record's
    completion (``"prompt"``: the student's rendering, ``"completion"``: text). The teacher's prompt
    is ``record["teacher_prompt"]``, else ``record["messages"]`` rendered with the teacher's
    template, else ``record["prompt"]`` (logged once). Both models tokenize prompt + completion."""
    warned = []

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

    def fn(records: list[dict]) -> list[float]:
        out: list[float] = []
        was_training = student.training
        student.eval()
        vmap = build_vocab_map(student_tok, teacher_tok)
        for i in range(0, len(records), batch_size):
            cols: list[list] = [[], [], [], [], []]  # s_seqs, s_comp, t_seqs, t_comp, aligns
            for r in records[i:i + batch_size]:
                s_all, s_first, s_ends = encode_with_completion(student_tok, r["prompt"], r["completion"])
                t_all, t_first, t_ends = encode_with_completion(teacher_tok, teacher_prompt(r),
                                                                r["completion"])
                for col, x in zip(cols, (s_all, s_all[s_first:], t_all, t_all[t_first:],
                                         align_ends(s_ends, t_ends, r["completion"])), strict=True):
                    col.append(x)
            _, _, div_B, _, _ = _score(student, student_tok, teacher, teacher_tok, *cols, vmap, beta=1.0,
                                       grad=False)
            out.extend(float(x) for x in div_B.tolist())
        student.train(was_training)
        return out

    return fn
