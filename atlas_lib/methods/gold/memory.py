"""Memory plan of the gold stage: its own student and teacher (the cross_tokenizer section's pair);
TRL's GOLD loss is costed as a generalized JSD over both models' completion logits."""

from __future__ import annotations

from atlas_lib.core.config import Params
from atlas_lib.training.memory import Stage, distill_plan


def plan_gold(params: Params, key: str) -> Stage:
    g = params.section(key)
    return distill_plan(params, key, g.student, g.teacher)
