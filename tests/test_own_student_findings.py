"""A report whose every trained method brings its own student (params/study_cross.yaml: the kit's
cross-tokenizer arm and TRL GOLD both train SmolLM2-135M; no method trains the shared Qwen student): the
title, the lead, the baseline and power sentences name the student the methods train, the lead pairs each
method with its own untrained row, and the findings checker agrees with every sentence."""

from __future__ import annotations

import json
import shutil

import pytest
from test_report import build_runs  # synthetic run directories through the real contracts

from atlas_lib.report import collect, findings, findings_check, table


@pytest.fixture
def own_only(tmp_path, monkeypatch):
    """The synthetic profile with only the cross-tokenizer arm run (GKD and its sweep removed, GRPO not run)."""
    params = build_runs(tmp_path, monkeypatch, with_grpo=False)
    for d in (tmp_path / "runs" / params.name).iterdir():
        if d.name.startswith(("gkd", "sweep")):
            shutil.rmtree(d)
    return params


def _texts(params) -> tuple[str, str, str]:
    col = collect.collect(params)
    return findings.headline(col, params), findings.first_screen(col), findings.findings(col)


def test_the_answer_is_about_the_methods_own_student(own_only):
    runs, own = findings.answer_runs(collect.collect(own_only))
    assert (runs, own) == (["cross_tokenizer"], True)


def test_the_title_names_the_student_the_methods_train(own_only):
    title, _, _ = _texts(own_only)
    assert "student smollm2-135m-instruct," in title


def test_the_title_does_not_name_the_shared_student(own_only):
    title, _, _ = _texts(own_only)
    assert own_only.models.student not in title


def test_the_lead_pairs_each_method_with_its_own_untrained_row(own_only):
    answer, _ = findings.split_findings(_texts(own_only)[2])
    assert "Cross-tokenizer distillation changed it by +12.5 points" in answer


def test_the_lead_does_not_deny_the_paired_results(own_only):
    _, _, text = _texts(own_only)
    assert "No trained method has a test evaluation paired" not in text


def test_the_lead_names_whose_accuracy_changed(own_only):
    answer, _ = findings.split_findings(_texts(own_only)[2])
    assert "smollm2-135m-instruct's test accuracy" in answer


def test_the_own_student_sentence_is_not_repeated_below_the_lead(own_only):
    answer, context = findings.split_findings(_texts(own_only)[2])
    assert "changed it by +12.5 points" in answer and not [x for x in context if "changed its own student's" in x]


def test_the_power_sentence_reads_the_methods_own_student(own_only):
    col = collect.collect(own_only)
    assert findings.mde_sentence(col).startswith(f"Power: with n = {len(col.correct['cross_tokenizer_pre'])} test")


def test_a_failed_shared_student_method_keeps_the_page_about_the_shared_student(tmp_path, monkeypatch):
    params = build_runs(tmp_path, monkeypatch, with_grpo=False)
    (collect.runs_root() / params.name / "gkd" / "eval" / "final_full.records.jsonl").unlink()  # no test result
    for d in (collect.runs_root() / params.name).glob("sweep*"):
        shutil.rmtree(d)
    col = collect.collect(params)
    assert findings.answer_runs(col) == ([], False)
    assert f"student {params.models.student}," in findings.headline(col, params)


def test_a_denied_own_student_gain_is_caught(own_only):
    _gain(own_only, "cross_tokenizer", 8)
    col = collect.collect(own_only)
    tab = json.loads(table.results_table(col).to_json(orient="index"))
    text = ("**No method changed smollm2-135m-instruct's test accuracy by more than this run can distinguish from "
            "noise** (paired, exact McNemar p >= 0.05).")
    assert [m.claim for m in findings_check.check_markdown(text, tab).mismatches] == ["no decisive difference"]


def test_the_baseline_sentence_says_the_shared_student_trains_in_no_method(own_only):
    _, context = findings.split_findings(_texts(own_only)[2])
    line = next(x for x in context if x.startswith("Before training"))
    assert "Cross-tokenizer distillation (untrained student), smollm2-135m-instruct" in line
    assert "which no method here trains" in line


