"""Notebook 05's data layer on synthetic run directories written through the real contracts
(``RunDir``, ``outcome.summarize``, the evaluator's ``aggregate``): complete, partial and old runs."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import re
import shutil
from html import escape
from types import SimpleNamespace

import nbformat
import pandas as pd
import pytest
import yaml

from atlas_lib.core import config, seeds
from atlas_lib.core.files import atomic_write_json
from atlas_lib.core.paths import project_root
from atlas_lib.core.provenance import provenance as run_provenance
from atlas_lib.core.rundir import RunDir
from atlas_lib.evaluation import evaluate as ev
from atlas_lib.evaluation import stats
from atlas_lib.report import (
    charts,
    collect,
    efficiency,
    findings,
    findings_check,
    problems,
    provenance,
    stage,
    table,
)
from atlas_lib.report.html import render_html
from atlas_lib.training import outcome
from atlas_lib.training.clock import DeviceClock

N = 24  # problems per validation eval point, and on the test split (ids t0..t23)
BASE_K, TEACHER_K = 6, 18  # the untrained student's and the teacher's correct test problems
CANARY = "wandb-canary-7f3a9c1e55d2"
IMG = re.compile(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/]{100}')


def _raw(name: str = "synth") -> dict:
    raw = config.read_yaml("params/embedded.yaml")
    raw["name"] = name
    raw["sweeps"] = [{"name": "t06", "gkd": {"temperature": 0.6}}]
    return raw


def _question(i: int) -> str:
    return f"Calculate {i + 2} * {i + 3}."


def _answer(i: int, right: bool) -> str:
    """A completion that states a value: the product when ``right``, one more otherwise."""
    return f"{i + 2} * {i + 3} = {(i + 2) * (i + 3) + (not right)}\nFinal Answer: {(i + 2) * (i + 3) + (not right)}"


def _echo(i: int) -> str:
    """What a policy that learned to restate the question writes."""
    return f"Final Answer: {i + 2} * {i + 3}"


def _records(k: int, n: int, tokens: float, *, kl: float | None = None, div: float | None = None) -> list[dict]:
    """Evaluator records on test problems t0..t{n-1}, the first ``k`` correct."""
    return [{"id": f"t{i}", "correct": i < k, "generated_tokens": tokens + (i % 3), "prompt_tokens": 60,
             "truncated": i == 0, "extracted": "1", "reverse_kl": kl, "completion": _answer(i, i < k),
             "logratio_per_char": (kl if kl is not None else div or 0.0) / 10, "logratio_version": 2,
             "objective": (kl if kl is not None else div or 0.0) / 4, "objective_units": 10,  # a distiller's own loss
             **({"aligned_divergence": div} if div is not None else {})} for i in range(n)]


def _metrics(k: int, n: int, tokens: float, *, kl: float | None = None, div: float | None = None) -> dict:
    """Evaluator metrics for ``k`` correct of ``n``, through the evaluator's own aggregation."""
    m = ev.aggregate(_records(k, n, tokens, kl=kl, div=div))
    m.update(kl_note=None if kl is not None or div is not None else "undefined", wall_seconds=2.0,
             generated_tokens_per_second=50.0)
    return m


