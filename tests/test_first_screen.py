"""Issue 40 items 2-4: the report's first screen (a short lead, then the five-column key table), charts
without data left out, and the print rules (key table and charts whole, parameters as a summary,
every model column of problems.html)."""

from __future__ import annotations

import re

import pytest
from test_report import (  # synthetic run directories through the real contracts
    BASE_K,
    TEACHER_K,
    N,
    build_runs,
)

from atlas_lib.report import charts, collect, findings, problems, provenance, table
from atlas_lib.report.html import PAGE_CSS, PRINT_SCRIPT


@pytest.fixture
def col(tmp_path, monkeypatch):
    return collect.collect(build_runs(tmp_path, monkeypatch))


def _words(text: str) -> int:
    return len([w for w in re.sub(r"[*`]", " ", text).split() if re.search(r"\w", w)])


def test_the_lead_states_each_methods_accuracy_before_and_after(col):
    lead = findings.first_screen(col)
    t = table.results_table(col)
    assert f"GKD {table.pct(BASE_K / N)} → {table.pct(t.loc['gkd', 'Accuracy'])} [" in lead


def test_the_lead_names_the_comparison_that_answers_the_question(col):
    assert "**GKD − GRPO: " in findings.first_screen(col)


def test_the_lead_gives_one_plain_decision_rule(col):
    assert findings.first_screen(col).endswith("Rule: a difference counts if p < 0.05.")


def test_the_title_and_lead_fit_sixty_words(tmp_path, monkeypatch):
    params = build_runs(tmp_path, monkeypatch)
    c = collect.collect(params)
    assert _words(findings.headline(c, params, subtitle=False)) + _words(findings.first_screen(c)) <= 60


def test_the_lead_has_no_scientific_notation(col):
    assert not re.search(r"\de[+-]\d", findings.first_screen(col))


def test_the_key_table_has_the_five_columns(col):
    assert list(table.key_frame(table.results_table(col), col).columns) == list(table.KEY_COLS)


def test_the_key_table_has_no_seed_rows(tmp_path, monkeypatch):
    c = collect.collect(build_runs(tmp_path, monkeypatch, more_seeds={43: ((6, 14), (6, 4))}))
    names = list(table.key_frame(table.results_table(c), c)["Method"])
    assert "GKD (mean of 2 seeds)" in names and not any("(seed " in n for n in names)


def test_the_key_table_writes_compute_and_p_without_scientific_notation(col):
    frame = table.key_frame(table.results_table(col), col)
    assert not frame.map(lambda x: bool(re.search(r"\de[+-]\d", str(x)))).any().any()


def test_the_key_table_renders_outside_a_scroll_box(col):
    assert 'class="dataframe atlas-key"' in table.key_table(col)._repr_html_()


def test_a_chart_without_data_for_any_row_is_not_drawn(col):
    for info in col.runs.values():  # no run logged a divergence at its validation points
        info.evals = info.evals.drop(columns=["mean_reverse_kl", "aligned_divergence"], errors="ignore")
    assert isinstance(charts.divergence_chart(col), charts.NotDrawn)


def test_a_chart_not_drawn_shows_the_test_split_values_instead(col):
    for info in col.runs.values():
        info.evals = info.evals.drop(columns=["mean_reverse_kl", "aligned_divergence"], errors="ignore")
    assert "GKD 0.450 → 0.300" in charts.divergence_chart(col)._repr_html_()


def test_a_panel_without_data_is_left_out_of_a_drawn_chart(col):
    for info in col.runs.values():
        info.evals = info.evals.drop(columns=["aligned_divergence"], errors="ignore")
    assert len(charts.divergence_chart(col).axes) == 1


def test_seed_rows_have_one_short_name(tmp_path, monkeypatch):
    c = collect.collect(build_runs(tmp_path, monkeypatch, more_seeds={43: ((6, 14), (6, 4))}))
    assert c.runs["gkd-seed43"].name == "GKD (seed 43)"


def test_lora_settings_shared_by_runs_are_one_line(col):
    lines = findings.shared_settings(col)
    assert len(lines) == len({findings.lora_text(i.summary, i.method) for i in col.runs.values()} - {None})


def test_print_keeps_the_key_table_whole():
    assert "table.atlas-key{break-inside:avoid" in PAGE_CSS


def test_print_keeps_every_chart_whole():
    assert "img,svg{page-break-inside:avoid;break-inside:avoid}" in PAGE_CSS


def test_print_hides_the_full_parameter_yaml():
    assert "details.atlas-params{display:none}" in PAGE_CSS


def test_print_does_not_open_the_parameter_details():
    assert "details:not(.atlas-params)" in PRINT_SCRIPT


def test_print_shows_the_parameter_summary():
    assert ".atlas-print-only{display:block" in PAGE_CSS


def test_the_provenance_carries_a_print_only_parameter_summary(col):
    from test_report import _raw

    from atlas_lib.core import config

    text = provenance.provenance(col, config.load(_raw()))
    assert '<div class="atlas-print-only">' in text and '<details class="atlas-params">' in text


def test_problems_page_prints_on_a4_landscape():
    assert "@page{size:A4 landscape" in problems._STYLE


def test_problems_page_prints_every_model_column():
    assert ".scroll{overflow:visible}" in problems._STYLE and "table{table-layout:fixed;width:100%}" in problems._STYLE


def test_the_teacher_row_keeps_its_accuracy_in_the_key_table(col):
    frame = table.key_frame(table.results_table(col), col).set_index("Method")
    assert frame.loc["Teacher", table.KEY_COLS[1]].startswith(table.pct(TEACHER_K / N))


def test_a_method_that_logged_no_loss_gets_no_empty_panel(col):
    col.runs["grpo"].train = col.runs["grpo"].train.drop(columns=["loss"])
    titles = [ax.get_title() for ax in charts.loss_chart(col).axes]
    assert titles == ["GKD: generalized JSD on student samples", "Cross-tokenizer: aligned-span loss"]


def test_seeds_that_trained_alike_share_one_settings_line(tmp_path, monkeypatch):
    params = build_runs(tmp_path, monkeypatch, more_seeds={43: ((6, 14), (6, 4))})
    c = collect.collect(params)
    for info in c.runs.values():  # every run trained LoRA adapters with the same settings
        info.summary.setdefault("config", {})[info.method] = {"lora": {"r": 8}}
    assert [line.split(" trained ")[0] for line in findings.shared_settings(c)] == [
        "GKD (all 2 seeds), GRPO (all 2 seeds) and Cross-tokenizer distillation (all 2 seeds)"]
