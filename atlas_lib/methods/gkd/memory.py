"""Memory plans of the gkd and off_policy stages: the shared student and the frozen teacher, the
generalized JSD's logits bounded by ``loss_chunk_size``; off-policy samples with the teacher."""

from __future__ import annotations

from atlas_lib.core.config import Params
from atlas_lib.training.memory import Stage, distill_plan


def plan_gkd(params: Params, key: str) -> Stage:
    return distill_plan(params, key, params.models.student, params.models.teacher)


def plan_off_policy(params: Params, key: str) -> Stage:
    return distill_plan(params, key, params.models.student, params.models.teacher, teacher_samples=True)