def _write_run(params, stage: str, ks: list[int], *, seconds_per_step: float, extra: dict | None = None,
               cross: bool = False, grpo: bool = False) -> dict:
    rd = RunDir.open(params, stage)
    step_every = 4
    for i, k in enumerate(ks):
        step = i * step_every
        stamp = {"seconds": step * seconds_per_step + 3.0 * i, "device_hours": (step * seconds_per_step + 3.0 * i) / 3600,
                 "device_kind": "CPU", "devices": 1,  # the wall clock includes 3 s of evaluation per point
                 "train_seconds": step * seconds_per_step, "train_device_hours": step * seconds_per_step / 3600,
                 "train_flops": step * seconds_per_step * 1e12}
        if step:
            train = {"kind": "train", "step": step, **stamp, "loss": 1.0 / (1 + i), "learning_rate": 1e-5,
                     "grad_norm": 0.5, "completion_length": 90.0 - i, "peak_rss_gb": 3.0 + i}
            if grpo:
                train.update(reward_mean=k / N, reward_std=0.2, frac_zero_std=0.5 / (1 + i))
            rd.append(train)
        m = _metrics(k, N, 100.0 - 5 * i, kl=None if cross else 0.4 - 0.05 * i,
                     div=0.9 - 0.1 * i if cross else None)
        rd.append({"kind": "eval", "step": step, **stamp, "train_loss": 1.0 / (1 + i), **m})
    last = (len(ks) - 1) * step_every
    clock = DeviceClock(offset_seconds=last * seconds_per_step)
    summary = outcome.summarize(rd, params, stage, clock, SimpleNamespace(global_step=last, training_loss=0.6),
                                 30.0, {"train": 256, "eval": 200})
    summary["training"].update(train_seconds=last * seconds_per_step, train_device_hours=last * seconds_per_step / 3600,
                               train_flops=last * seconds_per_step * 1e12, eval_seconds=3.0 * len(ks) + 5.0)
    # as training.run does: eval points are validation; the rows are the test split
    summary["validation"] = {"initial": summary.pop("initial"), "final": summary.pop("distilled")}
    kl0, kl1 = (None, None) if cross else (0.45, 0.4 - 0.05 * (len(ks) - 1))
    div0, div1 = (0.9, 0.9 - 0.1 * (len(ks) - 1)) if cross else (None, None)
    first = _records(ks[0] if cross else BASE_K, N, 120.0, kl=kl0, div=div0)
    final = _records(ks[-1], N, 100.0 - 5 * (len(ks) - 1), kl=kl1, div=div1)
    summary["initial"] = {**ev.aggregate(first), "step": 0}
    summary["distilled"] = {**ev.aggregate(final), "step": last}
    for stem, recs in (("final_full", final), *((("initial_full", first),) if cross else ())):
        (rd.path / "eval").mkdir(parents=True, exist_ok=True)
        (rd.path / "eval" / f"{stem}.records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    summary.update(extra or {})
    rd.write_summary(summary)
    rd.release()
    return summary


def build_runs(tmp_path, monkeypatch, *, gkd=(6, 9, 12), grpo=(6, 7, 8), with_grpo=True, old_gkd=False,
               baseline=True, name="synth", more_seeds: dict | None = None):
    """``more_seeds``: {seed: (gkd ks, grpo ks)} for runs at further training seeds (run.seeds)."""
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path / "runs"))
    raw = _raw(name)
    if more_seeds:
        raw["run"] = {**raw["run"], "seeds": [42, *more_seeds]}
    params = config.load(raw)
    prof = tmp_path / "runs" / name
    atomic_write_json(prof / "data" / "manifest.json", {
        "source": "reasoning_gym", "task": "gsm_symbolic", "seed": params.run.seed,
        "counts": {"train": 256, "eval": 200}, "sha256": {"eval.jsonl": "ab" * 32, "train.jsonl": "cd" * 32}})
    (prof / "data" / "eval.jsonl").write_text("".join(
        json.dumps({"id": f"t{i}", "question": _question(i), "answer": str((i + 2) * (i + 3))}) + "\n"
        for i in range(N)))
    if baseline:
        for role, k in (("student", BASE_K), ("teacher", TEACHER_K)):
            (prof / "baseline").mkdir(parents=True, exist_ok=True)
            recs = _records(k, N, 120.0 if role == "student" else 110.0, kl=0.45 if role == "student" else 0.0)
            (prof / "baseline" / f"{role}.records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        atomic_write_json(prof / "baseline" / "summary.json", {
            "student": _metrics(BASE_K, N, 120.0, kl=0.45), "teacher": {**_metrics(TEACHER_K, N, 110.0, kl=0.0)},
            "models": {"student": params.models.student, "teacher": params.models.teacher},
            "provenance": run_provenance(params)})
    div = {"divergence_label": "mean reverse KL to the teacher (same tokenizer)"}
    gkd_summary = _write_run(params, "gkd", list(gkd), seconds_per_step=9.0, extra=div)
    if old_gkd:  # an older schema: no status, no device_hours fields, no reverse KL in the final block
        gkd_summary.pop("status")
        gkd_summary["training"] = {k: v for k, v in gkd_summary["training"].items()
                                   if k not in ("device_hours", "device_hours_to_peak", "train_seconds",
                                                "train_device_hours", "train_flops", "eval_seconds")}
        gkd_summary["distilled"].pop("mean_reverse_kl")
        atomic_write_json(tmp_path / "runs" / name / "gkd" / "summary.json", gkd_summary)
    for _, variant in config.sweep_variants(params):
        _write_run(variant, "gkd", [6, 8, 10], seconds_per_step=9.0, extra=div)
    if with_grpo:
        _write_run(params, "grpo", list(grpo), seconds_per_step=20.0, extra=div, grpo=True)
    for method, index in (("gkd", 0), ("grpo", 1)):
        for seed, variant in seeds.seed_variants(params, method):
            _write_run(variant, method, list(more_seeds[seed][index]), seconds_per_step=9.0 if index == 0 else 20.0,
                       extra=div, grpo=method == "grpo")
    _write_run(params, "cross_tokenizer", [1, 2, 4], seconds_per_step=5.0, cross=True, extra={
        "student_model": "smollm2-135m-instruct", "teacher_model": params.models.teacher,
        "divergence_label": "aligned span divergence (cross-tokenizer)"})
    return params


@pytest.fixture
def complete(tmp_path, monkeypatch):
    return build_runs(tmp_path, monkeypatch)


ROWS = ["student", "teacher", "gkd", "sweep-t06", "grpo", "cross_tokenizer_pre", "cross_tokenizer"]
SEED_COLS = ["Model / Method", "Accuracy", "Avg Generated Tokens", "Mean Reverse KL", "Device hours",
             "CI low", "CI high", "Truncation", "Training FLOPs", "Evaluation seconds", "Steps", "Divergence kind",
             table.ALIGNED_COL]


def test_complete_table_has_every_row_and_finite_numbers(complete):
    col = collect.collect(complete)
    t = table.results_table(col)
    assert list(t.index) == ROWS
    assert set(SEED_COLS) <= set(t.columns)
    assert (t["Status"] == "complete").all()
    for c in ("Accuracy", "CI low", "CI high", "Avg Generated Tokens", "Truncation", "n"):
        assert t[c].map(math.isfinite).all(), c
    same, cross, trained = ROWS[:5], ROWS[5:], ["gkd", "sweep-t06", "grpo", "cross_tokenizer"]
    assert t.loc[same, "Mean Reverse KL"].map(math.isfinite).all()
    assert t.loc[cross, "Mean Reverse KL"].isna().all()  # never mixed with the aligned divergence
    assert t.loc[cross, table.ALIGNED_COL].map(math.isfinite).all()
    assert t.loc[same, table.ALIGNED_COL].isna().all()
    assert t[table.LOGRATIO_COL].map(math.isfinite).all()  # every row's, across tokenizers too
    assert t.loc["teacher", table.LOGRATIO_COL] == 0.0
    for c in ("Device hours", "Training FLOPs", "Evaluation seconds", "Steps"):
        assert t.loc[trained, c].map(math.isfinite).all(), c
        assert t.loc[["student", "teacher", "cross_tokenizer_pre"], c].isna().all(), c
    # values are the ones written, not re-derived differently
    assert t.loc["gkd", "Accuracy"] == pytest.approx(12 / N)
    assert t.loc["cross_tokenizer_pre", "Accuracy"] == pytest.approx(1 / N)
    assert t.loc["grpo", "Steps"] == 8
    assert t.loc["grpo", "Device hours"] == pytest.approx(8 * 20.0 / 3600, rel=1e-3)
    assert t.loc["grpo", "Training FLOPs"] == pytest.approx(8 * 20.0 * 1e12)
    assert t.loc["grpo", "Evaluation seconds"] == pytest.approx(14.0)  # apart from the training column
    s = table.styled_table(col)
    assert s.loc["gkd", "Accuracy"] == f"{100 * 12 / N:.1f}%"
    assert s.loc["teacher", "Training compute"] == "—" and s.loc["cross_tokenizer", "Mean Reverse KL"] == "—"
    assert s.loc["grpo", "Training compute"].startswith(f"{8 * 20 / 3600:.3g} CPU-h (160 s), 1.60e+14 FLOP")
    assert s.loc["grpo", "Evaluation time"] == "14 s"
    assert not s.isin(["missing", "not run"]).any().any()


