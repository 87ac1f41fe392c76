"""Statistics that fit the design: paired comparisons on the same held-out problems.

Every method is evaluated on the same problems as the untrained student, so two rows are paired
data: what matters is the problems one got right and the other wrong (the discordant pairs), not
whether two unpaired intervals overlap. :func:`paired` gives the difference in accuracy with a
paired-bootstrap 95% interval and the exact McNemar p-value (a two-sided binomial test on the
discordant pairs); :func:`min_detectable_difference` says how large a paired difference the run's n
can detect at all.

With several training seeds per method (:func:`paired_seeds`) a difference must hold over problems
*and* seeds: the interval is a two-level bootstrap (resample seeds, then problems within each), the
p-value the exact McNemar test on the discordant pairs pooled over the seed pairs. :func:`holm`
adjusts the p-values of the comparisons declared primary for their number (Holm's step-down).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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
    a_only: int  # problems A got right and B wrong
    b_only: int

    def as_dict(self) -> dict:
        return asdict(self)


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

    ``diff`` is the mean over seed pairs of the paired difference on their shared problems; the 95%
    interval resamples seed pairs and, within each, problems (so it widens when seeds disagree); the
    p-value is the exact McNemar test on the discordant pairs summed over the seed pairs; ``a_only`` and
    ``b_only`` are those sums; ``n`` counts problems (per seed pair)."""
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
    if k == 1:
        lo, hi = bootstrap_ci(d_S_n[0], resamples, seed)
    else:
        rng = np.random.default_rng(seed)
        seeds_R_S = rng.integers(0, k, size=(resamples, k))
        probs_R_S_n = rng.integers(0, len(ids), size=(resamples, k, len(ids)))
        means_R = d_S_n[seeds_R_S[..., None], probs_R_S_n].mean(axis=(1, 2))
        lo, hi = float(np.quantile(means_R, 0.025)), float(np.quantile(means_R, 0.975))
    a_only, b_only = int((d_S_n > 0).sum()), int((d_S_n < 0).sum())
    return Paired(n=len(ids), acc_a=float(a_S_n.mean()), acc_b=float(b_S_n.mean()), diff=float(d_S_n.mean()),
                  ci_low=lo, ci_high=hi, p_value=mcnemar_exact(a_only, b_only), a_only=a_only, b_only=b_only)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error rate) of ``p_values``, in their order
    (statsmodels' ``multipletests``): the i-th smallest times (m - i + 1), made monotone, capped at 1."""
    if not p_values:
        return []
    from statsmodels.stats.multitest import multipletests  # only the report needs it

    return [float(p) for p in multipletests(p_values, alpha=0.05, method="holm")[1]]
