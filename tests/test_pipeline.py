"""The smoke tier: every notebook through papermill on params/smoke.yaml, into a temp dir.

Also the security check of issue 10: with canary secrets in the environment, none may appear
anywhere under runs/ or reports/ (executed notebooks, HTML, JSON, logs, W&B offline files).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CANARIES = {"WANDB_API_KEY": "canary0wandb0key0" + "x" * 23, "HF_TOKEN": "hf_canaryTOKEN0123456789abcdef"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "ATLAS_RUNS": str(tmp / "runs"), "ATLAS_REPORTS": str(tmp / "reports"),
           "ATLAS_CACHE": str(tmp / "cache"), "WANDB_MODE": "offline", **CANARIES}
    proc = subprocess.run([sys.executable, "-m", "atlas_lib.cli", "report", "--params", "params/smoke.yaml"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


def test_pipeline_writes_every_row_and_the_charts(smoke, monkeypatch):
    tmp, _ = smoke
    monkeypatch.setenv("ATLAS_RUNS", str(tmp / "runs"))
    from atlas_lib.core import config
    from atlas_lib.report import collect
    from atlas_lib.report.table import results_table

    table = results_table(collect.collect(config.load("params/smoke.yaml")))
    assert {"student", "teacher", "gkd", "sweep-t0.6", "grpo", "cross_tokenizer_pre", "cross_tokenizer"} <= set(table.index)
    for row in table.index:
        assert math.isfinite(table.loc[row, "Accuracy"]) and math.isfinite(table.loc[row, "Avg Generated Tokens"])
    for row in ("student", "gkd", "grpo"):
        assert math.isfinite(table.loc[row, "Mean Reverse KL"])
    for row in ("gkd", "grpo", "cross_tokenizer"):
        assert 0.05 < table.loc[row, "Peak RSS GB"] < 64
    for row in ("cross_tokenizer_pre", "cross_tokenizer"):
        assert math.isfinite(table.loc[row, "Aligned divergence (cross-tokenizer)"])
    numbers = json.loads((tmp / "reports/smoke/table.json").read_text())
    assert set(numbers) == set(table.index)
    assert numbers["gkd"]["Accuracy"] == pytest.approx(table.loc["gkd", "Accuracy"])
    csv_rows = [line.split(",")[0] for line in (tmp / "reports/smoke/table.csv").read_text().splitlines()[1:]]
    assert csv_rows == list(table.index)
    page = (tmp / "reports/smoke/problems.html").read_text()
    first = json.loads((tmp / "runs/smoke/data/eval.jsonl").read_text().splitlines()[0])
    assert first["id"] in page and "GKD at temperature 0.6 (6 tokens)" in page
    assert "Off-policy distilled student" in page
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"http", page)  # self-contained
    html = (tmp / "reports/smoke/index.html").read_text()
    assert len(re.findall(r"<svg\b[^>]*aria-label=\"[^\"]+\"[^>]*><title>", html)) >= 5  # charts, described
    assert "data:image/png" not in html  # SVG only: no second copy of a chart as PNG
    for nb in ("01_data", "02_gkd", "03_grpo", "04_cross_tokenizer"):
        page = (tmp / "reports/smoke/notebooks" / f"{nb}.html").read_text()
        assert "No description has been provided" not in page, nb  # every chart has its alt text
    assert "No description has been provided" not in html


def test_no_secret_or_absolute_path_in_outputs(smoke):
    tmp, _ = smoke
    checked = 0
    for base in (tmp / "runs", tmp / "reports"):
        for f in base.rglob("*"):
            if not f.is_file() or f.suffix in (".safetensors", ".pt", ".bin", ".pth"):
                continue
            data = f.read_bytes()
            checked += 1
            for name, value in CANARIES.items():
                assert value.encode() not in data, f"{name} leaked into {f.relative_to(tmp)}"
    assert checked > 20
    for f in (tmp / "reports").rglob("*.html"):
        text = f.read_text()
        assert str(ROOT) not in text and str(tmp) not in text, f"absolute path in {f.name}"


def test_second_run_reuses_finished_stages(smoke):
    tmp, _ = smoke
    env = {**os.environ, "ATLAS_RUNS": str(tmp / "runs"), "ATLAS_REPORTS": str(tmp / "reports"),
           "ATLAS_CACHE": str(tmp / "cache"), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "atlas_lib.cli", "report", "--params", "params/smoke.yaml"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for nb in ("01_data", "02_gkd", "03_grpo", "04_cross_tokenizer"):
        assert f"[{nb}] reusing" in proc.stderr
