"""The grpo section: RLVR with TRL's GRPOTrainer (:mod:`atlas_lib.methods.grpo.trainer`)."""

from __future__ import annotations

from dataclasses import dataclass

from atlas_lib.core.sections import TrainSection, default
from atlas_lib.core.validate import ParamsError, fld

# Reward names GRPO may use (atlas_lib.methods.grpo.rewards.REWARDS implements them; a test pins the two).
REWARD_NAMES = ("exact_match", "format")


@dataclass
class GRPOConfig(TrainSection):
    """RLVR (TRL GRPOTrainer), no teacher: the group-relative advantage of an exact-match reward."""

    learning_rate: float = default("learning_rate", 1e-6)
    gradient_accumulation_steps: int = default("gradient_accumulation_steps", 32)
    max_steps: int = default("max_steps", 300)
    num_generations: int = fld(8, "Completions per prompt (the group).", ge=2)
    loss_type: str = fld("dapo", "TRL loss aggregation (pinned: TRL changed its default).",
                         choices=("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"))
    beta: float = fld(0.0, "KL coefficient to the reference model (0 = no reference model).", ge=0.0)
    scale_rewards: str = fld("group", "Reward std normalisation: group, batch or none.",
                             choices=("group", "batch", "none"))
    reward_funcs: list = fld(["exact_match"], f"Reward names: {', '.join(REWARD_NAMES)}.")
    use_vllm: bool = fld(False, "Generate with vLLM (GPU only).")
    vllm_mode: str = fld("colocate", "vLLM placement when use_vllm.", choices=("colocate", "server"))

    def check(self, key: str, eval_budget: int) -> None:
        super().check(key, eval_budget)
        if self.sequences_per_step() % self.num_generations:
            raise ParamsError(f"{key}: per_device_train_batch_size x gradient_accumulation_steps = {self.sequences_per_step()} "
                              f"rollouts per step must be a multiple of {key}.num_generations = {self.num_generations}")
        bad = [n for n in self.reward_funcs if n not in REWARD_NAMES]
        if bad or not self.reward_funcs:
            raise ParamsError(f"{key}.reward_funcs = {self.reward_funcs!r}: choose from {', '.join(REWARD_NAMES)}")
