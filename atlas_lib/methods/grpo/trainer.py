"""RLVR baseline: a thin runner over TRL's ``GRPOTrainer`` with the kit's one grader as reward
(:mod:`atlas_lib.methods.grpo.rewards`). TRL changed ``loss_type`` and ``beta`` defaults across
versions; the kit always passes them explicitly from the params, and the summary records which
values applied. The teacher plays no part in training: it is loaded only at evaluation points, for
the reported reverse-KL column.
"""

from __future__ import annotations

import time

from datasets import Dataset
from trl import GRPOConfig as TRLGRPOConfig
from trl import GRPOTrainer

from atlas_lib.core import models
from atlas_lib.core.config import Params
from atlas_lib.data import splits
from atlas_lib.evaluation.forward import eos_token_ids
from atlas_lib.methods.grpo.rewards import reward_functions
from atlas_lib.training import loop
from atlas_lib.training.common import Parts, run_method, with_lora


class AtlasGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with its sampling (generation and reward) timed for the compute ledger."""

    def _generate_and_score_completions(self, inputs):
        t0 = time.monotonic()
        out = super()._generate_and_score_completions(inputs)
        if (ledger := getattr(self, "atlas_ledger", None)) is not None and self.model.training:
            tokens = float(out["prompt_mask"].sum() + out["completion_mask"].sum())
            ledger.sampled(time.monotonic() - t0, tokens)
            ledger.trained(tokens)  # every rollout goes through the policy's forward and backward
        return out


def trl_config(params: Params, common: dict) -> TRLGRPOConfig:
    g = params.grpo
    return TRLGRPOConfig(
        **common, num_generations=g.num_generations, max_completion_length=g.max_completion_length,
        temperature=g.temperature, loss_type=g.loss_type, beta=g.beta, scale_rewards=g.scale_rewards,
        use_vllm=g.use_vllm, vllm_mode=g.vllm_mode, remove_unused_columns=False, log_completions=False,
    )


def _build(params: Params, prepared, device) -> Parts:
    g = params.grpo
    trc = params.models.trust_remote_code
    student, tok = models.load_model(params.models.student, dtype=loop.student_dtype(g, params, device), device=device,
                                     trust_remote_code=trc, for_training=True)
    student = with_lora(student, g, "grpo")
    loader = t_tok = None
    if params.evaluation.reverse_kl:  # loaded at each eval point and freed after: training memory stays the student's
        t_tok = models.load_tokenizer(params.models.teacher, trc)

        def loader():
            return models.load_model(params.models.teacher, dtype=models.teacher_dtype(params, device),
                                     device=device, trust_remote_code=trc)[0]
    train_ds = Dataset.from_list(splits.grpo_view(prepared.train, params.prompt))
    tok.padding_side = "left"
    # a rollout ends in one of these exactly when it stopped (TRL's own truncation test): the rest were cut
    rewards = reward_functions(g.reward_funcs, stop_ids=[*eos_token_ids(student, tok), tok.pad_token_id])

    def make(common: dict, callbacks: list):
        return AtlasGRPOTrainer(model=student, reward_funcs=rewards, args=trl_config(params, common),
                           train_dataset=train_ds, processing_class=tok, callbacks=callbacks)

    pinned = {k: getattr(g, k) for k in ("loss_type", "beta", "scale_rewards", "num_generations", "learning_rate")}
    return Parts(student, tok, make, teacher_tokenizer=t_tok, teacher_loader=loader,
                 extra_summary={"trl_settings": pinned})


def run_grpo(params: Params) -> dict:
    """Train the student with GRPO on the prepared data; returns the run summary."""
    return run_method(params, "grpo", _build)
