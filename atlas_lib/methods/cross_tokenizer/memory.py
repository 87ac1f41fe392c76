"""Memory plan of the cross_tokenizer stage: its own student and teacher, and both vocabularies'
log-softmaxes in float32 (each its own vocabulary) with the student's grad."""

from __future__ import annotations

from atlas_lib.core.config import Params
from atlas_lib.training.memory import Shape, Stage, distill_plan


def aligned_logits(sh: Shape) -> float:
    s, t = sh.s["vocab"], sh.t["vocab"]
    return sh.keep * sh.b * (s + t) * sh.act_b + sh.keep * sh.b * (2 * s + t) * 4


def plan_cross_tokenizer(params: Params, key: str) -> Stage:
    g = params.section(key)
    return distill_plan(params, key, g.student, g.teacher, logits=aligned_logits)
