"""The arm's memory plan: the student and the frozen teacher (a distillation stage), with both
models' completion logits and their float32 log-softmaxes (no mixture: the advantage is per token)."""

from __future__ import annotations

from atlas_lib.training.memory import Shape, Stage, distill_plan


def logits_bytes(sh: Shape) -> float:
    return sh.keep * sh.b * (sh.s["vocab"] + sh.t["vocab"]) * (sh.act_b + 4)


def plan_tinker(params, key: str) -> Stage:
    return distill_plan(params, key, params.models.student, params.models.teacher, logits=logits_bytes)
