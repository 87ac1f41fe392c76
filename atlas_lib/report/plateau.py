"""Whether a validation curve has flattened: the change over its last eval interval, with its interval.

A curve that is still rising answers nothing about efficiency: compute to match read off it would move
with a longer budget. So for each trained method the report gives the change in validation accuracy
from the eval point one full eval interval before the last to the last (:func:`end_points`: a run
stopped by its FLOP budget one step after a scheduled point is read 18 -> 25, not 24 -> 25), paired on
the same validation problems (each run keeps its eval points' per-problem records), with the 95% interval of :func:`atlas_lib.evaluation.stats.paired_seeds`:
with several seeds each problem's change is its mean over the seeds, and the interval resamples problems
with all their seeds together. The sentence says which of three it is, either way:

- *still rising*: the interval lies above 0; the curve has not flattened within the budget;
- *falling*: the interval lies below 0;
- *no change detected*: the interval spans 0; a change smaller than its half-width cannot be excluded,
  so "flat" means flat at this resolution, not proven flat.
"""

from __future__ import annotations

from dataclasses import dataclass

from atlas_lib.evaluation import stats
from atlas_lib.report.collect import Collected


@dataclass
class Change:
    """The last eval interval of one method (all its seeds), paired over validation problems."""

    key: str
    steps: list[tuple[int, int]]  # (before, after) per seed
    paired: stats.Paired

    @property
    def verdict(self) -> str:
        if self.paired.ci_low > 0:
            return "still rising"
        if self.paired.ci_high < 0:
            return "falling"
        return "no change detected"


def end_points(steps: list[int]) -> tuple[int, int]:
    """The last eval step and the latest one at least the widest eval spacing before it (the schedule's
    interval; a budget stop adds a shorter last gap)."""
    steps = sorted(steps)
    last, spacing = steps[-1], max(b - a for a, b in zip(steps, steps[1:], strict=False))
    return max(s for s in steps[:-1] if last - s >= spacing), last


def last_change(col: Collected, key: str) -> Change | None:
    """``key``'s change over its last eval interval (None: a seed kept fewer than two eval points)."""
    runs = [col.runs[k] for _, k in col.seeds.get(key, [(None, key)]) if k in col.runs]
    if not runs or any(len(r.val_outcomes) < 2 for r in runs):
        return None
    steps = [end_points(list(r.val_outcomes)) for r in runs]
    after = [r.val_outcomes[b] for r, (_, b) in zip(runs, steps, strict=True)]
    before = [r.val_outcomes[a] for r, (a, _) in zip(runs, steps, strict=True)]
    try:
        paired = stats.paired_seeds(after, before)
    except ValueError:  # the two points share no validation problem
        return None
    return Change(key, steps, paired)


def _steps_text(steps: list[tuple[int, int]]) -> str:
    pairs = sorted(set(steps))
    if len(pairs) == 1:
        return f"steps {pairs[0][0]} -> {pairs[0][1]}"
    return "steps " + ", ".join(f"{a} -> {b}" for a, b in pairs) + " (by seed)"


def change_text(col: Collected, ch: Change) -> str:
    """One sentence: the change, its interval, its verdict and what follows for the efficiency reading."""
    p, name = ch.paired, col.runs[ch.key].name
    seeds = f", mean of {p.seeds} seeds" if p.seeds > 1 else ""
    head = (f"{name}'s validation accuracy moved {100 * p.diff:+.1f} points over its last eval interval "
            f"({_steps_text(ch.steps)}; 95% interval [{100 * p.ci_low:+.1f}, {100 * p.ci_high:+.1f}], "
            f"n = {p.n}{seeds}): ")
    tail = {"still rising": "still rising, so its curve had not flattened within the budget and a longer one "
                            "could change any compute-to-match reading",
            "falling": "falling at the end of its budget",
            "no change detected": "no change detected at this resolution (a change inside the interval "
                                  "cannot be excluded)"}[ch.verdict]
    return head + tail


def plateau_sentences(col: Collected, methods: list[str]) -> list[str]:
    """One sentence per method whose seeds each kept at least two eval points."""
    return [change_text(col, ch) for k in methods if (ch := last_change(col, k)) is not None]