def test_the_table_view_shows_full_names_and_long_text_as_footnotes(complete):
    col = collect.collect(complete)
    s = table.styled_table(col)
    page = table.table_view(col)._repr_html_()
    longest = max(s["Model / Method"], key=len)
    assert len(longest) > 50  # pandas' notebook display would cut it
    assert escape(longest) in page
    assert "Divergence kind</th>" not in page and "Note</th>" not in page
    kind = s.loc["gkd", "Divergence kind"]
    assert f"<li>{escape(kind)}</li>" in page
    assert re.search(r"GKD[^<]*\[\d+(, \d+)*\]</td>", page)  # the row points at its footnotes
    assert re.search(r"<tr[^>]*>\s*<th>Model / Method</th>", page)  # no index column before the label
    assert ">gkd</th>" not in page


def test_charts_render_with_labels(complete):
    col = collect.collect(complete)
    for fn in (charts.accuracy_chart, charts.loss_chart, charts.reward_chart, charts.tokens_chart,
               charts.divergence_chart):
        fig = fn(col)
        assert fig._suptitle is not None and fig._suptitle.get_text()
        alt = charts.alt_text(fig)  # the HTML report's alt text: title, and every panel's axes
        assert alt.startswith(fig.get_suptitle())
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel()
            assert f"{ax.get_ylabel()} against {ax.get_xlabel()}" in alt and ax.get_title() in alt
        assert any(ax.lines or ax.collections for ax in fig.axes), fn.__name__
    points, fig = stage.stage_view(complete, "grpo")
    assert list(points["step"]) == [0, 4, 8] and fig.axes


def test_step_axes_have_whole_number_ticks_and_rewards_their_own_range(complete):
    col = collect.collect(complete)
    for fn in (charts.accuracy_chart, charts.loss_chart, charts.reward_chart, charts.tokens_chart):
        for ax in fn(col).axes:
            if ax.get_xlabel() == "optimizer step":
                ticks = [x for x in ax.get_xticks() if ax.get_xlim()[0] <= x <= ax.get_xlim()[1]]
                assert all(float(x).is_integer() for x in ticks), (fn.__name__, ticks)
    reward_ax = charts.reward_chart(col).axes[0]
    assert reward_ax.get_ylim() == (-0.05, 1.05)


def test_missing_stage_and_old_schema_still_render(tmp_path, monkeypatch):
    params = build_runs(tmp_path, monkeypatch, with_grpo=False, old_gkd=True, baseline=False)
    col = collect.collect(params)
    t = table.results_table(col)
    assert list(t.index) == ROWS
    grpo = t.loc["grpo"]
    assert grpo["Status"] == "not run" and "not run" in grpo["Note"]
    for c in ("Accuracy", "Avg Generated Tokens", "Mean Reverse KL", "Device hours", "Steps"):
        assert pd.isna(grpo[c]) and grpo[c] != 0, c
    assert t.loc["student", "Status"] == "not run"  # no baseline dir, and training summaries carry none
    gkd = t.loc["gkd"]
    assert gkd["Status"] == "complete" and "older schema" in gkd["Note"]
    assert pd.isna(gkd["Mean Reverse KL"]) and "mean_reverse_kl" in gkd["Note"]
    assert gkd["Device hours"] == pytest.approx(8 * 9.0 / 3600, rel=1e-3)  # derived from duration_seconds
    assert "wall clock, evaluation included" in gkd["Note"]
    assert pd.isna(gkd["Training FLOPs"])
    s = table.styled_table(col)
    assert s.loc["grpo", "Accuracy"] == "not run" and s.loc["grpo", "Training compute"] == "not run"
    assert s.loc["gkd", "Mean Reverse KL"] == "missing" and s.loc["gkd", "Evaluation time"] == "missing"
    assert s.loc["teacher", "Accuracy"] == "not run"
    text = findings.findings(col)
    assert "GRPO was not run" in text and "baselines were not run" in text
    assert any("grpo" in n for n in col.notes)
    assert charts.accuracy_chart(col).axes
    assert isinstance(charts.reward_chart(col), charts.NotDrawn)  # no GRPO: no empty "no data" panel
    div = charts.divergence_chart(col)
    assert isinstance(div, charts.NotDrawn) or div.axes
    points, _ = stage.stage_view(params, "grpo")
    assert points.empty


