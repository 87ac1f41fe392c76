"""The arm's own objective: a policy-gradient step on the student's sampled tokens with the per-token
advantage -beta x (log p_student - log p_teacher) (detached), i.e. a sampled reverse KL to the teacher."""

from __future__ import annotations

import torch


def advantages(logp_student: torch.Tensor, logp_teacher: torch.Tensor, mask: torch.Tensor, beta: float,
               center: bool = False) -> torch.Tensor:
    adv = -beta * (logp_student - logp_teacher).detach() * mask
    if center:
        adv = (adv - (adv.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1))) * mask
    return adv


def reverse_kl_advantage_loss(logp_student: torch.Tensor, logp_teacher: torch.Tensor, mask: torch.Tensor,
                              beta: float, center: bool = False) -> torch.Tensor:
    adv = advantages(logp_student, logp_teacher, mask, beta, center)
    return -(adv * logp_student * mask).sum() / mask.sum().clamp(min=1)
