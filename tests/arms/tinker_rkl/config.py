"""The tinker section: a toy arm in the tinker-cookbook style (on-policy distillation as RL with a
per-token reverse-KL advantage). Its ``beta`` scales that advantage: a KL coefficient, not a
generalized-JSD interpolation, so the evaluator must never score it as one."""

from __future__ import annotations

from dataclasses import dataclass

from atlas_lib.core.sections import TrainSection, default
from atlas_lib.core.validate import fld


@dataclass
class TinkerConfig(TrainSection):
    """Tinker-style distillation: the student samples, each sampled token's advantage is
    -beta x (log p_student - log p_teacher), and a policy-gradient step follows it."""

    enabled: bool = default("enabled", False)
    max_steps: int = default("max_steps", 2)
    learning_rate: float = default("learning_rate", 1e-3)
    eval_steps: int = default("eval_steps", 1)
    save_steps: int = default("save_steps", 5)
    per_device_train_batch_size: int = default("per_device_train_batch_size", 2)
    gradient_accumulation_steps: int = default("gradient_accumulation_steps", 1)
    max_completion_length: int = default("max_completion_length", 8)
    beta: float = fld(0.1, "Scale of the per-token reverse-KL advantage (a KL coefficient; not a JSD beta).",
                      gt=0.0, le=10.0)
    center: bool = fld(False, "Subtract each sequence's mean advantage (a baseline) before the step.")
