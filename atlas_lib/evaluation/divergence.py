"""The generalized Jensen-Shannon divergence GKD minimises (GKD paper, eq. 1), as a pure function.

It lives with the evaluator because the evaluator reports it too: a same-tokenizer distilling
method's own objective on held-out answers (``evaluate.score_completions``) is :meth:`Objective.per_answer`
on the two models' logits of those answers, and the GKD trainer's loss is :func:`generalized_jsd`; both are
the per-token mean of :func:`gjsd_terms` over the same positions (tested equal). The cross-tokenizer
objective compares distributions it builds itself (outcome buckets, {span, not span}) as log-probs,
so the three branches live in :func:`gjsd_terms`, which both entry points call.

:class:`Objective` is how a same-tokenizer method names its own loss to the evaluator (``Parts.objective``,
the registry's ``Method.objective``): the training curves, the reported rows and notebook 01's untrained
student all score held-out answers with it, so no reader guesses a method's loss from its field names."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def gjsd_terms(student_logp_N_C: torch.Tensor, teacher_logp_N_C: torch.Tensor, beta: float) -> torch.Tensor:
    """Elementwise terms ``[N, C]`` of the generalized JSD_beta(teacher || student) of two
    distributions given as log-probs over their last dimension (summing the last dimension gives
    each row's divergence).

    beta = 0 -> KL(teacher || student) (forward), beta = 1 -> KL(student || teacher) (reverse),
    otherwise beta * KL(teacher || m) + (1 - beta) * KL(student || m) with
    m = beta * teacher + (1 - beta) * student: TRL's ``GKDTrainer.generalized_jsd_loss`` convention.
    Unreduced so each caller keeps its own summation order (results bit-identical to before).
    """
    s, t = student_logp_N_C, teacher_logp_N_C
    if beta == 0:
        return F.kl_div(s, t, reduction="none", log_target=True)
    if beta == 1:
        return F.kl_div(t, s, reduction="none", log_target=True)
    m = torch.logsumexp(torch.stack([s + math.log1p(-beta), t + math.log(beta)]), dim=0)
    return beta * F.kl_div(m, t, reduction="none", log_target=True) + (1 - beta) * F.kl_div(
        m, s, reduction="none", log_target=True)


def generalized_jsd(student_logits_N_V: torch.Tensor, teacher_logits_N_V: torch.Tensor, beta: float,
                    temperature: float = 1.0, chunk_size: int = 0) -> torch.Tensor:
    """Sum over N positions of the generalized JSD_beta(teacher || student) (GKD paper, eq. 1).

    The logits are softmaxed at ``temperature`` and compared by :func:`gjsd_terms` (beta 0 forward
    KL, 1 reverse KL, TRL's mixture otherwise). Computed in float32, optionally ``chunk_size``
    positions at a time so only a chunk of [N, V] float32 tensors lives at once.
    """
    n = student_logits_N_V.shape[0]
    step = chunk_size if chunk_size and chunk_size > 0 else max(n, 1)
    total = student_logits_N_V.new_zeros((), dtype=torch.float32)
    for i in range(0, n, step):
        s = F.log_softmax(student_logits_N_V[i:i + step].float() / temperature, dim=-1)
        t = F.log_softmax(teacher_logits_N_V[i:i + step].float() / temperature, dim=-1)
        total = total + gjsd_terms(s, t, beta).sum()
    return total


@dataclass(frozen=True)
class Objective:
    """A method's own per-token loss, as the evaluator scores it on held-out answers.

    ``key`` names its per-answer scores in the records (``objective_by_beta[key]``; the field name is
    kept on disk so committed runs keep reading); two objectives with the same key are the same
    objective. ``terms(student_logp_B_T_V, teacher_logp_B_T_V, mask_B_T) -> values_B_T`` is pure: the
    loss at each position of the two models' log-probs, 0 where ``mask_B_T`` is False.
    """

    name: str  # in words, for logs and messages
    key: str
    terms: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = field(compare=False, repr=False)

    def per_answer(self, student_logits_T_V: torch.Tensor, teacher_logits_T_V: torch.Tensor) -> float:
        """The loss averaged over one answer's T positions (the trainer's per-token mean), from the two
        models' logits of it (softmaxed in float32 at temperature 1, as the trainer's loss)."""
        s_1_T_V, t_1_T_V = (F.log_softmax(x.float(), dim=-1)[None] for x in (student_logits_T_V, teacher_logits_T_V))
        mask_1_T = torch.ones(s_1_T_V.shape[:2], dtype=torch.bool, device=s_1_T_V.device)
        return float(self.terms(s_1_T_V, t_1_T_V, mask_1_T).sum()) / max(int(mask_1_T.sum()), 1)


def beta_key(beta: float) -> str:
    """How a generalized JSD's beta names its scores in ``objective_by_beta`` (records and metrics are JSON)."""
    return f"{float(beta):g}"


def gjsd_objective(beta: float) -> Objective:
    """The generalized JSD at ``beta`` (:func:`gjsd_terms`) as an :class:`Objective`: GKD's loss, per token."""
    beta = float(beta)

    def terms(student_logp_B_T_V: torch.Tensor, teacher_logp_B_T_V: torch.Tensor,
              mask_B_T: torch.Tensor) -> torch.Tensor:
        values_B_T = gjsd_terms(student_logp_B_T_V, teacher_logp_B_T_V, beta).sum(-1)
        return torch.where(mask_B_T.bool(), values_B_T, torch.zeros_like(values_B_T))  # a padded NaN stays out

    return Objective(f"generalized JSD (beta {beta:g})", beta_key(beta), terms)
