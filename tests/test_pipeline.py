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


PAGES = ("index.html", "problems.html", "notebooks/01_data.html", "notebooks/02_gkd.html", "notebooks/03_grpo.html",
         "notebooks/04_cross_tokenizer.html")


def _page(tmp, name: str) -> str:
    return (tmp / "reports/smoke" / name).read_text()


def test_the_first_screen_names_the_comparison_and_leads_with_the_answer(smoke):
    tmp, _ = smoke
    html = _page(tmp, "index.html")
    body = html.split("<body>", 1)[1]
    first_heading = re.search(r"<h1[^>]*>(.*?)</h1>", body, re.S).group(1)
    assert "tiny-qwen2-student" in first_heading and "tiny-qwen2-teacher" in first_heading
    lead = re.sub(r"<[^>]+>", "", re.findall(r"<p>(.*?)</p>", body.split("</h1>", 1)[1], re.S)[0])
    assert lead.startswith("Test accuracy, untrained → trained [95% CI]: GKD ")
    assert body.index('class="dataframe atlas-key"') < body.index("held-out test problems")  # the setting: below
    assert body.index("How to read it: a difference counts only when the exact McNemar") < body.index("About this report")


def test_at_most_sixty_words_before_the_key_table(smoke):
    """The first screen: title, lead and rule, then the key table (the page links are not counted)."""
    tmp, _ = smoke
    body = _page(tmp, "index.html").split("<body>", 1)[1]
    before = re.sub(r"<nav\b.*?</nav>|<script\b.*?</script>|<style\b.*?</style>", "", body.split("<table", 1)[0], flags=re.S)
    words = [w for w in re.sub(r"<[^>]+>", " ", before).split() if re.search(r"\w", w)]
    assert len(words) <= 60, " ".join(words)


def test_the_first_table_is_the_key_table(smoke):
    from atlas_lib.report.table import KEY_COLS

    tmp, _ = smoke
    first = re.search(r"<table\b[^>]*>.*?</thead>", _page(tmp, "index.html"), re.S).group(0)
    assert re.findall(r"<th>(.*?)</th>", first) == list(KEY_COLS)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_has_a_viewport_and_links_to_the_others(smoke, page):
    tmp, _ = smoke
    html = _page(tmp, page)
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    up = "../" * page.count("/")
    for other in PAGES:
        if other != page:
            assert f'href="{up}{other}"' in html, other


@pytest.mark.parametrize("page", PAGES)
def test_no_page_loads_a_remote_resource(smoke, page):
    tmp, _ = smoke
    html = _page(tmp, page)
    assert not re.search(r"""<(script|img|link|iframe)\b[^>]*(src|href)=["']?(https?:)?//""", html, re.I)
    assert "@import" not in html


def test_math_renders_as_mathml_on_the_method_pages(smoke):
    tmp, _ = smoke
    html = _page(tmp, "notebooks/02_gkd.html")
    assert "<math" in html
    assert "$$\\mathrm{JSD}" not in html


def test_the_per_problem_page_shades_tokens_of_same_tokenizer_rows(smoke):
    tmp, _ = smoke
    html = _page(tmp, "problems.html")
    levels = json.loads(re.search(r'<script type="application/json" id="kl">(.*?)</script>', html, re.S).group(1))
    assert levels  # the untrained student, GKD and GRPO rows were scored by the same-tokenizer teacher
    assert all(0 <= q <= 9 for lv in levels.values() for _, q in lv)
    assert 'id="sh" onchange="shade(this.checked)"' in html
    assert "&quot;" not in re.search(r'id="rows">(.*?)</script>', html, re.S).group(1)


def test_second_run_reuses_finished_stages(smoke):
    tmp, _ = smoke
    env = {**os.environ, "ATLAS_RUNS": str(tmp / "runs"), "ATLAS_REPORTS": str(tmp / "reports"),
           "ATLAS_CACHE": str(tmp / "cache"), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "atlas_lib.cli", "report", "--params", "params/smoke.yaml"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for nb in ("01_data", "02_gkd", "03_grpo", "04_cross_tokenizer"):
        assert f"[{nb}] reusing" in proc.stderr
