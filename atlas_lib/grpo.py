"""RLVR baseline: a thin runner over TRL's ``GRPOTrainer`` with the kit's one grader as reward.

The reward is ``atlas_lib.answers.is_correct`` (1.0 / 0.0), the very function the evaluator uses,
so "correct" means the same thing for training signal and for the reported accuracy. TRL changed
``loss_type`` and ``beta`` defaults across versions; the kit always passes them explicitly from
the params, and the summary records which values applied.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from trl import GRPOConfig as TRLGRPOConfig
from trl import GRPOTrainer

from atlas_lib import answers
from atlas_lib.config import Params, ParamsError
from atlas_lib.tracking import NonFiniteError

log = logging.getLogger(__name__)


def _text(completion) -> str:
    """TRL passes conversational completions as message lists, plain ones as strings."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def exact_match_reward(completions: list, answer: list[str], **kwargs) -> list[float]:
    """1.0 when the shared grader accepts the completion's final answer, else 0.0."""
    return [1.0 if answers.is_correct(_text(c), str(a)) else 0.0 for c, a in zip(completions, answer, strict=True)]


def format_reward(completions: list, **kwargs) -> list[float]:
    """0.1 when a final answer can be extracted at all (off by default; shaping, not correctness)."""
    return [0.1 if answers.extract_answer(_text(c)) is not None else 0.0 for c in completions]


REWARDS: dict[str, Callable] = {"exact_match": exact_match_reward, "format": format_reward}


def reward_functions(names: list[str]) -> list[Callable]:
    unknown = [n for n in names if n not in REWARDS]
    if unknown or not names:
        raise ParamsError(f"grpo.reward_funcs = {names!r}: choose from {', '.join(REWARDS)}")
    return [_guard(REWARDS[n]) for n in names]


def _guard(fn: Callable) -> Callable:
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        bad = [r for r in out if r is None or not math.isfinite(r)]
        if bad:
            state = kwargs.get("trainer_state")
            step = state.global_step + 1 if state is not None else "?"
            raise NonFiniteError(f"reward {fn.__name__} returned {bad[0]} at step {step}; the run stopped there")
        return out

    wrapped.__name__ = fn.__name__
    return wrapped


def trl_config(params: Params, common: dict) -> TRLGRPOConfig:
    g = params.grpo
    return TRLGRPOConfig(
        **common, num_generations=g.num_generations, max_completion_length=g.max_completion_length,
        temperature=g.temperature, loss_type=g.loss_type, beta=g.beta, scale_rewards=g.scale_rewards,
        use_vllm=g.use_vllm, vllm_mode=g.vllm_mode, remove_unused_columns=False, log_completions=False,
    )


def run_grpo(params: Params) -> dict:
    """Train the student with GRPO on the prepared data; returns the run summary."""
    from datasets import Dataset

    from atlas_lib import data as data_mod
    from atlas_lib import models, training
    from atlas_lib.stages import baseline_records, build_eval_fn, seed_everything, teacher_dtype

    g = params.grpo
    if (g.per_device_train_batch_size * g.gradient_accumulation_steps) % g.num_generations:
        raise ParamsError(f"grpo: per_device_train_batch_size x gradient_accumulation_steps = "
                          f"{g.per_device_train_batch_size * g.gradient_accumulation_steps} rollouts per step must be "
                          f"a multiple of grpo.num_generations = {g.num_generations}")
    rewards = reward_functions(g.reward_funcs)
    seed_everything(params)
    prepared = data_mod.load_prepared(params)
    device = models.resolve_device(params.run.device)
    trc = params.models.trust_remote_code
    student, tok = models.load_model(params.models.student, dtype=training.student_dtype(g), device=device,
                                     trust_remote_code=trc, for_training=True)
    loader = t_tok = None
    if params.evaluation.reverse_kl:  # for the reported reverse-KL column only; GRPO never sees it,
        # so it is loaded at each eval point and freed after (training memory stays the student's)
        t_tok = models.load_tokenizer(params.models.teacher, trc)
        loader = lambda: models.load_model(params.models.teacher, dtype=teacher_dtype(params, device),  # noqa: E731
                                           device=device, trust_remote_code=trc)[0]
    train_ds = Dataset.from_list(data_mod.grpo_view(prepared.train, params.prompt, None))
    eval_fn = build_eval_fn(params, prepared, tok, teacher_tok=t_tok, teacher_loader=loader)
    tok.padding_side = "left"

    def make(common: dict, callbacks: list):
        return GRPOTrainer(model=student, reward_funcs=rewards, args=trl_config(params, common),
                           train_dataset=train_ds, processing_class=tok, callbacks=callbacks)

    pinned = {k: getattr(g, k) for k in ("loss_type", "beta", "scale_rewards", "num_generations", "learning_rate")}
    final_fn = build_eval_fn(params, prepared, tok, teacher_tok=t_tok, teacher_loader=loader, during_training=False)
    return training.run(params, "grpo", make, eval_fn=eval_fn, device=device, final_eval_fn=final_fn,
                        initial_records=baseline_records(params), model=student,
                        dataset_sizes={"train": len(prepared.train), "eval": len(prepared.eval)},
                        extra_summary={"trl_settings": pinned,
                                       "divergence_label": "mean reverse KL to the teacher (same tokenizer)"})
