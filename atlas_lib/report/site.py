"""The report folder as one site: ``index.html`` (notebook 05), ``problems.html``, the method notebooks'
pages and the table files, every page linking to the others (:func:`atlas_lib.report.html.site_nav`)."""

from __future__ import annotations

import json
import re
from html import escape as html_escape
from pathlib import Path

from atlas_lib.core import config, registry
from atlas_lib.core.files import atomic_write_text
from atlas_lib.report import findings_check, problems
from atlas_lib.report.collect import Collected, collect
from atlas_lib.report.findings import headline
from atlas_lib.report.html import page_document, render_html, site_nav
from atlas_lib.report.table import results_table


def render_site(params: config.Params, notebooks: list[str], nb_dir: Path, out_dir: Path) -> Path:
    """Render ``reports/<profile>/`` from the executed notebooks in ``nb_dir`` (``notebooks``: the method
    stages, 05 aside); returns ``index.html``."""
    pages = [("index.html", "Report"), ("problems.html", "Every problem")] + [
        (f"notebooks/{nb}.html", page_label(nb)) for nb in notebooks if (nb_dir / f"{nb}.ipynb").exists()] + [
        ("../index.html", "All reports")]
    col = collect(params)
    html = render_html(nb_dir / "05_comparison.ipynb", out_dir / "index.html", with_code=False,
                       nav=site_nav("index.html", pages), title=page_title(col, params))
    write_table_files(params, out_dir, col, nav=site_nav("problems.html", pages))
    findings_check.write_check(out_dir / "index.html")  # every stated number read back: warnings + findings_check.json
    for nb in notebooks:
        if (nb_dir / f"{nb}.ipynb").exists():
            page = f"notebooks/{nb}.html"
            render_html(nb_dir / f"{nb}.ipynb", out_dir / page, with_code=True, nav=site_nav(page, pages))
    write_reports_index(out_dir.parent)
    return html


def _check_note(report: Path) -> str:
    """What the findings checker found on that report (its ``findings_check.json``), so a reader of the
    index learns before opening a page whether its sentences agree with its own table."""
    try:
        found = json.loads((report / findings_check.CHECK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return " <em>(its findings are not checked yet)</em>"
    bad = len(found.get("mismatches", []))
    if not bad:
        return f" <em>(findings checked: {found.get('checked', 0)} claims agree with its table)</em>"
    return (f' <strong>(findings checker: {bad} statement{"s disagree" if bad > 1 else " disagrees"} with its table; '
            f'stale until re-rendered, see <a href="{report.name}/{findings_check.CHECK_FILE}">'
            f"{findings_check.CHECK_FILE}</a>)</strong>")


def write_reports_index(root: Path) -> Path:
    """``<reports>/index.html``: one link per report folder below ``root`` (each holding an ``index.html``),
    titled by that report's own page title, so the published reports link to each other both ways."""
    entries = []
    for page in sorted(root.glob("*/index.html")):
        found = re.search(r"<title>(.*?)</title>", page.read_text(encoding="utf-8"), re.S)
        title = found.group(1).strip() if found else page.parent.name
        entries.append(f'<li><a href="{page.parent.name}/index.html">{html_escape(page.parent.name)}</a>: '
                       f"{title}{_check_note(page.parent)}</li>")  # the title is already HTML-escaped in its page
    body = "\n".join(entries) or "<li>No report rendered yet.</li>"
    text = page_document("atlas-distill-kit reports", "<h1>atlas-distill-kit reports</h1>\n<p>Each report is one "
                         "profile's run (<code>atlas report --params params/PROFILE.yaml</code>); its page says which "
                         f"models, problems and code made it.</p>\n<ul>\n{body}\n</ul>")
    out = root / "index.html"
    atomic_write_text(out, text)
    return out


def page_label(notebook: str) -> str:
    """'02 GKD': a notebook's number and the name of the first method it runs (registry), or its own name."""
    number, _, rest = notebook.partition("_")
    name = next((m.name for m in registry.methods() if m.notebook == notebook), rest.replace("_", " "))
    return f"{number} {name}"


def write_table_files(params: config.Params, out_dir: Path, col: Collected | None = None, nav: str = "") -> None:
    """``table.csv`` and ``table.json`` beside ``index.html`` (the numbers a reader would re-plot) and
    ``problems.html`` (every test problem's completions, right or wrong, per model)."""
    col = col if col is not None else collect(params)
    numbers = results_table(col)
    atomic_write_text(out_dir / "table.csv", numbers.to_csv(index_label="row"))
    atomic_write_text(out_dir / "table.json", numbers.to_json(orient="index", indent=1) + "\n")
    problems.render(params, col, out_dir / "problems.html", nav=nav, table=numbers)  # one table, not two


def page_title(col: Collected, params: config.Params) -> str:
    """The report page's title: its headline without the Markdown."""
    return headline(col, params).split("\n")[0].lstrip("# ").strip()
