"""The findings checker (atlas_lib.report.findings_check): every number the findings state is read back
from the table, every model a sentence names is the row it is about, on synthetic text, on the kit's own
findings, and on each committed report's rendered page with its table.json."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from test_report import build_runs  # synthetic run directories through the real contracts

from atlas_lib import cli
from atlas_lib.report import collect, findings, findings_check, table

ROOT = Path(__file__).resolve().parents[1]


def _row(label, kind, acc, **kw):
    return {"Model / Method": label, "Row kind": kind, "Accuracy": acc, "CI low": acc - 0.05, "CI high": acc + 0.05,
            "n": 200.0, "Diff vs student": None, "Diff CI low": None, "Diff CI high": None, "p (McNemar)": None,
            "p (Holm)": None, "Avg Generated Tokens": None, "Mean Reverse KL": None, "Hacking flag": None,
            "Device hours": None, "Steps": None, table.LOGRATIO_COL: None, **kw}


SHARED = {"student": _row("Student (pre-distillation): qwen-0.5b", "baseline", 0.375, **{
              "Avg Generated Tokens": 7.4, "Mean Reverse KL": 0.782, table.LOGRATIO_COL: 0.4}),
          "teacher": _row("Teacher: qwen-1.5b", "baseline", 0.795),
          "gkd": _row("GKD distilled student (on-policy)", "trained", 0.59, **{
              "Diff vs student": 0.215, "Diff CI low": 0.17, "Diff CI high": 0.26, "p (McNemar)": 1e-6,
              "Avg Generated Tokens": 42.2, "Mean Reverse KL": 0.181, "Device hours": 0.0644, "Steps": 4.0,
              table.LOGRATIO_COL: 0.2}),
          "grpo": _row("GRPO / RLVR baseline", "trained", 0.437, **{
              "Diff vs student": 0.062, "Diff CI low": 0.03, "Diff CI high": 0.095, "p (McNemar)": 0.0002,
              "Device hours": 0.0589, "Steps": 4.0})}

CROSS = {"student": _row("Student (pre-distillation): qwen2.5-coder-0.5b-instruct", "baseline", 0.375),
         "teacher": _row("Teacher: qwen2.5-coder-1.5b-instruct", "baseline", 0.795),
         "cross_tokenizer_pre": _row("Cross-tokenizer student (pre): smollm2-135m-instruct", "untrained", 0.11),
         "cross_tokenizer": _row("Cross-tokenizer student (post): smollm2-135m-instruct", "trained", 0.10, **{
             "Diff vs student": -0.01, "Diff CI low": -0.055, "Diff CI high": 0.035, "p (McNemar)": 0.832})}

LEAD = ("GKD improved the student's test accuracy by +21.5 points (paired 95% CI +17.0 to +26.0, exact McNemar "
        "p < 0.001, n = 200; 47 problems gained, 4 lost), from 37.5% to 59.0%, at 0.0644 CPU-hours over 4 steps.")


def _claims(text: str, tab: dict) -> list[str]:
    return [m.claim for m in findings_check.check_markdown(text, tab).mismatches]


def test_a_correct_lead_sentence_has_no_mismatch():
    assert _claims(LEAD, SHARED) == []


def test_every_number_of_a_correct_lead_is_checked():
    assert findings_check.check_markdown(LEAD, SHARED).checked >= 10


@pytest.mark.parametrize("wrong, claim", [
    ("by +21.5 points", "paired difference of gkd"),
    ("+17.0 to", "Diff CI low of gkd"),
    ("+26.0,", "Diff CI high of gkd"),
    ("n = 200", "n of gkd"),
    ("from 37.5%", "Accuracy of student"),
    ("to 59.0%", "Accuracy of gkd"),
    ("0.0644 CPU-hours", "Device hours of gkd"),
    ("over 4 steps", "Steps of gkd"),
    ("47 problems gained", "gained minus lost"),
])
def test_a_wrong_number_in_the_lead_is_caught(wrong, claim):
    bad = wrong.replace("21.5", "12.5").replace("17.0", "7.0").replace("26.0", "6.0").replace("200", "100") \
        .replace("37.5", "35.7").replace("59.0", "95.0").replace("0.0644", "0.644").replace("4 steps", "40 steps") \
        .replace("47", "57")
    assert claim in _claims(LEAD.replace(wrong, bad), SHARED)


def test_a_p_value_the_table_does_not_hold_is_caught():
    text = LEAD.replace("p < 0.001", "p = 0.040")
    assert "p of gkd" in _claims(text, SHARED)


def test_improved_without_a_significant_difference_is_caught():
    tab = {**SHARED, "gkd": {**SHARED["gkd"], "p (McNemar)": 0.2}}
    assert "gkd improved the accuracy" in _claims(LEAD.replace("p < 0.001", "p = 0.200"), tab)


def test_baseline_accuracies_with_their_intervals_are_read_back():
    ok = ("Before training, the student scored 37.5% (95% CI 32.5%–42.5%, n=200) and the teacher 79.5% "
          "(95% CI 74.5%–84.5%, n=200) on the test split.")
    assert _claims(ok, SHARED) == []


def test_a_wrong_teacher_accuracy_is_caught():
    bad = ("Before training, the student scored 37.5% (95% CI 32.5%–42.5%, n=200) and the teacher 97.5% "
           "(95% CI 74.5%–84.5%, n=200) on the test split.")
    assert "Accuracy of teacher" in _claims(bad, SHARED)


def test_token_and_kl_moves_are_read_back():
    ok = ("- Mean generated tokens on the test split (untrained student → trained): GKD 7.4 → 42.2.\n"
          "- Mean reverse KL to the teacher on the test split (nats/token, same tokenizer): GKD 0.782 → 0.181.")
    assert _claims(ok, SHARED) == []


def test_a_wrong_reverse_kl_is_caught():
    bad = "- Mean reverse KL to the teacher on the test split (nats/token, same tokenizer): GKD 0.782 → 0.811."
    assert "Mean Reverse KL of gkd" in _claims(bad, SHARED)


def test_a_wrong_log_ratio_is_caught():
    bad = ("- Divergence to the teacher that every row shares (the sequence log-ratio per character): "
           "Student (pre-distillation) 0.400; GKD distilled student (on-policy) 0.300.")
    assert _claims(bad, SHARED) == [f"{table.LOGRATIO_COL} of gkd"]


def test_a_pairwise_difference_must_be_the_accuracies_difference():
    bad = "GKD minus GRPO on the same test problems: +25.3 points (p < 0.001; 60 gained, 9 lost)."
    assert "gkd minus grpo" in _claims(bad, SHARED)


def test_the_student_named_must_be_the_student_the_rows_train():
    text = "- Before training, the student scored 37.5% (95% CI 32.5%–42.5%, n=200) on the test split."
    assert "'the student'" in _claims(text, CROSS)


def test_the_same_sentence_is_true_where_the_rows_train_that_student():
    text = "- Before training, the student scored 37.5% (95% CI 32.5%–42.5%, n=200) on the test split."
    assert _claims(text, SHARED) == []


def test_a_model_named_with_another_models_accuracy_is_caught():
    assert "accuracy of smollm2-135m-instruct" in _claims("- The student smollm2-135m-instruct scored 37.5%.", CROSS)


def test_a_title_naming_a_student_no_row_trains_is_caught():
    title = "# Cross-tokenizer distillation: student qwen2.5-coder-0.5b-instruct, teacher qwen2.5-coder-1.5b-instruct"
    assert "student named" in _claims(title, CROSS)


def test_no_paired_evaluation_is_false_beside_a_paired_table():
    text = "No trained method has a test evaluation paired with the untrained student's yet."
    assert "no paired test evaluation" in _claims(text, CROSS)


def test_no_decisive_change_is_false_beside_a_decisive_gain():
    text = ("No method changed the student's test accuracy by more than this run can distinguish from noise "
            "(paired, exact McNemar p >= 0.05).")
    assert "no decisive difference" in _claims(text, SHARED)


@pytest.mark.parametrize("text", ["GKD reached GRPO's final validation accuracy with 0.00e+00 training FLOPs.",
                                  "GKD reached it with 1.2e+12 training FLOPs, 0.00x what GRPO spent.",
                                  "GKD reached it with 1.2e+12 training FLOPs (0 CPU-hours)."])
def test_compute_stated_as_zero_is_caught(text):
    assert "compute stated as zero" in _claims(text, SHARED)


def test_a_power_sentence_above_a_significant_difference_is_caught():
    text = (LEAD + " GRPO improved it by +6.2 points (p < 0.001; 15 gained, 3 lost) at 0.0589 CPU-hours over 4 "
            "steps.\n\n- Power: with n = 200 test problems and the discordance observed here (86% of problems), "
            "the smallest paired difference detectable with 80% power at 5% is about 18.3 points; smaller true "
            "differences would usually read as noise.")
    assert "power against the page's significant differences" in _claims(text, SHARED)


def test_a_power_figure_above_a_significant_difference_is_no_contradiction():
    text = (LEAD + " GRPO improved it by +6.2 points (p < 0.001; 15 gained, 3 lost) at 0.0589 CPU-hours over 4 "
            "steps.\n\n- Power: with n = 200 test problems and the discordance observed here (11% of problems), "
            "the smallest paired difference detectable with 80% power at 5% is about 6.6 points; a smaller true "
            "difference can reach p < 0.05 but is more often missed.")
    assert "power against the page's significant differences" not in _claims(text, SHARED)


def test_a_power_sentence_that_does_not_follow_from_its_n_is_caught():
    text = ("- Power: with n = 200 test problems and the discordance observed here (10% of problems), the smallest "
            "paired difference detectable with 80% power at 5% is about 18.3 points.")
    assert "smallest detectable difference" in _claims(text, SHARED)


@pytest.mark.parametrize("seeds", [None, {43: ((6, 14), (6, 4)), 44: ((6, 10), (6, 6))}], ids=["one seed", "seeds"])
def test_the_kits_own_findings_agree_with_its_table(tmp_path, monkeypatch, seeds):
    params = build_runs(tmp_path, monkeypatch, more_seeds=seeds)
    col = collect.collect(params)
    tab = json.loads(table.results_table(col).to_json(orient="index"))
    text = "\n\n".join([findings.headline(col, params), findings.first_screen(col), findings.findings(col)])
    result = findings_check.check_markdown(text, tab)
    assert result.mismatches == [], findings_check.format_text(result)


# The committed reports, rendered page + table.json (runs/ is not committed). Any known to be stale go in STALE:
STALE: dict[str, str] = {}  # profile -> why its committed page is known to disagree (re-render pending)


@pytest.mark.parametrize("profile", [
    pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=f"stale: {STALE[p]}")) if p in STALE else p
    for p in ("embedded", "study", "study_cross")])
def test_each_committed_report_states_only_what_its_table_holds(profile):
    page = ROOT / "reports" / profile / "index.html"
    result = findings_check.check_report(page)
    assert result.mismatches == [], findings_check.format_text(result)


def _copy_report(tmp_path, profile="study") -> Path:
    out = tmp_path / profile
    out.mkdir(parents=True)
    for name in ("index.html", "table.json"):
        shutil.copy(ROOT / "reports" / profile / name, out / name)
    return out / "index.html"


def _false_report(tmp_path, profile="study") -> Path:
    """A committed page with one false number put in its lead: GKD's trained accuracy made 99.9%."""
    page = _copy_report(tmp_path, profile)
    html, n = re.subn(r"(GKD \d+\.\d% → )\d+\.\d%", r"\g<1>99.9%", page.read_text(), count=1)
    assert n == 1, f"reports/{profile}/index.html has no 'GKD x% → y%' in its lead to falsify"
    page.write_text(html)
    return page