def test_interrupted_run_shows_its_last_eval_point(tmp_path, monkeypatch):
    params = build_runs(tmp_path, monkeypatch)
    (tmp_path / "runs" / params.name / "cross_tokenizer" / "summary.json").unlink()
    rd = RunDir(tmp_path / "runs" / params.name / "cross_tokenizer")
    rd.append({"kind": "train", "step": 9, "loss": float("nan"), "grad_norm": float("inf")})  # stored as strings
    col = collect.collect(params)
    t = table.results_table(col)
    assert t.loc["cross_tokenizer", "Status"] == "incomplete" and "last eval point" in t.loc["cross_tokenizer", "Note"]
    assert t.loc["cross_tokenizer", "Accuracy"] == pytest.approx(4 / N)
    assert t.loc["cross_tokenizer_pre", "Accuracy"] == pytest.approx(1 / N)
    assert t.loc["cross_tokenizer", "Steps"] == 8 and math.isfinite(t.loc["cross_tokenizer", "Device hours"])
    assert "Cross-tokenizer distillation is incomplete" in findings.findings(col)
    train = col.runs["cross_tokenizer"].train
    assert train["loss"].dtype == float and train["loss"].isna().sum() == 1 and train["grad_norm"].isna().sum() == 1
    assert charts.loss_chart(col).axes


@pytest.mark.parametrize("gkd_k, grpo_k", [(12, 10), (22, 3), (3, 22), (6, 6)])
def test_findings_lead_with_the_paired_difference(tmp_path, monkeypatch, gkd_k, grpo_k):
    """First sentence: the method that improved the student significantly (exact McNemar on the
    same test problems), or that none did; each method's paired difference and p follow."""
    from atlas_lib.evaluation import stats

    params = build_runs(tmp_path, monkeypatch, gkd=(6, gkd_k), grpo=(6, grpo_k))
    text = findings.findings(collect.collect(params))
    # the primary comparisons (each method against its untrained student, GKD against GRPO), Holm-adjusted
    raw = [stats.mcnemar_exact(max(k - BASE_K, 0), max(BASE_K - k, 0)) for k in (gkd_k, grpo_k)]
    raw += [stats.mcnemar_exact(3, 0), stats.mcnemar_exact(max(gkd_k - grpo_k, 0), max(grpo_k - gkd_k, 0))]
    p_gkd, p_grpo = stats.holm(raw)[:2]
    best = max((("GKD", gkd_k, p_gkd), ("GRPO", grpo_k, p_grpo)), key=lambda x: x[1])
    if best[2] < 0.05 and best[1] > BASE_K:
        assert text.startswith(f"**{best[0]} improved the student's test accuracy by "
                               f"{100 * (best[1] - BASE_K) / N:+.1f} points")
    else:
        assert text.startswith("**No method changed the student's test accuracy")
    assert f"{100 * (gkd_k - BASE_K) / N:+.1f} points" in text and "exact McNemar" in text
    assert f"GKD minus GRPO on the same test problems: {100 * (gkd_k - grpo_k) / N:+.1f} points" in text
    assert "CPU-hours" in text  # the cost is stated in its unit
    assert "smallest paired difference detectable" in text


def test_findings_give_the_answer_as_paragraphs_and_the_context_as_a_list(tmp_path, monkeypatch):
    params = build_runs(tmp_path, monkeypatch, gkd=(6, 12), grpo=(6, 8))
    answer, items = findings.split_findings(findings.findings(collect.collect(params)))
    paragraphs = answer.split("\n\n")
    assert "GKD minus GRPO on the same test problems" in paragraphs[1]  # the verdicts first, then the comparison
    assert not any(line.startswith("- ") for line in answer.split("\n"))
    assert any(item.startswith("Before training, the student scored") for item in items)
    assert any("smallest paired difference detectable" in item for item in items)


def test_findings_state_the_compute_to_match_the_other_method(tmp_path, monkeypatch):
    params = build_runs(tmp_path, monkeypatch, gkd=(6, 6, 20), grpo=(6, 7, 8))
    text = findings.findings(collect.collect(params))
    # n = 24: GRPO's gain (6/24 -> 8/24) is under the split's 95% resolution, so no ratio is read off it
    res = 100 * efficiency.resolution(6 / N, 8 / N, N)
    assert (f"GRPO's validation gain (25.0% -> {100 * 8 / N:.1f}%) is within what the validation split (n = {N}) can "
            f"tell apart (95% resolution {res:.1f} points), so no compute-to-match ratio of GKD against it is given") \
        in text
    # GKD's gain (6/24 -> 20/24) is resolved, and GRPO's curve (best 8/24) never reaches it
    assert (f"GRPO's validation curve never reached GKD's final validation accuracy ({100 * 20 / N:.1f}%; its best "
            f"{100 * 8 / N:.1f}%) within its {8 * 20.0 * 1e12:.2e} training FLOPs, so the curves never cross") in text
    answer = findings.split_findings(text)[0]
    assert "never cross" in answer  # compute to match is part of the answer, not the context list
    assert "0.00x" not in text and "0.00e+00" not in text
    assert f"validation curve (n = {N})" in text and f"the validation split, n = {N}, is too small" in text


def test_a_run_that_did_not_train_is_said_so_everywhere(tmp_path, monkeypatch):
    params = build_runs(tmp_path, monkeypatch)
    path = tmp_path / "runs" / params.name / "grpo" / "summary.json"
    s = json.loads(path.read_text())
    s["did_not_train"] = "no learning signal: every GRPO group had zero reward variance"
    path.write_text(json.dumps(s))
    col = collect.collect(params)
    assert table.results_table(col).loc["grpo", "Status"].startswith("did not train: no learning signal")
    text = findings.findings(col)
    assert "GRPO did not train: no learning signal" in text and "not a result" in text
    assert "GRPO improved" not in text and "GKD minus GRPO" not in text


