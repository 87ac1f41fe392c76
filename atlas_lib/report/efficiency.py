"""Compute to match: the training compute each method needed to reach the other's final accuracy.

The on-policy distillation literature states efficiency as a ratio read off accuracy-against-compute
curves (Thinking Machines: 9-30x less compute than RL). Here the curve of a run is its validation
accuracy at each eval point against the training compute spent so far (the compute ledger's
``train_flops`` and ``train_device_hours``: sampling, teacher scoring and optimisation, evaluation
never in it). For methods A and B, trained at the same seeds, seed i of A is read against seed i of B:
the FLOPs A needed to reach B's final validation accuracy (linear between eval points; 0 when A's
step 0 already scores that; *not reached* when its curve never does), and that as a ratio of what B
spent to get there. Across seeds the text gives the median and the range, and how many seeds reached.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pandas as pd

from atlas_lib.report.collect import Collected, RunInfo

X_COLS = ("train_flops", "train_device_hours")


def curve(info: RunInfo) -> pd.DataFrame | None:
    """A run's eval points with accuracy and training compute, in step order (None: no ledger)."""
    e = info.evals
    if not len(e) or "accuracy" not in e or any(c not in e for c in X_COLS):
        return None
    d = e.dropna(subset=["accuracy", *X_COLS]).sort_values("step")
    return d if len(d) >= 2 else None


def reach(d: pd.DataFrame, target: float, x: str = "train_flops") -> float | None:
    """Compute ``x`` at which the curve first reaches ``target`` accuracy (linear between eval points)."""
    prev = None
    for _, r in d.iterrows():
        if r["accuracy"] >= target - 1e-12:
            if prev is None:
                return float(r[x])
            frac = (target - prev["accuracy"]) / (r["accuracy"] - prev["accuracy"])
            return float(prev[x] + frac * (r[x] - prev[x]))
        prev = r
    return None


@dataclass
class Match:
    """Method ``a`` read against method ``b``'s final validation accuracy, one entry per seed pair."""

    a: str
    b: str
    targets: list[float]  # b's final validation accuracy per seed
    flops: list[float | None]  # a's training FLOPs to reach it (None: not reached)
    hours: list[float | None]
    b_flops: list[float]  # what b spent in all
    b_hours: list[float]

    @property
    def ratios(self) -> list[float]:
        return [f / bf for f, bf in zip(self.flops, self.b_flops, strict=True) if f is not None and bf > 0]


def _seed_runs(col: Collected, key: str) -> list[RunInfo]:
    pairs = col.seeds.get(key) or [(0, key)]
    return [col.runs[k] for _, k in pairs if k in col.runs]


def compute_to_match(col: Collected, a: str, b: str) -> Match | None:
    """A's training compute to reach B's final validation accuracy, seed by seed (None: no curves)."""
    ra, rb = _seed_runs(col, a), _seed_runs(col, b)
    if not ra or not rb or any(i.summary.get("did_not_train") for i in ra + rb):
        return None
    if len(ra) == 1:
        ra = ra * len(rb)
    if len(rb) == 1:
        rb = rb * len(ra)
    m = Match(a, b, [], [], [], [], [])
    for ia, ib in zip(ra, rb, strict=False):
        da, db = curve(ia), curve(ib)
        if da is None or db is None:
            return None
        last = db.iloc[-1]
        target = float(last["accuracy"])
        m.targets.append(target)
        m.flops.append(reach(da, target, "train_flops"))
        m.hours.append(reach(da, target, "train_device_hours"))
        m.b_flops.append(float(last["train_flops"]))
        m.b_hours.append(float(last["train_device_hours"]))
    return m


def _range(xs: list[float], fmt) -> str:
    if len(xs) == 1 or fmt(min(xs)) == fmt(max(xs)):
        return fmt(xs[0])
    return f"{fmt(statistics.median(xs))} (seeds {fmt(min(xs))}-{fmt(max(xs))})"


def match_text(col: Collected, m: Match, unit: str) -> str:
    """'GKD reached GRPO's final validation accuracy (52.0%) with 1.2e+15 training FLOPs (0.31 CPU-hours),
    0.30x what GRPO spent (3 of 3 seeds)'."""
    name_a, name_b = col.runs[m.a].name, col.runs[m.b].name
    target = _range([100 * t for t in m.targets], lambda x: f"{x:.1f}%")
    reached = [i for i, f in enumerate(m.flops) if f is not None]
    k = len(m.flops)
    seeds = f" ({len(reached)} of {k} seeds)" if k > 1 else ""
    if not reached:
        spent = _range(m.b_flops, lambda x: f"{x:.2e}")
        return f"{name_a} did not reach {name_b}'s final validation accuracy ({target}) within its budget{seeds}; " \
               f"{name_b} spent {spent} training FLOPs"
    if all(m.flops[i] == 0 for i in reached) and len(reached) == k:
        return f"{name_a} scored {name_b}'s final validation accuracy ({target}) before training{seeds}"
    flops = _range([m.flops[i] for i in reached], lambda x: f"{x:.2e}")
    hours = _range([m.hours[i] for i in reached if m.hours[i] is not None], lambda x: f"{x:.3g}")
    ratio = _range(m.ratios, lambda x: f"{x:.2f}x") if m.ratios else "n/a"
    return (f"{name_a} reached {name_b}'s final validation accuracy ({target}) with {flops} training FLOPs "
            f"({hours} {unit}), {ratio} what {name_b} spent{seeds}")


def validation_n(col: Collected) -> float | None:
    """The validation split's size at the eval points (the curves' n)."""
    for info in col.runs.values():
        if len(info.evals) and "n" in info.evals:
            n = float(info.evals["n"].iloc[-1])  # numpy's int64 is no Python int
            if math.isfinite(n):
                return n
    return None