def test_rendering_writes_the_check_beside_the_page(tmp_path):
    page = _false_report(tmp_path)
    findings_check.write_check(page)
    assert json.loads((page.parent / findings_check.CHECK_FILE).read_text())["ok"] is False


def test_rendering_logs_a_warning_per_mismatch(tmp_path, caplog):
    page = _false_report(tmp_path)
    with caplog.at_level(logging.WARNING, logger="atlas_lib.report.findings_check"):
        result = findings_check.write_check(page)
    assert len([r for r in caplog.records if "findings check:" in r.message]) == len(result.mismatches)


def test_a_report_without_its_table_does_not_fail_rendering(tmp_path):
    page = _copy_report(tmp_path)
    (page.parent / "table.json").unlink()
    assert findings_check.write_check(page) is None


def test_check_report_exits_1_on_a_mismatch(tmp_path, capsys):
    assert cli.main(["check-report", str(_false_report(tmp_path))]) == 1


def test_check_report_exits_0_on_a_true_page(tmp_path):
    page = tmp_path / "index.html"
    page.write_text('<div class="cell" id="cell-id=answer"><div class="output_markdown rendered_html output_subarea">'
                    f"<p>{LEAD}</p></div></div>\n<div class=\"cell\" id=\"cell-id=about\"><p>Not checked 99%.</p></div>")
    (tmp_path / "table.json").write_text(json.dumps(SHARED))
    assert cli.main(["check-report", str(page)]) == 0