def test_paired_columns_compare_each_trained_row_with_its_own_untrained_student(complete):
    t = table.results_table(collect.collect(complete))
    assert t.loc["gkd", "Diff vs student"] == pytest.approx((12 - BASE_K) / N)
    assert t.loc["cross_tokenizer", "Diff vs student"] == pytest.approx((4 - 1) / N)  # against cross_pre, not student
    assert t.loc["gkd", "Diff CI low"] < t.loc["gkd", "Diff vs student"] < t.loc["gkd", "Diff CI high"]
    assert pd.isna(t.loc["student", "Diff vs student"]) and pd.isna(t.loc["teacher", table.P_COL])


def test_provenance_has_params_and_no_absolute_paths(complete, tmp_path):
    col = collect.collect(complete)
    text = provenance.provenance(col, complete)
    assert "synth" in text and f"seed {complete.run.seed}" in text and "```yaml" in text
    assert "transformers" in text and "git commit" in text
    assert str(tmp_path) not in text and str(project_root()) not in text
    dumped = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert dumped["gkd"]["max_steps"] == complete.gkd.max_steps


def test_notebook_01_helpers(complete, tmp_path):
    import json

    baselines = json.loads((tmp_path / "runs" / "synth" / "baseline" / "summary.json").read_text())
    b = table.baseline_frame(baselines)
    assert list(b.index) == ["student", "teacher"] and b.loc["teacher", "Accuracy"] == f"{100 * TEACHER_K / N:.1f}%"
    recs = [{"id": f"q{i}", "question": "one two three " * (i + 1), "answer": str(i - 2), "solution": None,
             "group": i} for i in range(6)]
    prepared = SimpleNamespace(train=recs[:3], val=recs[3:4], eval=recs[4:])
    assert list(table.examples_frame(prepared, n=3).index) == ["q4", "q5"]
    fig = charts.data_charts(prepared)
    assert [ax.get_xlabel() for ax in fig.axes] == ["question length (words)", "log10 |answer| (0 for answer 0)"]


def test_notebook_05_is_committed_clean():
    nb = nbformat.read(project_root() / "notebooks" / "05_comparison.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"]
    assert code[0].source.strip().startswith("params_file = ")
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert not any(re.search(r"^\s*(def|class) ", c.source, re.M) for c in code)
    assert nb.metadata.kernelspec.name == "python3"


def _png_b64(top: float = 1) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [top, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def test_render_html_embeds_images_and_scrubs(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("WANDB_API_KEY", CANARY)
    root = str(project_root())
    leak = f"{root}/atlas_lib/report/collect.py and {tmp_path}/runs/x/gkd and key {CANARY} and {root}line"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("params_file = 'SECRET_PARAM_CELL'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("draw_the_chart_xyz()", outputs=[
            nbformat.v4.new_output("display_data", data={"image/png": _png_b64(), "text/plain": "<Figure>"}),
            nbformat.v4.new_output("stream", name="stdout", text=leak)])])
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    for with_code in (True, False):
        out = render_html(src, tmp_path / "out" / f"{with_code}.html", with_code=with_code)
        html = out.read_text()
        assert IMG.search(html)
        assert CANARY not in html and "[redacted]" in html
        assert f"{root}/" not in html and str(tmp_path) not in html
        assert "atlas_lib/report/collect.py" in html and "runs/x/gkd" in html
        assert f"{root}line" in html  # only whole path components are replaced
        assert "SECRET_PARAM_CELL" not in html
        assert ("draw_the_chart_xyz" in html) == with_code
    assert not list((tmp_path / "out").glob(".*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp file's private 0600


def test_render_html_puts_each_charts_alt_text_on_its_image(tmp_path, caplog):
    described, plain = _png_b64(), _png_b64(3)
    assert described != plain
    alt = 'Accuracy: "accuracy (%)" against <step> & more'
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("chart()", outputs=[
        nbformat.v4.new_output("display_data", data={"image/png": described, "text/plain": "<Figure>"},
                               metadata={"image/png": {"alt": alt}}),
        nbformat.v4.new_output("display_data", data={"image/png": plain, "text/plain": "<Figure>"})])])
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    with caplog.at_level(logging.WARNING):
        html = render_html(src, tmp_path / "out.html", with_code=False).read_text()
    tags = re.findall(r"<img\b[^>]*>", html)
    assert len(tags) == 2
    assert f'alt="{escape(alt, quote=True)}"' in tags[0] and described in tags[0]
    assert 'alt="No description has been provided for this image"' in tags[1]  # nbconvert's placeholder
    assert "1 image(s) without alt text" in caplog.text and "Alternative text is missing" not in caplog.text


def test_a_chart_reaches_the_html_page_as_svg_with_its_description(tmp_path):
    import matplotlib.pyplot as plt

    from atlas_lib.report import charts
    fig, (ax,) = charts.figure(1, "Tokens & <more>")
    ax.plot([0, 1, 2], [3, 2, 1], label="GKD")
    ax.set(xlabel="optimizer step", ylabel="tokens")
    charts._legend(ax)
    svg = charts.svg(charts.done(fig))
    plt.close("all")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("chart()", outputs=[
        nbformat.v4.new_output("display_data", data={"image/svg+xml": svg, "text/plain": "<Figure>"})])])
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    html = render_html(src, tmp_path / "out.html", with_code=False).read_text()
    assert "<title>Tokens &amp; &lt;more&gt;. panel 1: tokens against optimizer step; series: GKD</title>" in html
    assert re.search(r'<svg\b[^>]*role="img"[^>]*aria-label="Tokens', html)
    assert "<text" in svg  # labels stay text (svg.fonttype none), not glyph paths
    assert "<?xml" not in html and "<img" not in html