def test_the_checker_finds_every_sentence_true(own_only):
    col = collect.collect(own_only)
    tab = json.loads(table.results_table(col).to_json(orient="index"))
    result = findings_check.check_markdown("\n\n".join(_texts(own_only)), tab)
    assert result.mismatches == [], findings_check.format_text(result)


def test_with_a_shared_student_method_the_answer_stays_about_the_shared_student(tmp_path, monkeypatch):
    runs, own = findings.answer_runs(collect.collect(build_runs(tmp_path, monkeypatch)))
    assert own is False and "cross_tokenizer" not in runs


def _rewrite(params, key: str, change) -> None:
    """Apply ``change(i, record)`` to each of a run's final test records, in place on disk."""
    path = collect.runs_root() / params.name / key / "eval" / "final_full.records.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    for i, r in enumerate(recs):
        change(i, r)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _score_part(params, key: str, scored: int) -> None:
    """Keep the own objective on the first ``scored`` of a run's final test answers, as GOLD records it."""
    _rewrite(params, key, lambda i, r: r.update(objective=r["objective"] if i < scored else None))


def test_an_objective_on_part_of_the_answers_says_on_how_many(own_only):
    _score_part(own_only, "cross_tokenizer", 5)
    col = collect.collect(own_only)
    line = next(x for x in findings.split_findings(findings.findings(col))[1] if "own objective" in x)
    assert "on 5 of the 24 test answers went" in line


def test_an_objective_that_is_not_a_number_is_not_counted(own_only):
    _score_part(own_only, "cross_tokenizer", 5)
    _rewrite(own_only, "cross_tokenizer", lambda i, r: r.update(objective=float("nan")) if i == 0 else None)
    assert collect.collect(own_only).objective_n["cross_tokenizer"] == (4, 24)


def test_an_objective_on_every_answer_says_no_count(own_only):
    col = collect.collect(own_only)
    line = next(x for x in findings.split_findings(findings.findings(col))[1] if "own objective" in x)
    assert "on the test answers went" in line


def _gain(params, key: str, right: int) -> None:
    """The run's final test answers right on problems t0..t{right-1} (its untrained student had t0 alone)."""
    _rewrite(params, key, lambda i, r: r.update(correct=i < right))


def test_an_own_student_gain_the_test_finds_is_called_one(own_only):
    _gain(own_only, "cross_tokenizer", 8)  # 7 gained, 0 lost: McNemar p = 0.016
    answer, _ = findings.split_findings(findings.findings(collect.collect(own_only)))
    assert answer.startswith("**Cross-tokenizer distillation improved smollm2-135m-instruct's test accuracy")


def test_an_own_student_gain_is_judged_by_its_holm_p(own_only, monkeypatch):
    _gain(own_only, "cross_tokenizer", 8)
    col = collect.collect(own_only)
    pr = collect.paired_vs(col, "cross_tokenizer")
    monkeypatch.setattr(findings, "primary_tests", lambda c: {("cross_tokenizer", "cross_tokenizer_pre"): (pr, 0.5)})
    answer, _ = findings.split_findings(findings.findings(col))
    assert answer.startswith("**No method changed smollm2-135m-instruct's test accuracy")


def test_the_key_table_leaves_out_a_shared_student_no_method_trains(own_only):
    col = collect.collect(own_only)
    names = list(table.key_frame(table.results_table(col), col)["Method"])
    assert "Untrained student" not in names


def test_the_key_table_keeps_the_methods_own_untrained_row(own_only):
    col = collect.collect(own_only)
    names = list(table.key_frame(table.results_table(col), col)["Method"])
    assert "Cross-tokenizer distillation (untrained student)" in names


def test_the_key_table_keeps_the_shared_student_a_method_trains(tmp_path, monkeypatch):
    col = collect.collect(build_runs(tmp_path, monkeypatch))
    names = list(table.key_frame(table.results_table(col), col)["Method"])
    assert "Untrained student" in names
