"""The NaN guard: a loss or reward that becomes NaN/inf stops the run at that step, its metrics and
last checkpoint kept."""

from __future__ import annotations

import math


class NonFiniteError(FloatingPointError):
    """The loss or reward became NaN/inf; the run stops at that step with its metrics kept."""


def check_finite(name: str, value: float, step: int) -> None:
    if value is not None and isinstance(value, (int, float)) and not math.isfinite(value):
        raise NonFiniteError(f"{name} became {value} at step {step}; the run stopped there and kept "
                             "its metrics and last checkpoint (lower the learning rate or check the data)")