def test_render_html_scrubs_the_checkout_the_notebook_ran_in(tmp_path, monkeypatch):
    """Runs executed from another clone (shared $ATLAS_RUNS, or a moved checkout) carry that
    clone's paths in warnings; the render relativizes them as it does this checkout's."""
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path / "runs"))
    other = tmp_path / "elsewhere" / "clone"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text=f"{other}/atlas_lib/methods/gkd/trainer.py:24: Warning\n"),
        nbformat.v4.new_output("stream", name="stdout", text=f"{other}/.venv/lib/tqdm/auto.py:21\n")])])
    nb.metadata["papermill"] = {"input_path": f"{other}/notebooks/02_gkd.ipynb"}
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    html = render_html(src, tmp_path / "out.html", with_code=True).read_text()
    assert str(other) not in html and str(tmp_path) not in html
    assert "./atlas_lib/methods/gkd/trainer.py:24" in html and "./.venv/lib/tqdm/auto.py:21" in html


def test_render_html_shows_a_progress_bar_once_not_every_redraw(tmp_path):
    frames = ["eval: 0/3\r", "eval: 1/3\r", "eval: 2/3\r", "eval: 3/3\n", "INFO done\n"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text=f) for f in frames])])
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    html = render_html(src, tmp_path / "out.html", with_code=True).read_text()
    assert html.count("eval: 3/3") == 1 and "eval: 1/3" not in html and "INFO done" in html


def test_a_progress_bar_that_cleared_itself_stays_cleared_on_the_page(tmp_path):
    frames = ["\reval:  50%| 6/12", "\reval: 100%| 12/12", "\r" + " " * 40, "\r", "INFO eval step 3: accuracy 0.5\n"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text=f) for f in frames])])
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    page = render_html(src, tmp_path / "out.html", with_code=True).read_text()
    assert "12/12" not in page
    assert "eval step 3" in page


def test_notebook_pages_leave_library_warnings_to_the_log(tmp_path):
    streams = ["INFO atlas_lib.core.models: loaded the student\n",
               "/x/site-packages/transformers/modeling_utils.py:3312: FutureWarning: `is_gradient_checkpointing` "
               "is deprecated\n",
               "  warnings.warn(\n",
               "[transformers] Passing `generation_config` together with generation-related arguments\n",
               "INFO atlas_lib.training.callback: eval step 3: accuracy 0.5\n"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text=t) for t in streams])])
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    page = render_html(src, tmp_path / "out.html", with_code=True).read_text()
    assert "loaded the student" in page
    assert "eval step 3: accuracy 0.5" in page
    assert "FutureWarning" not in page
    assert "warnings.warn(" not in page
    assert "generation_config" not in page
    assert "FutureWarning" in src.read_text()  # the executed notebook (and the run's log) keep them


