"""Compute to match: the training compute each method needed to reach the other's final accuracy.

The on-policy distillation literature states efficiency as a ratio read off accuracy-against-compute
curves (Thinking Machines: 9-30x less compute than RL). Here the curve of a run is its validation
accuracy at each eval point against the training compute spent so far (the compute ledger's
``train_flops`` and ``train_device_hours``: sampling, teacher scoring and optimisation, evaluation
never in it). For methods A and B, trained at the same seeds, seed i of A is read against seed i of B:
the FLOPs A needed to reach B's final validation accuracy (linear between eval points), and that as a
ratio of what B spent in all. Across seeds the text gives the median and the range, and the spacing of
the eval points the ratio was interpolated over.

A ratio is given only where it is defined (:func:`compute_to_match` labels each seed pair):

- *not improved*: B's final validation accuracy is at or below the untrained student's (B's first
  eval point, or A's if that is higher): there is nothing to match, and a ratio would read 0.
- *unresolved*: B's gain over the untrained student is smaller than the validation split's 95%
  resolution, ``1.96 * sqrt((p0 (1 - p0) + p1 (1 - p1)) / n)`` for start p0 and target p1 (the
  half-width of a 95% interval for the difference of two eval points; the curves keep no per-problem
  validation outcomes to pair them, so the unpaired width is the one available). The curves cannot be
  told apart there (at n = 12 a gain under ~37 points), so no ratio is read off them.
- *never*: A's curve never reached the target within its budget.
- *ratio*: otherwise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import pandas as pd

from atlas_lib.evaluation.stats import Z_95
from atlas_lib.report.collect import Collected, RunInfo

X_COLS = ("train_flops", "train_device_hours")


def curve(info: RunInfo) -> pd.DataFrame | None:
    """A run's eval points with accuracy and training compute, in step order (None: no ledger)."""
    e = info.evals
    if not len(e) or "accuracy" not in e or any(c not in e for c in X_COLS):
        return None
    d = e.dropna(subset=["accuracy", *X_COLS]).sort_values("step")
    return d if len(d) >= 2 else None


def bracket(d: pd.DataFrame, target: float) -> tuple[pd.Series, pd.Series] | None:
    """The two eval points the curve first reaches ``target`` between (the same point twice when an eval
    point reaches it exactly or the first one already does); None when it never does."""
    prev = None
    for _, r in d.iterrows():
        if r["accuracy"] >= target - 1e-12:
            if prev is None or abs(r["accuracy"] - target) <= 1e-12:
                return r, r
            return prev, r
        prev = r
    return None


def reach(d: pd.DataFrame, target: float, x: str = "train_flops") -> float | None:
    """Compute ``x`` at which the curve first reaches ``target`` accuracy (linear between eval points)."""
    b = bracket(d, target)
    if b is None:
        return None
    lo, hi = b
    if lo is hi:
        return float(hi[x])
    frac = (target - lo["accuracy"]) / (hi["accuracy"] - lo["accuracy"])
    return float(lo[x] + frac * (hi[x] - lo[x]))


def resolution(start: float, target: float, n: float | None) -> float:
    """The validation split's 95% resolution between two eval points at accuracies ``start`` and
    ``target`` on ``n`` problems (see the module docstring); 0 when n is unknown."""
    if not n or not math.isfinite(n) or n <= 0:
        return 0.0
    return Z_95 * math.sqrt((start * (1 - start) + target * (1 - target)) / n)


@dataclass
class SeedMatch:
    """One seed pair: A's curve read against B's final validation accuracy."""

    seed: int | None
    outcome: str  # "ratio", "never", "not improved" or "unresolved" (module docstring)
    target: float  # B's final validation accuracy
    start: float  # the untrained student's validation accuracy (the curves' first point)
    n: float | None  # the validation split's size
    resolution: float  # its 95% resolution between start and target
    a_best: float  # A's best validation accuracy
    a_flops_total: float  # what A spent in all
    b_flops: float  # what B spent in all
    b_hours: float
    flops: float | None = None  # A's training FLOPs to reach the target (outcome "ratio")
    hours: float | None = None
    spacing: float | None = None  # training FLOPs between the two eval points interpolated over (0: read at one)


@dataclass
class Match:
    """Method ``a`` read against method ``b``'s final validation accuracy, one entry per seed pair."""

    a: str
    b: str
    seeds: list[SeedMatch] = field(default_factory=list)
    pairs: int = 0  # the seed pairs the params ask for; a pair with a seed not finished has no entry in seeds

    @property
    def ratios(self) -> list[float]:
        return [s.flops / s.b_flops for s in self.seeds if s.outcome == "ratio" and s.b_flops > 0]


def _seed_runs(col: Collected, key: str) -> list[tuple[int | None, RunInfo]]:
    pairs = col.seeds.get(key) or [(None, key)]
    return [(s, col.runs[k]) for s, k in pairs if k in col.runs]


def _n(d: pd.DataFrame) -> float | None:
    if "n" not in d:
        return None
    n = float(d["n"].iloc[-1])
    return n if math.isfinite(n) else None


