"""Whether a validation curve has flattened: the change over its last eval interval, with its interval.

A curve that is still rising answers nothing about efficiency: compute to match read off it would move
with a longer budget. So for each method that trains the shared student the report gives the change in validation accuracy
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
    """The last eval interval of one method (its finished seeds), paired over validation problems."""

    key: str
    steps: list[tuple[int | None, int, int]]  # (seed, before, after) per finished seed
    paired: stats.Paired
    seeds_total: int = 1  # seeds the method trains (some may not have finished)

    @property
    def verdict(self) -> str:
        if self.paired.ci_low > 0:
            return "still rising"
        if self.paired.ci_high < 0:
            return "falling"
        return "no change detected"


def end_points(steps: list[int]) -> tuple[int, int]:
    """The last eval step and the one before it, or the one before that when the last gap is under half
    the schedule's interval (a budget stop one step after a scheduled point: 18 -> 25, not 24 -> 25)."""
    steps = sorted(steps)
    if len(steps) < 3:
        return steps[-2], steps[-1]
    spacing = max(b - a for a, b in zip(steps[:-2], steps[1:-1], strict=True))
    before = steps[-2] if 2 * (steps[-1] - steps[-2]) >= spacing else steps[-3]
    return before, steps[-1]


def last_change(col: Collected, key: str) -> Change | None:
    """``key``'s change over its last eval interval, over the seeds that finished (status complete, a test
    row, two or more eval points); None when none did. A seed still running or not started is left out, so
    an interrupted study reads its finished seeds rather than a curve cut mid-budget."""
    pairs = col.seeds.get(key, [(None, key)])
    done = [(s, col.runs[k]) for s, k in pairs if k in col.runs and col.runs[k].status == "complete"
            and col.correct.get(k) and len(col.runs[k].val_outcomes) >= 2]
    if not done:
        return None
    steps = [(s, *end_points(list(r.val_outcomes))) for s, r in done]
    after = [r.val_outcomes[b] for (_, r), (_, _, b) in zip(done, steps, strict=True)]
    before = [r.val_outcomes[a] for (_, r), (_, a, _) in zip(done, steps, strict=True)]
    try:
        paired = stats.paired_seeds(after, before)
    except ValueError:  # the two points share no validation problem
        return None
    return Change(key, steps, paired, len(pairs))


def _steps_text(steps: list[tuple[int | None, int, int]]) -> str:
    if len({(a, b) for _, a, b in steps}) == 1:
        return f"steps {steps[0][1]} -> {steps[0][2]}"
    return "steps " + ", ".join(f"{a} -> {b} (seed {s})" for s, a, b in steps)


def change_text(col: Collected, ch: Change) -> str:
    """One sentence: the change, its interval, its verdict and what follows for the efficiency reading."""
    p, name = ch.paired, col.runs[ch.key].name
    seeds = (f", mean of {p.seeds} seeds" if p.seeds > 1 else "") + (
        f"; {p.seeds} of {ch.seeds_total} seeds finished" if p.seeds < ch.seeds_total else "")
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
    """One sentence per method with a finished seed (the findings pass the methods that train the shared
    student: cross-tokenizer arms train their own and get none)."""
    return [change_text(col, ch) for k in methods if (ch := last_change(col, k)) is not None]