def test_notebook_05_executes_and_renders(tmp_path, monkeypatch):
    """End to end: papermill runs notebook 05 on the synthetic runs; both HTML renders are clean (~8 s)."""
    import papermill as pm

    params = build_runs(tmp_path, monkeypatch, with_grpo=False)
    monkeypatch.setenv("WANDB_API_KEY", CANARY)
    pfile = tmp_path / "synth.yaml"
    pfile.write_text(yaml.safe_dump(_raw()))
    out_nb = tmp_path / "runs" / params.name / "notebooks" / "05_comparison.ipynb"
    out_nb.parent.mkdir(parents=True)
    pm.execute_notebook(str(project_root() / "notebooks" / "05_comparison.ipynb"), str(out_nb),
                        parameters={"params_file": str(pfile)}, kernel_name="python3", cwd=str(project_root()),
                        progress_bar=False)
    executed = nbformat.read(out_nb, as_version=4)
    outputs = [o.get("data", {}) for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    svgs = [d["image/svg+xml"] for d in outputs if "image/svg+xml" in d]
    assert len(svgs) == 4  # each chart with data exactly once (no GRPO: no reward chart)
    assert not any("image/png" in d for d in outputs)  # and no PNG copy beside it
    # the description is set inside the kernel by atlas_lib.report.charts.svg
    alts = [re.search(r"<title>(.*?)</title>", s, re.S).group(1) for s in svgs]
    assert alts[0].startswith("Accuracy during training: validation curve") and "series: " in alts[0] and "GKD (n=" in alts[0]
    assert not any(a.startswith("Reward during training") for a in alts)
    report_html = render_html(out_nb, tmp_path / "report" / "index.html", with_code=False).read_text()
    code_html = render_html(out_nb, tmp_path / "report" / "05.html", with_code=True).read_text()
    for html in (report_html, code_html):
        assert len(re.findall(r"<svg\b[^>]*role=\"img\"", html)) == 4
        assert "Reward during training (RL methods): no run logged it during training" in html
        assert "<img" not in html
        assert all(f"<title>{a}</title>" in html for a in alts)
        assert str(project_root()) not in html and str(tmp_path) not in html and CANARY not in html
        assert "GRPO was not run" in html
        assert "embedded.yaml" not in html  # the parameters cell's source is hidden
    assert "injected_sections" in code_html and "injected_sections" not in report_html
    assert re.search(r"GKD distilled student", report_html)


def test_findings_moves_compare_the_test_rows(tmp_path, monkeypatch):
    """Tokens and KL in the text are the table's test rows (untrained student -> trained), not the
    validation curve's first and last points."""
    params = build_runs(tmp_path, monkeypatch, gkd=(6, 9))
    path = tmp_path / "runs" / params.name / "gkd" / "summary.json"
    s = json.loads(path.read_text())
    s["distilled"].update(avg_generated_tokens=50.0, mean_reverse_kl=0.123)
    path.write_text(json.dumps(s))
    text = findings.findings(collect.collect(params))
    assert "GKD 121.0 → 50.0" in text and "GKD 0.450 → 0.123" in text
    assert "→ 96.0" not in text and "→ 0.350" not in text


def test_a_lora_run_says_so_in_its_row_and_the_findings(tmp_path, monkeypatch):
    params = build_runs(tmp_path, monkeypatch)
    path = tmp_path / "runs" / params.name / "grpo" / "summary.json"
    s = json.loads(path.read_text())
    s["config"]["grpo"]["lora"] = {"r": 8}
    path.write_text(json.dumps(s))
    full = tmp_path / "runs" / params.name / "gkd" / "summary.json"  # a full fine-tune
    s = json.loads(full.read_text())
    s["config"]["gkd"]["lora"] = {}
    full.write_text(json.dumps(s))
    col = collect.collect(params)
    t = table.results_table(col)
    assert "LoRA adapters (r 8, alpha 32, on all-linear)" in t.loc["grpo", "Note"]
    assert "LoRA" not in t.loc["gkd", "Note"]
    assert "GRPO trained LoRA adapters (r 8" in findings.findings(col)


def _echoing_grpo(params, tmp_path, echoed: int):
    """GRPO's test records rewritten as a policy that restates the first ``echoed`` questions and a
    lenient grader that credited every one of them (what the study's GRPO did under the old grader)."""
    path = tmp_path / "runs" / params.name / "grpo" / "eval" / "final_full.records.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for i, r in enumerate(recs):
        if i < echoed:
            r.update(completion=_echo(i), correct=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_the_audit_flags_a_policy_that_echoes_the_question(tmp_path, monkeypatch):
    params = build_runs(tmp_path, monkeypatch, gkd=(6, 9), grpo=(6, 8))
    _echoing_grpo(params, tmp_path, echoed=20)
    col = collect.collect(params)
    t = table.results_table(col)
    assert t.loc["grpo", "Status"].startswith("reward hacking suspected")
    assert t.loc["grpo", table.RESTATE_COL] == pytest.approx(20 / N)
    assert t.loc["grpo", table.PLAIN_COL] == pytest.approx(0 / 20)  # all 20 credited answers are arithmetic
    text = findings.findings(col)
    assert "GRPO: reward hacking suspected" in text and "is not a gain" in text
    assert not text.startswith("**GRPO improved")


def test_the_audit_does_not_flag_policies_that_state_values(complete):
    col = collect.collect(complete)
    t = table.results_table(col)
    assert not t["Status"].str.contains("reward hacking").any()
    assert t.loc["grpo", table.RESTATE_COL] == 0
    assert t.loc["grpo", table.PLAIN_COL] == 1
    assert "Answer-form audit on the test split" in findings.findings(col)


def test_findings_give_grpo_steps_and_groups_without_signal(complete):
    text = findings.findings(collect.collect(complete))
    # build_runs logs frac_zero_std 0.25 and 0.5/3 at GRPO's two train points
    assert f"GRPO: 0 of 2 logged steps (0%) and {100 * (0.25 + 0.5 / 3) / 2:.0f}% of groups carried no learning signal" \
        in text


def test_a_method_trained_at_several_seeds_shows_the_mean_and_every_seed(tmp_path, monkeypatch):
    params = build_runs(tmp_path, monkeypatch, gkd=(6, 12), grpo=(6, 8), more_seeds={43: ((6, 14), (6, 4)),
                                                                                       44: ((6, 10), (6, 6))})
    col = collect.collect(params)
    t = table.results_table(col)
    assert [k for k in t.index if k.startswith("gkd")] == ["gkd", "gkd-seed42", "gkd-seed43", "gkd-seed44"]
    assert t.loc["gkd", "Model / Method"] == "GKD distilled student (on-policy), mean of 3 seeds"
    assert t.loc["gkd", "Accuracy"] == pytest.approx((12 + 14 + 10) / 3 / N)
    assert t.loc["gkd-seed43", "Accuracy"] == pytest.approx(14 / N)
    assert t.loc["gkd", "Diff vs student"] == pytest.approx(((12 + 14 + 10) / 3 - BASE_K) / N)
    over = stats.paired_seeds([col.correct[f"gkd-seed{s}"] for s in (42, 43, 44)], [col.correct["student"]])
    assert t.loc["gkd", table.P_COL] == pytest.approx(over.p_value)  # the sign test over problems
    assert over.test == "exact sign test over problems"
    assert t.loc["gkd", "Diff CI low"] == pytest.approx(over.ci_low)
    assert t.loc["gkd-seed43", table.P_COL] == pytest.approx(stats.mcnemar_exact(14 - BASE_K, 0))
    primary = [t.loc[k, table.P_COL] for k in ("gkd", "grpo", "cross_tokenizer")]
    primary.append(stats.paired_seeds([col.correct[f"gkd-seed{s}"] for s in (42, 43, 44)],
                                      [col.correct[f"grpo-seed{s}"] for s in (42, 43, 44)]).p_value)
    assert t.loc["gkd", "p (Holm)"] == pytest.approx(stats.holm(primary)[0])
    assert pd.isna(t.loc["gkd-seed43", "p (Holm)"])  # a single seed is not a primary comparison
    page = problems.render(params, col, tmp_path / "problems.html").read_text()
    head = re.search(r"<thead>(.*?)</thead>", page, re.S).group(1)
    assert "mean of" not in head  # a column is one model's completions: each seed's, never "the mean"
    assert "(on-policy) (seed 42)</th>" in head and "(on-policy) (seed 43)</th>" in head
    assert col.runs["gkd-seed43"].name == "GKD (seed 43)"  # one short name per seed in sentences
    text = findings.findings(col)
    assert "(seed 43)" not in findings.split_findings(text)[0]  # the answer speaks of the method, not a seed
    assert "of 3)" in text  # compute to match, seed by seed
    assert "problems gained on a majority of seeds" in text and "per-seed McNemar p" in text
    # the power sentence: one seed pair's discordance (the mean over seeds) at one seed's n
    q = max(pr.discordance for k in ("gkd", "grpo") if (pr := collect.paired_vs(col, k, "student")) is not None)
    assert f"the discordance one seed shows here ({100 * q:.0f}% of problems, the mean over seeds)" in text
    assert f"about {100 * stats.min_detectable_difference(N, q):.1f} points" in text


def test_one_accuracy_reached_by_two_sums_prints_one_way():
    # a mean of seeds, 253/400, from the table's mean of accuracies and from the paired test's mean of outcomes
    assert {table.pct(x) for x in (0.6325, 0.6325 + 1e-15, 0.6325 - 1e-15, (0.64 + 0.625) / 2)} == {"63.2%"}


def _part_way(tmp_path, monkeypatch):
    """A seed-major study interrupted before its third seed: seeds 42 and 43 of each arm finished, 44 not run."""
    params = build_runs(tmp_path, monkeypatch, gkd=(6, 6, 20), grpo=(6, 7, 8),
                        more_seeds={43: ((6, 8, 18), (6, 6, 7)), 44: ((6, 10, 19), (6, 7, 9))})
    for run in ("gkd-seed44", "grpo-seed44"):
        shutil.rmtree(tmp_path / "runs" / "synth" / run)
    return collect.collect(params)


def test_a_study_part_way_names_the_mean_of_the_seeds_that_finished(tmp_path, monkeypatch):
    col = _part_way(tmp_path, monkeypatch)
    t = table.results_table(col)
    assert t.loc["gkd", "Model / Method"].endswith(", mean of 2 of 3 seeds")
    assert t.loc["gkd", "Accuracy"] == pytest.approx((20 + 18) / 2 / N)
    assert t.loc["gkd", "Note"].startswith("mean of seeds 42, 43 (44 not finished);")
    assert "GKD (mean of 2 of 3 seeds)" in list(table.key_frame(t, col)["Method"])


def test_a_study_part_way_still_reads_compute_to_match_on_its_finished_seeds(tmp_path, monkeypatch):
    col = _part_way(tmp_path, monkeypatch)
    m = efficiency.compute_to_match(col, "grpo", "gkd")
    assert [s.seed for s in m.seeds] == [42, 43]
    text = efficiency.match_text(col, m, "CPU-hours")
    assert "(seeds 42, 43: 2 of 3)" in text
    assert text.endswith("; 1 of 3 seed pairs not finished, so not read")


def test_a_sentence_about_the_first_seed_alone_names_its_seed(tmp_path, monkeypatch):
    text = findings.findings(_part_way(tmp_path, monkeypatch))  # "GRPO" alone is the table's mean row
    assert "GRPO (seed 42): 0 of 2 logged steps" in text
    assert "GRPO: 0 of 2 logged steps" not in text


def test_the_findings_of_a_study_part_way_check_against_its_table(tmp_path, monkeypatch):
    col = _part_way(tmp_path, monkeypatch)
    tab = json.loads(table.results_table(col).to_json(orient="index"))
    text = "\n\n".join([findings.first_screen(col), findings.findings(col)])
    result = findings_check.check_markdown(text, tab)
    assert result.mismatches == [], findings_check.format_text(result)


def test_each_distilling_row_shows_its_own_objective_and_the_findings_say_where_it_went(complete):
    col = collect.collect(complete)
    s = table.styled_table(col)
    t = table.results_table(col)
    for row in ("gkd", "cross_tokenizer_pre", "cross_tokenizer"):  # distillers: their loss on the test answers
        assert s.loc[row, table.OBJECTIVE_COL] == f"{t.loc[row, table.OBJECTIVE_COL]:.4f}", row
    for row in ("student", "teacher", "grpo"):  # no distillation objective: not applicable, not "missing"
        assert s.loc[row, table.OBJECTIVE_COL] == "—", row
    text = findings.findings(col)
    # cross-tokenizer fixture: div 0.9 -> 0.7, objective = div / 4
    assert "its own objective (Cross-tokenizer: aligned-span loss) on the test answers went 0.2250 → 0.1750." in text


def test_a_distillation_row_that_restates_is_not_called_reward_hacking(tmp_path, monkeypatch):
    # issue 40: GKD has no reward to hack; its restating row gets its own label
    params = build_runs(tmp_path, monkeypatch, gkd=(6, 9), grpo=(6, 8))
    path = tmp_path / "runs" / params.name / "gkd" / "eval" / "final_full.records.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for i, r in enumerate(recs[:20]):
        r.update(completion=_echo(i), correct=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    t = table.results_table(collect.collect(params))
    assert t.loc["gkd", "Status"].startswith("restates the question: ")


def test_a_log_ratio_scored_under_the_old_rule_is_footnoted_not_mixed(tmp_path, monkeypatch):
    # issue 40: rows scored before the stop token counted are marked wherever the value is shown
    params = build_runs(tmp_path, monkeypatch, gkd=(6, 9), grpo=(6, 8))
    path = tmp_path / "runs" / params.name / "gkd" / "summary.json"
    summary = json.loads(path.read_text())
    del summary["distilled"]["logratio_version"]  # evaluated before the kit stamped the rule
    path.write_text(json.dumps(summary))
    col = collect.collect(params)
    styled = table.styled_table(col)
    assert styled.loc["gkd", table.LOGRATIO_COL].endswith("(old rule)")
    assert table.OLD_LOGRATIO in styled.loc["gkd", "Note"]
    assert not styled.loc["grpo", table.LOGRATIO_COL].endswith("(old rule)")
    assert "(old rule: stop token left out)" in findings.findings(col)


def test_the_log_ratio_is_said_to_be_one_greedy_answer_per_problem(complete):
    col = collect.collect(complete)
    assert "one greedy answer per problem" in findings.findings(col)
    assert "one greedy answer per problem" in table.table_view(col)._repr_html_()