def compute_to_match(col: Collected, a: str, b: str) -> Match | None:
    """A's training compute to reach B's final validation accuracy, seed by seed (None: no curves)."""
    ra, rb = _seed_runs(col, a), _seed_runs(col, b)
    if not ra or not rb or any(i.summary.get("did_not_train") for _, i in ra + rb):
        return None
    if len(ra) == 1:
        ra = ra * len(rb)
    if len(rb) == 1:
        rb = rb * len(ra)
    m = Match(a, b, pairs=min(len(ra), len(rb)))
    for (sa, ia), (sb, ib) in zip(ra, rb, strict=False):
        da, db = curve(ia), curve(ib)
        if da is None or db is None:  # a seed not run yet (a study part-way): the finished pairs still read
            continue
        last = db.iloc[-1]
        target = float(last["accuracy"])
        start = max(float(db.iloc[0]["accuracy"]), float(da.iloc[0]["accuracy"]))
        n = _n(db)
        res = resolution(start, target, n)
        sm = SeedMatch(sa if sa is not None else sb, "ratio", target, start, n, res, float(da["accuracy"].max()),
                       float(da.iloc[-1]["train_flops"]), float(last["train_flops"]),
                       float(last["train_device_hours"]))
        if target <= start + 1e-12:
            sm.outcome = "not improved"
        elif target - start < res:
            sm.outcome = "unresolved"
        elif (br := bracket(da, target)) is None:
            sm.outcome = "never"
        else:
            sm.flops, sm.hours = reach(da, target, "train_flops"), reach(da, target, "train_device_hours")
            sm.spacing = float(br[1]["train_flops"] - br[0]["train_flops"])
        m.seeds.append(sm)
    return m if m.seeds else None


def _range(xs: list[float], fmt) -> str:
    if len(xs) == 1 or fmt(min(xs)) == fmt(max(xs)):
        return fmt(xs[0])
    return f"{fmt(statistics.median(xs))} (seeds {fmt(min(xs))}-{fmt(max(xs))})"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ratio(x: float) -> str:
    # two decimals hide a small ratio as 0.00x: significant digits below 0.1
    return f"{x:.2f}x" if x >= 0.1 else f"{x:.2g}x"


def match_text(col: Collected, m: Match, unit: str) -> str:
    """One clause per kind of outcome over the seed pairs, e.g. 'GKD reached GRPO's final validation
    accuracy (52.0%) with 1.2e+15 training FLOPs (0.31 CPU-hours), 0.30x what GRPO spent (interpolated
    between eval points 4.0e+14 training FLOPs apart)'; 'GRPO did not improve on the untrained student's
    validation accuracy (38.0% -> 38.0%), so no compute to match it is defined'."""
    name_a, name_b = col.runs[m.a].name, col.runs[m.b].name
    k = max(m.pairs, len(m.seeds))

    def tag(group: list[SeedMatch]) -> str:
        if k == 1:
            return ""
        which = ", ".join(str(s.seed) for s in group)
        return f" (seed{'s' if len(group) > 1 else ''} {which}: {len(group)} of {k})"

    by = {o: [s for s in m.seeds if s.outcome == o] for o in ("ratio", "never", "not improved", "unresolved")}
    parts = []
    if g := by["ratio"]:
        target = _range([s.target for s in g], _pct)
        flops = _range([s.flops for s in g], lambda x: f"{x:.2e}")
        hs = [s.hours for s in g if s.hours is not None]
        hours = _range(hs, lambda x: f"{x:.3g}") if hs else "not recorded"
        ratios = [s.flops / s.b_flops for s in g if s.b_flops > 0]
        ratio = f"{_range(ratios, _ratio)} what {name_b} spent" if ratios else f"{name_b}'s spending not recorded"
        spacing = [s.spacing for s in g if s.spacing]
        how = (f"interpolated between eval points {_range(spacing, lambda x: f'{x:.2e}')} training FLOPs apart"
               if spacing else "read at an eval point")
        parts.append(f"{name_a} reached {name_b}'s final validation accuracy ({target}) with {flops} training FLOPs "
                     f"({hours} {unit}), {ratio} ({how}){tag(g)}")
    if g := by["never"]:
        parts.append(f"{name_a}'s validation curve never reached {name_b}'s final validation accuracy "
                     f"({_range([s.target for s in g], _pct)}; its best {_range([s.a_best for s in g], _pct)}) within "
                     f"its {_range([s.a_flops_total for s in g], lambda x: f'{x:.2e}')} training FLOPs, so the "
                     f"curves never cross{tag(g)}")
    if g := by["not improved"]:
        parts.append(f"{name_b} did not improve on the untrained student's validation accuracy "
                     f"({_range([s.start for s in g], _pct)} -> {_range([s.target for s in g], _pct)}), so "
                     f"{name_a}'s compute to match it is not defined{tag(g)}")
    if g := by["unresolved"]:
        n = _range([s.n for s in g if s.n], lambda x: f"{x:.0f}") if any(s.n for s in g) else "?"
        parts.append(f"{name_b}'s validation gain ({_range([s.start for s in g], _pct)} -> "
                     f"{_range([s.target for s in g], _pct)}) is within what the validation split (n = {n}) can tell "
                     f"apart (95% resolution {_range([100 * s.resolution for s in g], lambda x: f'{x:.1f}')} points), "
                     f"so no compute-to-match ratio of {name_a} against it is given{tag(g)}")
    if len(m.seeds) < k:
        parts.append(f"{k - len(m.seeds)} of {k} seed pairs not finished, so not read")
    return "; ".join(parts)


def validation_n(col: Collected) -> float | None:
    """The validation split's size at the eval points (the curves' n)."""
    for info in col.runs.values():
        if len(info.evals) and "n" in info.evals:
            n = float(info.evals["n"].iloc[-1])  # numpy's int64 is no Python int
            if math.isfinite(n):
                return n
    return None
