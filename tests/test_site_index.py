"""reports/index.html links every rendered report, and every report page links back to it."""

import json

from atlas_lib.report.html import site_nav
from atlas_lib.report.site import write_reports_index


def test_index_links_each_report_by_its_title(tmp_path):
    for name, title in (("embedded", "GKD +6 pts"), ("study", "GKD &amp; GRPO")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text(f"<html><head><title>{title}</title></head></html>")
    (tmp_path / "stray").mkdir()  # a folder without a report page is not listed
    text = write_reports_index(tmp_path).read_text()
    assert '<a href="embedded/index.html">embedded</a>: GKD +6 pts' in text
    assert '<a href="study/index.html">study</a>: GKD &amp; GRPO' in text
    assert "stray" not in text


def test_a_notebook_page_links_up_to_the_reports_index():
    nav = site_nav("notebooks/02_gkd.html", [("index.html", "Report"), ("../index.html", "All reports")])
    assert '<a href="../../index.html">All reports</a>' in nav


def test_index_says_what_the_findings_checker_found(tmp_path):
    for name, found in (("good", {"mismatches": [], "checked": 12}),
                        ("stale", {"mismatches": [{"claim": "x"}, {"claim": "y"}], "checked": 9}), ("new", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text(f"<title>{name}</title>")
        if found is not None:
            (tmp_path / name / "findings_check.json").write_text(json.dumps(found))
    text = write_reports_index(tmp_path).read_text()
    assert "good</a>: good <em>(findings checked: 12 claims agree with its table)</em>" in text
    assert "stale</a>: stale <strong>(findings checker: 2 statements disagree with its table" in text
    assert "new</a>: new <em>(its findings are not checked yet)</em>" in text