def test_check_report_names_a_missing_table_and_exits_2(tmp_path, capsys):
    page = _copy_report(tmp_path)
    (page.parent / "table.json").unlink()
    assert cli.main(["check-report", str(page)]) == 2
    assert "table.json: not found" in capsys.readouterr().err


def test_a_wrong_first_screen_accuracy_is_caught():
    text = "Test accuracy, untrained → trained [95% CI]: GKD 37.5% → 95.0% [52.5–62.5]."
    assert "Accuracy of gkd" in _claims(text, SHARED)


def test_a_correct_first_screen_has_no_mismatch():
    text = ("Test accuracy, untrained → trained [95% CI]: GKD 37.5% → 59.0% [54.0–64.0]; GRPO 37.5% → 43.7% "
            "[38.7–48.7]. **GKD − GRPO: +15.3 points [+10.0, +20.0], p < 0.001** (Holm): a difference.")
    assert _claims(text, SHARED) == []


def test_no_test_evaluation_is_false_beside_trained_rows():
    assert "no test evaluation" in _claims("No trained method has a test evaluation yet: the table shows what ran.",
                                           SHARED)


def test_render_site_checks_the_page_it_wrote(tmp_path, monkeypatch):
    from atlas_lib.report import site

    src = _false_report(tmp_path / "src").parent
    monkeypatch.setattr(site, "collect", lambda params: None)
    monkeypatch.setattr(site, "page_title", lambda col, params: "t")
    monkeypatch.setattr(site, "render_html", lambda nb, out, **kw: shutil.copy(src / "index.html", out) and out)
    monkeypatch.setattr(site, "write_table_files", lambda p, out, col, nav="": shutil.copy(src / "table.json", out))
    out = tmp_path / "reports" / "study"
    out.mkdir(parents=True)
    site.render_site(None, [], tmp_path, out)
    assert json.loads((out / findings_check.CHECK_FILE).read_text())["ok"] is False


