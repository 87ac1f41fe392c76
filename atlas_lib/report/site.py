"""The report folder as one site: ``index.html`` (notebook 05), ``problems.html``, the method notebooks'
pages and the table files, every page linking to the others (:func:`atlas_lib.report.html.site_nav`)."""

from __future__ import annotations

from pathlib import Path

from atlas_lib.core import config, registry
from atlas_lib.core.rundir import atomic_write_text
from atlas_lib.report import problems
from atlas_lib.report.collect import Collected, collect
from atlas_lib.report.findings import headline
from atlas_lib.report.html import render_html, site_nav
from atlas_lib.report.table import results_table


def render_site(params: config.Params, notebooks: list[str], nb_dir: Path, out_dir: Path) -> Path:
    """Render ``reports/<profile>/`` from the executed notebooks in ``nb_dir`` (``notebooks``: the method
    stages, 05 aside); returns ``index.html``."""
    pages = [("index.html", "Report"), ("problems.html", "Every problem")] + [
        (f"notebooks/{nb}.html", page_label(nb)) for nb in notebooks if (nb_dir / f"{nb}.ipynb").exists()]
    col = collect(params)
    html = render_html(nb_dir / "05_comparison.ipynb", out_dir / "index.html", with_code=False,
                       nav=site_nav("index.html", pages), title=page_title(col, params))
    write_table_files(params, out_dir, col, nav=site_nav("problems.html", pages))
    for nb in notebooks:
        if (nb_dir / f"{nb}.ipynb").exists():
            page = f"notebooks/{nb}.html"
            render_html(nb_dir / f"{nb}.ipynb", out_dir / page, with_code=True, nav=site_nav(page, pages))
    return html


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
