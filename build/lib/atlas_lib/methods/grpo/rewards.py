"""GRPO's rewards: the kit's one grader (:func:`atlas_lib.data.answers.is_correct`, the very function
the evaluator uses), so "correct" means the same thing for training signal and for reported accuracy."""

from __future__ import annotations

import math
from collections.abc import Callable

from atlas_lib.core.sections import REWARD_NAMES
from atlas_lib.data import answers
from atlas_lib.methods.tracking import NonFiniteError


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


assert tuple(REWARDS) == REWARD_NAMES, "grpo.reward_funcs' allowed names and REWARDS must agree"


def reward_functions(names: list[str]) -> list[Callable]:
    """The named rewards (validated by the grpo section), each guarded against non-finite values."""
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