def test_compute_said_to_exclude_evaluation_needs_evaluation_seconds():
    text = "- Compute is training compute (the ledger: sampling, teacher scoring and optimisation; evaluation measured apart)."
    assert "compute excludes evaluation" in _claims(text, SHARED)  # SHARED's trained rows record no evaluation seconds


def test_the_findings_are_read_from_notebook_05s_answer_and_findings_cells():
    page = ('<div id="cell-id=answer"><p>Title</p></div><div id="cell-id=key-table"><td>12.5%</td></div>'
            '<div id="cell-id=findings-detail"><ul><li>Detail one.</li></ul></div><div id="cell-id=about"><p>About</p>'
            "</div>")
    assert findings_check.findings_from_html(page) == ["Title", "Detail one."]


def test_a_starting_objective_that_is_not_a_table_cell_is_left_unchecked():
    tab = {**SHARED, "gkd": {**SHARED["gkd"], table.OBJECTIVE_COL: 0.004}}
    text = "- GKD: its own objective (GKD: generalized JSD) on the test answers went 0.0050 → 0.0040."
    assert _claims(text, tab) == []


def test_a_wrong_trained_objective_is_caught():
    tab = {**SHARED, "gkd": {**SHARED["gkd"], table.OBJECTIVE_COL: 0.004}}
    text = "- GKD: its own objective (GKD: generalized JSD) on the test answers went 0.0050 → 0.0030."
    assert f"{table.OBJECTIVE_COL} of gkd" in _claims(text, tab)


SEEDED = {**SHARED, "grpo": {**SHARED["grpo"], "Steps": 34.5},
          "grpo-seed42": _row("GRPO / RLVR baseline (seed 42)", "seed", 0.35, **{"Steps": 37.0}),
          "grpo-seed43": _row("GRPO / RLVR baseline (seed 43)", "seed", 0.55, **{"Steps": 32.0})}


@pytest.mark.parametrize("stated, ok", [("32-37", True), ("32-38", False), ("34", True)])
def test_a_mean_rows_range_of_steps_is_read_against_its_seeds(stated, ok):
    text = f"GRPO improved it by +6.2 points (p < 0.001) at 0.0589 CPU-hours over {stated} steps."
    assert (_claims(text, SEEDED) == []) is ok


def test_a_mean_of_seeds_states_the_range_of_its_seeds_steps():
    import pandas as pd
    t = pd.DataFrame({"Steps": [34.5, 37.0, 32.0, float("nan"), 24.0]},
                     index=["grpo", "grpo-seed42", "grpo-seed43", "grpo-seed44", "off_policy"])
    assert findings.steps_text(t, "grpo") == "32-37"  # a mean of 34.5 steps is no run's count
    assert findings.steps_text(t, "off_policy") == "24"
