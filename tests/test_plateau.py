"""Whether a validation curve flattened (issue 38 item 2): the change over the last two eval points,
paired on the same validation problems, with its interval, said either way (report/plateau.py)."""

from __future__ import annotations

import json

from atlas_lib.report import collect, plateau
from atlas_lib.report.collect import Collected, RunInfo
from atlas_lib.report.findings_check import check

N = 100


def _outcomes(k_right: int) -> dict[str, bool]:
    return {f"p{i}": i < k_right for i in range(N)}


def _run(key: str, before: int, after: int, steps=(18, 24)) -> RunInfo:
    return RunInfo(key, key, "complete", method="gkd", name="GKD",
                   val_outcomes={steps[0]: _outcomes(before), steps[1]: _outcomes(after)})


def _col(*runs: RunInfo, seeds: dict | None = None) -> Collected:
    # each run finished with a test row (only finished seeds are read)
    return Collected("p", None, None, {r.key: r for r in runs}, seeds=seeds or {},
                     correct={r.key: _outcomes(10) for r in runs})


def test_a_curve_gaining_30_points_at_its_end_is_still_rising():
    ch = plateau.last_change(_col(_run("gkd", 30, 60)), "gkd")
    assert ch.verdict == "still rising"


def test_a_curve_losing_30_points_at_its_end_is_falling():
    ch = plateau.last_change(_col(_run("gkd", 60, 30)), "gkd")
    assert ch.verdict == "falling"


def test_an_unchanged_curve_reads_no_change_detected():
    ch = plateau.last_change(_col(_run("gkd", 40, 40)), "gkd")
    assert ch.verdict == "no change detected"


def test_the_sentence_says_the_verdict_either_way():
    text = plateau.change_text(_col(_run("gkd", 40, 40)), plateau.last_change(_col(_run("gkd", 40, 40)), "gkd"))
    assert "no change detected" in text


def test_the_sentence_gives_the_change_and_its_interval():
    col = _col(_run("gkd", 30, 60))
    text = plateau.change_text(col, plateau.last_change(col, "gkd"))
    assert "moved +30.0 points" in text and "95% interval [" in text


def test_seeds_that_agree_give_the_one_seed_interval():
    one = plateau.last_change(_col(_run("gkd", 30, 45)), "gkd").paired
    runs = [_run("gkd", 30, 45), _run("gkd-seed43", 30, 45), _run("gkd-seed44", 30, 45)]
    three = plateau.last_change(_col(*runs, seeds={"gkd": [(42, "gkd"), (43, "gkd-seed43"), (44, "gkd-seed44")]}),
                                "gkd").paired
    assert (three.diff, three.ci_low, three.ci_high) == (one.diff, one.ci_low, one.ci_high)


def test_a_run_with_one_kept_eval_point_gives_no_reading():
    short = RunInfo("gkd", "x", "complete", method="gkd", name="GKD", val_outcomes={6: _outcomes(3)})
    assert plateau.last_change(_col(short), "gkd") is None


def test_seeds_stopped_at_different_steps_are_named_by_seed():
    runs = [_run("gkd", 30, 45), _run("gkd-seed43", 30, 45, steps=(18, 25))]
    col = _col(*runs, seeds={"gkd": [(42, "gkd"), (43, "gkd-seed43")]})
    assert "18 -> 24 (seed 42), 18 -> 25 (seed 43)" in plateau.change_text(col, plateau.last_change(col, "gkd"))


def test_a_seed_not_yet_finished_is_left_out_and_counted():
    running = RunInfo("gkd-seed43", "x", "incomplete", method="gkd", name="GKD",
                      val_outcomes={0: _outcomes(30), 6: _outcomes(35)})
    col = _col(_run("gkd", 30, 45), running, seeds={"gkd": [(42, "gkd"), (43, "gkd-seed43")]})
    assert "1 of 2 seeds finished" in plateau.change_text(col, plateau.last_change(col, "gkd"))


