"""The terminal's live bar for a running stage (atlas_lib.report.progress): fed by the stage's own
metrics.jsonl and papermill's cell log, shown only on a terminal."""

from __future__ import annotations

import io
import json
import logging

from atlas_lib.core import config
from atlas_lib.report import pipeline
from atlas_lib.report.progress import StageProgress, read_progress
from atlas_lib.report.stage_run import stage_progress


def _metrics(path, records, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_read_progress_counts_steps_and_eval_points_and_skips_a_half_written_line(tmp_path):
    _metrics(tmp_path / "gkd" / "metrics.jsonl",
             [{"kind": "eval", "step": 0}, {"kind": "train", "step": 1}, {"kind": "train", "step": 2}],
             tail='{"kind": "eval", "st')
    _metrics(tmp_path / "grpo" / "metrics.jsonl", [{"kind": "train", "step": 1}, {"kind": "eval", "step": 1}])
    got = read_progress([tmp_path / "gkd" / "metrics.jsonl", tmp_path / "grpo" / "metrics.jsonl",
                         tmp_path / "missing" / "metrics.jsonl"])
    assert got == (3, 2)


def test_the_bar_shows_steps_eval_points_and_the_current_cell(tmp_path):
    metrics = tmp_path / "gkd" / "metrics.jsonl"
    out = io.StringIO()
    with StageProgress("02_gkd", cells=15, metrics=[metrics], total_steps=3, stream=out, interval=3600) as bar:
        logging.getLogger("papermill").info("Executing Cell 7-------------")
        _metrics(metrics, [{"kind": "eval", "step": 0}, {"kind": "train", "step": 1}, {"kind": "train", "step": 2}])
        bar.poll()
        shown = out.getvalue().split("\r")[-1]
    assert "[02_gkd] 2/3 steps" in shown
    assert "eval points 1" in shown
    assert "cell 7/15" in shown


def test_after_the_last_step_the_bar_says_the_final_evaluation_is_running(tmp_path):
    metrics = tmp_path / "gkd" / "metrics.jsonl"
    _metrics(metrics, [{"kind": "train", "step": s} for s in (1, 2, 3)])
    out = io.StringIO()
    with StageProgress("02_gkd", cells=15, metrics=[metrics], total_steps=3, stream=out, interval=3600) as bar:
        bar.poll()
        shown = out.getvalue().split("\r")[-1]
    assert "3/3 steps" in shown
    assert "final evaluation" in shown


def test_a_stage_without_training_counts_cells(tmp_path):
    out = io.StringIO()
    with StageProgress("01_data", cells=12, metrics=[], total_steps=None, stream=out, interval=3600) as bar:
        logging.getLogger("papermill").info("Executing Cell 5-------------")
        bar.poll()
        shown = out.getvalue().split("\r")[-1]
    assert "[01_data] 5/12 cells" in shown


def test_without_a_terminal_nothing_is_drawn(tmp_path):
    with StageProgress("02_gkd", cells=15, metrics=[], total_steps=3, stream=None) as bar:
        bar.poll()
    assert bar.bar is None


def test_each_stage_gets_its_methods_steps_or_its_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path))
    params = config.load("params/embedded.yaml")
    plan = {s.notebook: s for s in pipeline.steps(params)}
    gkd = stage_progress(params, plan["02_gkd"], None)
    data = stage_progress(params, plan["01_data"], None)
    assert gkd.total_steps == params.gkd.max_steps
    assert gkd.metrics == [tmp_path / "embedded" / "gkd" / "metrics.jsonl"]
    assert data.total_steps is None
    assert data.cells > 5


def test_the_bar_reads_a_renamed_run_and_counts_sweep_variants(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path))
    params = config.load("params/smoke.yaml", overrides={"gkd.run_name": "smoke/gkd-long"})
    variants = config.sweep_variants(params, "gkd")
    step = next(s for s in pipeline.steps(params) if "gkd" in s.stages)
    bar = stage_progress(params, step, None)
    assert variants  # the smoke profile sweeps gkd, so the sweep branch is exercised
    assert bar.metrics[0] == tmp_path / "smoke" / "gkd-long" / "metrics.jsonl"
    assert tmp_path / "smoke" / "gkd-long-sweep-t0.6" / "metrics.jsonl" in bar.metrics
    others = [k for k in step.stages if k != "gkd"]  # the off-policy arm shares notebook 02
    assert len(bar.metrics) == 1 + len(variants) + len(others)
    assert bar.total_steps == (params.gkd.max_steps + sum(v.gkd.max_steps for _, v in variants)
                               + sum(params.section(k).max_steps for k in others))


def test_tqdm_advice_to_install_ipywidgets_is_not_shown_and_other_warnings_are():
    """In a fresh interpreter (pytest manages warning filters around each test): after ``import atlas_lib``
    tqdm's missing-ipywidgets advice is filtered, another tqdm warning is not."""
    import subprocess
    import sys

    code = ("import warnings, atlas_lib\nfrom tqdm import TqdmWarning\n"
            "for i, m in enumerate(['IProgress not found. Please update jupyter and ipywidgets.', 'something else']):\n"
            "    warnings.warn_explicit(m, TqdmWarning, 'tqdm/auto.py', 21 + i, module='tqdm.auto')\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert "IProgress not found" not in err
    assert "something else" in err
