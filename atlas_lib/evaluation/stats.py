"""Statistics that fit the design: paired comparisons on the same held-out problems.

Every method is evaluated on the same problems as the untrained student, so two rows are paired
data: what matters is the problems one got right and the other wrong (the discordant pairs), not
whether two unpaired intervals overlap. :func:`paired` gives the difference in accuracy with a
paired-bootstrap 95% interval and the exact McNemar p-value (a two-sided binomial test on the
discordant pairs); :func:`min_detectable_difference` says how large a paired difference the run's n
can detect at all.

With several training seeds per method (:func:`paired_seeds`) the unit of evidence is still the
problem: the seeds of one problem are not independent draws (seeds of one method agree on most
problems), so no test here treats seed x problem pairs as independent. The interval is a cluster
bootstrap (resample problems, each with all its seeds); the p-value an exact sign test over problems
on each problem's mean-over-seeds difference; the counts are problems gained (lost) on a majority of
seeds; each seed's own McNemar test is kept beside. With one seed, or when every seed agrees on
every problem, these are exactly the one-seed paired test (same bootstrap draws, same p).
:func:`holm` adjusts the p-values of the comparisons declared primary for their number (Holm's
step-down).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as sps

Z_95 = 1.959963984540054
Z_80 = 0.8416212335729143


@dataclass
class Paired:
    """A against B on the problems both were evaluated on."""

    n: int
    acc_a: float
    acc_b: float
    diff: float  # acc_a - acc_b
    ci_low: float
    ci_high: float
    p_value: float
    a_only: int  # problems A got right and B wrong (with seeds: on a majority of the seed pairs)
    b_only: int
    seeds: int = 1  # seed pairs compared
    test: str = "exact McNemar"  # what p_value is
    sign_a: int = 0  # problems whose mean difference over seeds favours A (the sign test's counts)
    sign_b: int = 0
    seed_p_values: list[float] = field(default_factory=list)  # each seed pair's own exact McNemar p
    seed_discordant: list[int] = field(default_factory=list)  # each seed pair's discordant problems

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def discordance(self) -> float:
        """The share of problems discordant in one seed pair (the mean over seed pairs): what one seed's
        McNemar test, and so the power sentence, works with."""
        return sum(self.seed_discordant) / len(self.seed_discordant) / self.n if self.seed_discordant else math.nan


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs under H0 are Binomial(a_only + b_only, 1/2)."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"mcnemar_exact: counts must be >= 0, got {a_only}, {b_only}")
    m = a_only + b_only
    if m == 0:
        return 1.0
    return float(sps.binomtest(a_only, m, 0.5, alternative="two-sided").pvalue)


def bootstrap_ci(diff_n: np.ndarray, resamples: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of per-problem differences (-1, 0, 1), resampling problems."""
    diff_n = np.asarray(diff_n, dtype=np.float64)
    if diff_n.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx_R_n = rng.integers(0, diff_n.size, size=(resamples, diff_n.size))
    means_R = diff_n[idx_R_n].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means_R, tail)), float(np.quantile(means_R, 1 - tail))


def paired(correct_a: dict, correct_b: dict, *, resamples: int = 10_000, seed: int = 0) -> Paired:
    """Compare two evaluations given as ``{problem id: correct}`` on the ids both contain (the one-seed
    case of :func:`paired_seeds`)."""
    return paired_seeds([correct_a], [correct_b], resamples=resamples, seed=seed)


def min_detectable_difference(n: int, discordance: float, power: float = 0.8) -> float:
    """Smallest paired difference in accuracy a two-sided 5% McNemar test detects with ``power``
    on n problems, when a fraction ``discordance`` of problems are discordant (Connor's normal
    approximation with a small difference: (z_0.975 + z_power) * sqrt(discordance / n))."""
    if n <= 0:
        return math.nan
    z_power = float(sps.norm.ppf(power))
    return (Z_95 + z_power) * math.sqrt(max(discordance, 0.0) / n)


def paired_seeds(correct_a: list[dict], correct_b: list[dict], *, resamples: int = 10_000, seed: int = 0) -> Paired:
    """A against B when either ran several training seeds: seed i of A is paired with seed i of B (a
    single-seed side, such as the untrained student, pairs with every seed of the other).

    Each problem's outcome is its mean over the seed pairs of the paired difference (-1..1). ``diff``
    is the mean of those over problems; the 95% interval is a cluster bootstrap that resamples problems
    with all their seeds together (the same problem-index draws as :func:`bootstrap_ci`); the p-value
    is the exact two-sided sign test on the problems whose mean difference is not 0 (``sign_a`` vs
    ``sign_b``); ``a_only`` / ``b_only`` count problems A (B) won on a majority of the seed pairs;
    ``seed_p_values`` are each seed pair's own McNemar tests. ``n`` counts problems. With one seed pair
    all of this is :func:`paired`'s McNemar test and paired bootstrap."""
    k = max(len(correct_a), len(correct_b))
    if not correct_a or not correct_b or (len(correct_a) != len(correct_b) and min(len(correct_a), len(correct_b)) != 1):
        raise ValueError(f"paired_seeds: {len(correct_a)} and {len(correct_b)} seeds cannot be paired")
    a_list = correct_a * k if len(correct_a) == 1 else correct_a
    b_list = correct_b * k if len(correct_b) == 1 else correct_b
    ids = sorted(set.intersection(*(set(d) for d in a_list + b_list)))
    if not ids:
        raise ValueError("paired: the two evaluations share no problem ids")
    a_S_n = np.array([[bool(d[i]) for i in ids] for d in a_list], dtype=np.float64)
    b_S_n = np.array([[bool(d[i]) for i in ids] for d in b_list], dtype=np.float64)
    d_S_n = a_S_n - b_S_n
    # The problem is the unit: its seeds' outcomes move together, so they are averaged before any test
    d_n = d_S_n.mean(axis=0)
    lo, hi = bootstrap_ci(d_n, resamples, seed)
    sign_a, sign_b = int((d_n > 0).sum()), int((d_n < 0).sum())
    wins_n, losses_n = (d_S_n > 0).sum(axis=0), (d_S_n < 0).sum(axis=0)
    a_only, b_only = int((2 * wins_n > k).sum()), int((2 * losses_n > k).sum())
    seed_a, seed_b = (d_S_n > 0).sum(axis=1), (d_S_n < 0).sum(axis=1)
    return Paired(n=len(ids), acc_a=float(a_S_n.mean()), acc_b=float(b_S_n.mean()), diff=float(d_n.mean()),
                  ci_low=lo, ci_high=hi, p_value=mcnemar_exact(sign_a, sign_b), a_only=a_only, b_only=b_only,
                  seeds=k, test="exact McNemar" if k == 1 else "exact sign test over problems",
                  sign_a=sign_a, sign_b=sign_b,
                  seed_p_values=[mcnemar_exact(int(x), int(y)) for x, y in zip(seed_a, seed_b, strict=True)],
                  seed_discordant=[int(x + y) for x, y in zip(seed_a, seed_b, strict=True)])


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error rate) of ``p_values``, in their order
    (statsmodels' ``multipletests``): the i-th smallest times (m - i + 1), made monotone, capped at 1."""
    if not p_values:
        return []
    from statsmodels.stats.multitest import multipletests  # only the report needs it

    return [float(p) for p in multipletests(p_values, alpha=0.05, method="holm")[1]]