def test_a_seed_without_a_test_row_is_left_out():
    col = _col(_run("gkd", 30, 45), _run("gkd-seed43", 30, 45), seeds={"gkd": [(42, "gkd"), (43, "gkd-seed43")]})
    col.correct.pop("gkd-seed43")
    assert plateau.last_change(col, "gkd").paired.seeds == 1


def test_the_findings_checker_does_not_read_the_change_as_a_test_difference():
    col = _col(_run("gkd", 30, 60))
    sentence = plateau.change_text(col, plateau.last_change(col, "gkd")) + "."
    table = {"gkd": {"Model / Method": "GKD", "Accuracy": 0.5, "Diff vs student": 0.1, "Row kind": "trained"},
             "student": {"Model / Method": "Student (pre-distillation)", "Accuracy": 0.4, "Row kind": "baseline"}}
    assert check([sentence], table).mismatches == []


def test_a_run_directory_gives_each_eval_points_outcomes(tmp_path):
    (tmp_path / "eval").mkdir()
    for step, k in ((0, 10), (6, 20), (12, 30)):
        rows = [{"id": f"p{i}", "correct": i < k} for i in range(N)]
        (tmp_path / "eval" / f"step_{step}.records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"kind": "eval", "step": s, "accuracy": 0.1})
                                                    + "\n" for s in (0, 6, 12)))
    info = collect.load_run(tmp_path, "gkd")
    assert sorted(info.val_outcomes) == [0, 6, 12]


def test_a_budget_stop_one_step_after_a_point_is_read_over_a_full_interval():
    assert plateau.end_points([0, 6, 12, 18, 24, 25]) == (18, 25)


def test_a_regular_schedule_is_read_over_its_last_two_points():
    assert plateau.end_points([0, 6, 12, 18, 24]) == (18, 24)


def test_a_budget_stop_most_of_an_interval_after_a_point_is_read_from_that_point():
    assert plateau.end_points([0, 6, 12, 18, 24, 30, 35]) == (30, 35)


def test_two_eval_points_are_read_as_they_are():
    assert plateau.end_points([0, 12]) == (0, 12)


def test_a_kl_scored_on_the_first_seed_only_says_so_in_the_findings():
    import pandas as pd

    from atlas_lib.report import findings

    t = pd.DataFrame({"Mean Reverse KL": [0.2, 0.2, float("nan"), float("nan")]},
                     index=["gkd", "gkd-seed42", "gkd-seed43", "gkd-seed44"])
    col = _col(_run("gkd", 1, 1), seeds={"gkd": [(42, "gkd"), (43, "gkd-seed43"), (44, "gkd-seed44")]})
    assert findings._kl_seeds(col, t, "gkd") == " (seed 42 only)"


def test_a_kl_scored_on_every_seed_adds_nothing():
    import pandas as pd

    from atlas_lib.report import findings

    t = pd.DataFrame({"Mean Reverse KL": [0.2, 0.2, 0.3]}, index=["gkd", "gkd-seed42", "gkd-seed43"])
    col = _col(_run("gkd", 1, 1), seeds={"gkd": [(42, "gkd"), (43, "gkd-seed43")]})
    assert findings._kl_seeds(col, t, "gkd") == ""


def test_kl_scored_seeds_names_the_scored_seeds_when_some_are_not():
    from atlas_lib.report.table import kl_scored_seeds

    assert kl_scored_seeds([42, 43, 44], [0.2, float("nan"), float("nan")]) == [42]


def test_kl_scored_seeds_is_empty_when_no_seed_was_scored():
    from atlas_lib.report.table import kl_scored_seeds

    assert kl_scored_seeds([42, 43], [float("nan"), float("nan")]) == []


def test_kl_scored_seeds_is_empty_when_every_seed_was_scored():
    from atlas_lib.report.table import kl_scored_seeds

    assert kl_scored_seeds([42, 43], [0.2, 0.3]) == []
