"""GRPO's rewards: the kit's one grader (:func:`atlas_lib.data.answers.is_correct`, the very function
the evaluator uses), so "correct" means the same thing for training signal and for reported accuracy.

A rollout cut at ``max_completion_length`` is graded as cut, as the evaluator grades a record whose
``truncated`` is set: TRL passes each rollout's ``completion_ids``, which end in a stop token exactly
when the rollout stopped (TRL's own test for ``mask_truncated_completions``); the trainer gives
:func:`reward_functions` the stop ids (the EOS ids and the pad id)."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

from atlas_lib.data import answers
from atlas_lib.methods.grpo.config import REWARD_NAMES
from atlas_lib.training.finite import NonFiniteError


def _text(completion) -> str:
    """TRL passes conversational completions as message lists, plain ones as strings."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def truncated_flags(completion_ids: list | None, stop_ids: Collection[int], n: int) -> list[bool]:
    """Per rollout: cut at the budget (its ids do not end in a stop token). Without ids or stop ids
    nothing is known, and every rollout is graded as finished."""
    if completion_ids is None or not stop_ids:
        return [False] * n
    return [bool(ids) and int(ids[-1]) not in stop_ids for ids in completion_ids]


def exact_match_reward(completions: list, answer: list[str], completion_ids: list | None = None,
                       stop_ids: Collection[int] = (), **kwargs) -> list[float]:
    """1.0 when the shared grader accepts the completion's final answer, else 0.0."""
    cut = truncated_flags(completion_ids, stop_ids, len(completions))
    return [1.0 if answers.is_correct(_text(c), str(a), truncated=t) else 0.0
            for c, a, t in zip(completions, answer, cut, strict=True)]


def format_reward(completions: list, completion_ids: list | None = None, stop_ids: Collection[int] = (),
                  **kwargs) -> list[float]:
    """0.1 when a final answer can be extracted at all (off by default; shaping, not correctness)."""
    cut = truncated_flags(completion_ids, stop_ids, len(completions))
    return [0.1 if answers.extract_answer(_text(c), truncated=t) is not None else 0.0
            for c, t in zip(completions, cut, strict=True)]


REWARDS: dict[str, Callable] = {"exact_match": exact_match_reward, "format": format_reward}


assert tuple(REWARDS) == REWARD_NAMES, "grpo.reward_funcs' allowed names and REWARDS must agree"


def reward_functions(names: list[str], stop_ids: Collection[int] = ()) -> list[Callable]:
    """The named rewards (validated by the grpo section), each guarded against non-finite values;
    ``stop_ids``: the token ids that end a rollout (EOS ids and pad), so a cut one is graded as cut."""
    return [_guard(REWARDS[n], frozenset(int(i) for i in stop_ids if i is not None)) for n in names]


def _guard(fn: Callable, stop_ids: frozenset[int] = frozenset()) -> Callable:
    def wrapped(*args, **kwargs):
        out = fn(*args, stop_ids=stop_ids, **kwargs)
        bad = [r for r in out if r is None or not math.isfinite(r)]
        if bad:
            state = kwargs.get("trainer_state")
            step = state.global_step + 1 if state is not None else "?"
            raise NonFiniteError(f"reward {fn.__name__} returned {bad[0]} at step {step}; the run stopped there")
        return out

    wrapped.__name__ = fn.__name__
    return wrapped
