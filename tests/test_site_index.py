"""reports/index.html links every rendered report, and every report page links back to it."""

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
