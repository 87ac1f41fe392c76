"""The cross-tokenizer objective as pure functions: a generalized JSD on text-aligned spans.

The student samples a completion; both models score the same completion *text*, each through its
own tokenizer (the teacher with its own rendering of the prompt). :mod:`atlas_lib.methods.cross_tokenizer.alignment` cuts
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

import math

import torch
import torch.nn.functional as F

from atlas_lib.evaluation.divergence import gjsd_terms
from atlas_lib.methods.cross_tokenizer.vocab_map import VocabMap


def gjsd_logprobs(student_logp_N_C: torch.Tensor, teacher_logp_N_C: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """Per row, the generalized JSD_beta(teacher || student) of two distributions given as log-probs:
    the kit's one GJSD (:func:`atlas_lib.evaluation.divergence.gjsd_terms`, TRL's conventions)
    summed over the outcomes, since these distributions are built here, not softmaxed from logits."""
    return gjsd_terms(student_logp_N_C, teacher_logp_N_C, beta).sum(-1)


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
    if vmap.mode == "identity":  # same vocabulary: compare over the common rows (as atlas_lib.methods.gkd.trainer)
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
    per_span = (token_term + span_term).detach()
    rows = valid.shape[0]
    # per row: the loss summed over its spans and their number, so sum(sum_B) / sum(spans_B) is the
    # batch's loss (the held-out objective of any set of rows is the training loss on that set)
    sum_B = per_span.new_zeros(rows).index_add_(0, b, per_span)
    spans_B = per_span.new_zeros(rows).index_add_(0, b, torch.ones_like(per_span))
    return loss, {"spans": int(b.numel()), "token_term": float(token_term.detach().sum()) / n,
                  "span_term": float(span_term.detach().sum()) / n, "loss_sum_B": sum_B, "loss_spans_B": spans_B,
                  "span_logp_student_B_K": span_s.detach(), "span_logp_teacher_B_K": span_t.detach(),
                  "valid_B_K": valid}


def aligned_divergence(student_span_logp_B_K: torch.Tensor, teacher_span_logp_B_K: torch.Tensor,
                       mask_B_K: torch.Tensor) -> torch.Tensor:
    """Aligned span divergence per row ``[B]``: mean over masked spans of KL(student || teacher)
    on {span, not span}; 0 for a row without spans."""
    kl_B_K = gjsd_logprobs(_bernoulli_N_2(student_span_logp_B_K), _bernoulli_N_2(teacher_span_logp_B_K), 1.0)
    m = mask_B_K.to(kl_B_K.dtype)
    return (kl_B_K * m).sum(-1) / m.sum(-1).clamp_min(1)
