"""Issue 38: statistics over problems (seeds of a problem are not independent draws) and compute to
match only where it is defined."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from atlas_lib.evaluation import stats
from atlas_lib.report import efficiency
from atlas_lib.report.collect import Collected, RunInfo


def _outcomes(right: set[int], n: int = 40) -> dict:
    return {f"p{i}": i in right for i in range(n)}


def _rng_outcomes(seed: int, p: float, n: int = 60) -> dict:
    rng = np.random.default_rng(seed)
    return {f"p{i}": bool(x) for i, x in enumerate(rng.random(n) < p)}


# -- statistics over problems --------------------------------------------------------------------
def test_seeds_that_agree_on_every_problem_give_the_one_seed_interval_and_p():
    a, b = _rng_outcomes(1, 0.6), _rng_outcomes(2, 0.4)
    one = stats.paired(a, b)
    three = stats.paired_seeds([a, a, a], [b])
    assert (three.ci_low, three.ci_high) == (one.ci_low, one.ci_high)  # exact: same problem-index draws
    assert three.p_value == one.p_value
    assert three.diff == pytest.approx(one.diff)
    assert (three.a_only, three.b_only) == (one.a_only, one.b_only)


def test_seeds_that_agree_on_both_sides_give_the_one_seed_interval_and_p():
    a, b = _rng_outcomes(3, 0.7), _rng_outcomes(4, 0.5)
    one = stats.paired(a, b)
    three = stats.paired_seeds([a] * 3, [b] * 3)
    assert (three.ci_low, three.ci_high, three.p_value) == (one.ci_low, one.ci_high, one.p_value)


def test_one_seed_is_the_exact_mcnemar_test_and_paired_bootstrap():
    a, b = _rng_outcomes(5, 0.6), _rng_outcomes(6, 0.5)
    pr = stats.paired_seeds([a], [b])
    d = np.array([a[k] - b[k] for k in sorted(a)], dtype=float)
    assert pr.p_value == stats.mcnemar_exact(int((d > 0).sum()), int((d < 0).sum()))
    assert (pr.ci_low, pr.ci_high) == stats.bootstrap_ci(d)
    assert pr.test == "exact McNemar" and pr.seeds == 1


def test_the_test_over_problems_is_a_sign_test_on_each_problems_mean_over_seeds():
    base = _outcomes(set(range(10)))
    seeds = [_outcomes(set(range(10)) | {10, 11}), _outcomes(set(range(10)) | {10, 12, 13}), _outcomes(set(range(9)))]
    pr = stats.paired_seeds(seeds, [base])
    # per-problem means: p10 2/3, p11 1/3, p12 1/3, p13 1/3 (all > 0); p9 -1/3 (< 0): 4 vs 1 problems
    assert (pr.sign_a, pr.sign_b) == (4, 1)
    assert pr.p_value == pytest.approx(sps.binomtest(4, 5, 0.5).pvalue)
    assert pr.test == "exact sign test over problems"
    # the pooled McNemar would count 2 + 3 = 5 seed x problem gains against 1 loss
    assert pr.p_value != pytest.approx(stats.mcnemar_exact(5, 1))


def test_counts_are_problems_gained_on_a_majority_of_seeds():
    base = _outcomes(set(range(10)))
    seeds = [_outcomes(set(range(16))), _outcomes(set(range(16))), _outcomes(set(range(10)) | set(range(16, 22)))]
    pr = stats.paired_seeds(seeds, [base])
    assert pr.a_only == 6  # p10..p15 gained on 2 of 3 seeds
    assert pr.sign_a == 12  # p16..p21 gained on 1 of 3 seeds: positive mean, not a majority
    assert pr.b_only == 0
    assert pr.seed_discordant == [6, 6, 6]  # each seed pair's own discordant problems
    assert pr.discordance == pytest.approx(6 / 40)


def test_a_problem_gained_on_one_of_three_seeds_is_not_gained_on_a_majority():
    base = _outcomes(set())
    pr = stats.paired_seeds([_outcomes({0}), _outcomes(set()), _outcomes(set())], [base])
    assert pr.a_only == 0
    assert pr.sign_a == 1


def test_the_interval_is_a_cluster_bootstrap_over_problems():
    base = _rng_outcomes(7, 0.4)
    seeds = [_rng_outcomes(s, 0.6) for s in (8, 9, 10)]
    pr = stats.paired_seeds(seeds, [base])
    ids = sorted(base)
    mean_n = np.mean([[float(s[i]) - float(base[i]) for i in ids] for s in seeds], axis=0)
    assert (pr.ci_low, pr.ci_high) == stats.bootstrap_ci(mean_n)


def test_each_seed_keeps_its_own_mcnemar_test():
    base = _outcomes(set(range(10)))
    seeds = [_outcomes(set(range(20))), _outcomes(set(range(12)))]
    pr = stats.paired_seeds(seeds, [base])
    assert pr.seed_p_values == [stats.mcnemar_exact(10, 0), stats.mcnemar_exact(2, 0)]


def test_the_interval_is_the_middle_95_percent_of_10000_resampled_problem_means():
    a, b = _rng_outcomes(5, 0.6), _rng_outcomes(6, 0.5)
    d_n = np.array([a[k] - b[k] for k in sorted(a)], dtype=float)
    idx_R_n = np.random.default_rng(0).integers(0, d_n.size, size=(10_000, d_n.size))  # every problem drawable
    means_R = d_n[idx_R_n].mean(axis=1)
    assert stats.bootstrap_ci(d_n) == (np.quantile(means_R, 0.025), np.quantile(means_R, 0.975))


def test_the_bootstrap_seed_and_resamples_reach_the_interval():
    # these outcomes give a different interval under seed 1 (and 200 resamples) than under the default seed 0
    a, b = _rng_outcomes(5, 0.6), _rng_outcomes(6, 0.5)
    d_n = np.array([a[k] - b[k] for k in sorted(a)], dtype=float)
    one = stats.paired(a, b)
    assert (one.ci_low, one.ci_high) == stats.bootstrap_ci(d_n)
    seeded = stats.paired(a, b, seed=1)
    assert (seeded.ci_low, seeded.ci_high) == stats.bootstrap_ci(d_n, seed=1)
    assert (seeded.ci_low, seeded.ci_high) != (one.ci_low, one.ci_high)
    few = stats.paired(a, b, resamples=200, seed=1)
    assert (few.ci_low, few.ci_high) == stats.bootstrap_ci(d_n, 200, seed=1)


def test_one_problem_has_a_point_interval():
    assert stats.bootstrap_ci(np.array([1.0])) == (1.0, 1.0)


def test_with_two_seeds_a_tie_is_not_a_majority():
    """Two seeds per side: p7, p8 lost on both seeds, p9 lost and p10 gained on one seed only."""
    base = _outcomes(set(range(10)))
    seeds = [_outcomes(set(range(7)) | {10}), _outcomes(set(range(7)) | {9})]
    pr = stats.paired_seeds(seeds, [base, base])
    assert pr.a_only == 0
    assert pr.b_only == 2
    assert (pr.sign_a, pr.sign_b) == (1, 3)
    assert pr.seed_discordant == [4, 2]  # gains plus losses in each seed pair
    assert pr.seeds == 2
    assert (pr.acc_a, pr.acc_b) == (pytest.approx(8 / 40), pytest.approx(10 / 40))


def test_seed_lists_that_cannot_be_paired_are_refused_naming_the_counts():
    a = _outcomes(set(range(10)))
    with pytest.raises(ValueError, match="2 and 3 seeds cannot be paired"):
        stats.paired_seeds([a, a], [a, a, a])


def test_evaluations_with_no_common_problem_are_refused_saying_so():
    with pytest.raises(ValueError, match="share no problem ids"):
        stats.paired({"p1": True}, {"p2": False})


# -- compute to match, only where it is defined --------------------------------------------------
def _run(key: str, accs: list[float], n: int = 100, flops_per_step: float = 1e12) -> RunInfo:
    steps = [4 * i for i in range(len(accs))]
    evals = pd.DataFrame({"step": steps, "accuracy": accs, "n": [n] * len(accs),
                          "train_flops": [s * flops_per_step for s in steps],
                          "train_device_hours": [s / 3600 for s in steps]})
    return RunInfo(key, key, "complete", {}, pd.DataFrame(), evals, [], key, key.upper(), key.upper())


def _col(a: list[RunInfo], b: list[RunInfo]) -> Collected:
    runs = {r.key: r for r in a + b}
    seeds = {}
    if len(a) > 1:
        seeds = {"gkd": [(42 + i, r.key) for i, r in enumerate(a)], "grpo": [(42 + i, r.key) for i, r in enumerate(b)]}
    return Collected("t", None, None, runs, seeds=seeds)


def test_a_target_at_or_below_the_start_did_not_improve():
    col = _col([_run("gkd", [0.38, 0.50, 0.60])], [_run("grpo", [0.38, 0.35, 0.37])])
    m = efficiency.compute_to_match(col, "gkd", "grpo")
    assert [s.outcome for s in m.seeds] == ["not improved"]
    text = efficiency.match_text(col, m, "CPU-hours")
    assert "GRPO did not improve on the untrained student's validation accuracy" in text
    assert "0.00x" not in text and "0.00e+00" not in text


def test_a_target_equal_to_the_start_did_not_improve():
    col = _col([_run("gkd", [0.38, 0.50])], [_run("grpo", [0.38, 0.38])])
    assert efficiency.compute_to_match(col, "gkd", "grpo").seeds[0].outcome == "not improved"


def test_curves_that_never_cross_say_so():
    col = _col([_run("grpo", [0.38, 0.40, 0.41])], [_run("gkd", [0.38, 0.55, 0.62])])
    m = efficiency.compute_to_match(col, "grpo", "gkd")
    assert [s.outcome for s in m.seeds] == ["never"]
    assert "never cross" in efficiency.match_text(col, m, "CPU-hours")


def test_a_small_validation_split_gives_no_ratio():
    # n = 12: 50% against a 25% start is 25 points, under the 95% resolution (~37 points)
    col = _col([_run("gkd", [0.25, 0.50, 0.60], n=12)], [_run("grpo", [0.25, 0.40, 0.50], n=12)])
    m = efficiency.compute_to_match(col, "gkd", "grpo")
    assert [s.outcome for s in m.seeds] == ["unresolved"]
    assert m.ratios == []
    text = efficiency.match_text(col, m, "CPU-hours")
    assert "n = 12" in text and "no compute-to-match ratio" in text
    assert "x what" not in text


def test_the_resolution_rule():
    assert efficiency.resolution(0.25, 0.5, 12) == pytest.approx(1.959964 * ((0.1875 + 0.25) / 12) ** 0.5, rel=1e-6)


def test_a_ratio_comes_with_the_seeds_range_and_the_eval_point_spacing():
    gkd = [_run("gkd", [0.30, 0.70, 0.80]), _run("gkd-seed43", [0.30, 0.60, 0.80]), _run("gkd-seed44", [0.30, 0.30, 0.30])]
    grpo = [_run("grpo", [0.30, 0.45, 0.50], flops_per_step=2e12), _run("grpo-seed43", [0.30, 0.50, 0.55],
                                                                         flops_per_step=2e12),
            _run("grpo-seed44", [0.30, 0.30, 0.28], flops_per_step=2e12)]
    col = _col(gkd, grpo)
    m = efficiency.compute_to_match(col, "gkd", "grpo")
    assert [s.outcome for s in m.seeds] == ["ratio", "ratio", "not improved"]
    # seed 42: 50% is 1/2 of the way from 30% (0 FLOPs) to 70% (4e12): 2e12, against GRPO's 16e12
    assert m.seeds[0].flops == pytest.approx(2e12) and m.seeds[0].spacing == pytest.approx(4e12)
    # seed 43: 55% is 5/6 of the way from 30% to 60%: 3.33e12, against 16e12
    assert m.ratios == pytest.approx([2e12 / 16e12, (25 / 30) * 4e12 / 16e12])
    text = efficiency.match_text(col, m, "CPU-hours")
    assert "0.17x (seeds 0.1" in text and "-0.21x) what GRPO spent" in text  # median and range over seeds
    assert "interpolated between eval points 4.00e+12 training FLOPs apart" in text
    assert "(seeds 42, 43: 2 of 3)" in text
    assert "GRPO did not improve on the untrained student's validation accuracy" in text and "(seed 44: 1 of 3)" in text


def test_a_small_ratio_is_never_printed_as_zero():
    col = _col([_run("gkd", [0.30, 0.90], flops_per_step=1e9)], [_run("grpo", [0.30, 0.60], flops_per_step=1e12)])
    text = efficiency.match_text(col, efficiency.compute_to_match(col, "gkd", "grpo"), "CPU-hours")
    assert "0.00x" not in text and "0.0005x what GRPO spent" in text
