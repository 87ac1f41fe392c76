"""Executed notebook -> one self-contained HTML file, with paths and secrets scrubbed.

Images are inline base64 PNGs (nbconvert's default), so the file can be mailed or committed. The
scrub pass is defence in depth: the kit never writes a secret or an absolute path on purpose, but
a traceback or a library's log line might, and a committed report must not carry them.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import re
from pathlib import Path

from atlas_lib.core.files import atomic_write_text
from atlas_lib.core.paths import cache_root, project_root, runs_root
from atlas_lib.core.validate import TOKEN_LIKE
from atlas_lib.report.mathml import math_to_mathml

log = logging.getLogger(__name__)
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # the only places a secret may live
HIDDEN_INPUT_TAGS = {"parameters", "injected-parameters"}
_MIN_SECRET_LEN = 6  # a shorter "secret" (e.g. "1") would shred the page and is no real token


def _path_forms(run_roots: tuple[Path, ...] = ()) -> list[tuple[str, str]]:
    """(absolute path as it may appear, replacement), most specific first. ``run_roots``: checkouts
    the notebook was executed from, when that was not this one (a moved clone, or ``$ATLAS_RUNS``
    shared between clones): their paths are ``.`` too."""
    pairs = []
    for base, label in ((runs_root(), "runs"), (cache_root(), "$ATLAS_CACHE"), (project_root(), "."),
                        *((r, ".") for r in run_roots), (Path.home(), "~")):
        for form in {str(base), str(Path(base).resolve())}:
            if len(form) > 1:  # never replace "/" itself
                pairs.append((form.rstrip("/"), label))
    return sorted(set(pairs), key=lambda p: -len(p[0]))


def scrub_text(text: str, run_roots: tuple[Path, ...] = ()) -> tuple[str, dict[str, int]]:
    """Replace absolute project/home/runs/cache paths (and ``run_roots``, see :func:`_path_forms`)
    with relative forms and secret env values with ``[redacted]``; returns the text and how many of
    each were replaced (values never logged)."""
    counts = {"paths": 0, "secrets": 0}
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= _MIN_SECRET_LEN and value in text:
            counts["secrets"] += text.count(value)
            text = text.replace(value, "[redacted]")
    text, n = TOKEN_LIKE.subn("[redacted]", text)  # a token typed into free-text params (description, project)
    counts["secrets"] += n
    for form, label in _path_forms(run_roots):
        # only whole path components: /work/main must not eat /work/mainline
        text, n = re.subn(re.escape(form) + r"(?![\w.-])", lambda _m, lb=label: lb, text)
        counts["paths"] += n
    return text, counts


def _strip_stderr(nb) -> None:
    """The reader's version drops log lines (stderr); warnings worth reading are in the findings."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", [])
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]


# A Python warning as `warnings` prints it ("<file>:<line>: <Category>Warning: ..."), and a library
# logger's own warning prefix; a warning's source-line echo follows it indented.
_LIBRARY_WARNING = re.compile(r"^(\S.*:\d+: \w*Warning: |\[transformers\] )")


def _drop_library_warnings(nb) -> int:
    """Notebook pages keep the kit's log lines (what loaded, what was evaluated) but not library
    warnings: deprecations and the like are for the run's log (``runs/<profile>/logs/``, where papermill
    copies every stream), not for a reader. Returns the number of lines dropped."""
    dropped = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs, in_warning = [], False
        for o in cell.get("outputs", []):
            if not (o.get("output_type") == "stream" and o.get("name") == "stderr"):
                outputs.append(o)
                in_warning = False
                continue
            kept, lines = [], [x for x in re.split(r"(?<=\n)", o.get("text", "")) if x]  # "\r" frames stay in their line
            for line in lines:
                if _LIBRARY_WARNING.match(line) or (in_warning and line[:1] in (" ", "\t") and line.strip()):
                    in_warning, dropped = True, dropped + 1
                    continue
                in_warning = False
                kept.append(line)
            if len(kept) == len(lines) or "".join(kept).strip():  # a progress bar's clearing frame stays
                o["text"] = "".join(kept)
                outputs.append(o)
        cell.outputs = outputs
    return dropped


def _executed_from(nb) -> tuple[Path, ...]:
    """The checkout papermill ran the notebook in (``<root>/notebooks/<name>.ipynb`` as recorded in
    its metadata), if any: tracebacks and warnings carry that checkout's absolute paths."""
    source = (nb.metadata.get("papermill") or {}).get("input_path") or ""
    path = Path(source)
    return (path.parent.parent,) if path.is_absolute() and path.parent.name == "notebooks" else ()


def _alt_texts(nb) -> dict[str, str]:
    """base64 PNG -> its alt text, for image outputs that carry one (charts: atlas_lib.report.charts.alt_text)."""
    alts = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png")
            alt = ((out.get("metadata") or {}).get("image/png") or {}).get("alt")
            if isinstance(png, str) and alt:
                alts[png] = alt
    return alts


def _with_alt_text(body: str, alts: dict[str, str]) -> tuple[str, int]:
    """Each ``<img>`` whose inline PNG has an alt text gets it (nbconvert's template ignores output
    metadata and writes a placeholder), and each chart's SVG (described by its own ``<title>``)
    replaces its ``<img>``; returns the HTML and how many images still lack a description."""
    missing = 0

    def one(m: re.Match) -> str:
        nonlocal missing
        tag = m.group(0)
        svg = re.search(r'src="data:image/svg\+xml;base64,([^"]*)"', tag)
        if svg:  # a chart (atlas_lib.report.charts.svg) goes in as itself: crisp, its text selectable
            text = base64.b64decode(svg.group(1)).decode("utf-8", errors="replace")
            if re.match(r'<svg\b[^>]*\srole="img"', text) and "<title>" in text and "<script" not in text:
                return text
        src = re.search(r'src="data:image/png;base64,([^"]*)"', tag)
        alt = alts.get(src.group(1)) if src else None
        if alt is None:
            missing += 1
            return tag
        # the placeholder attribute out (whitespace-led: a base64 src may end in "alt="), ours in
        tag = re.sub(r'\salt="[^"]*"', "", tag, count=1)
        return tag.replace("<img", f'<img alt="{html.escape(alt, quote=True)}"', 1)

    return re.sub(r"<img\b[^>]*>", one, body), missing


VIEWPORT = '<meta name="viewport" content="width=device-width, initial-scale=1">'
# The report's pages, relative to its folder (reports/<profile>/), in the order the site nav lists them
SITE_PAGES = (("index.html", "Report"), ("problems.html", "Every problem"),
              ("notebooks/01_data.html", "01 data"), ("notebooks/02_gkd.html", "02 GKD"),
              ("notebooks/03_grpo.html", "03 GRPO"), ("notebooks/04_cross_tokenizer.html", "04 cross-tokenizer"))


def site_nav(current: str, pages: list[tuple[str, str]] | tuple = SITE_PAGES) -> str:
    """The links every page of a report carries (``current``: this page's path in the folder), so a
    published folder reads as one site and no page is stranded."""
    up = "../" * current.count("/")
    links = [f"<strong>{html.escape(label)}</strong>" if href == current else
             f'<a href="{up}{href}">{html.escape(label)}</a>' for href, label in pages]
    return f'<nav class="atlas-nav" aria-label="report pages">{" · ".join(links)}</nav>'


# Print: a <details> block opens for printing, except the full parameter set (class atlas-params: pages of
# YAML on paper), which prints as its compact summary (class atlas-print-only) instead; links show their target.
PRINT_SCRIPT = ("<script>addEventListener('beforeprint',()=>document.querySelectorAll('details:not(.atlas-params)')"
                ".forEach(d=>d.open=true))</script>")

# A page that reads in a browser and on a phone, prints to PDF with every column, and follows a dark
# system theme. Wide tables and charts scroll inside their own box (at 390 px a chart keeps a
# legible size instead of shrinking its labels); headings and captions stay with what follows them.
# The key table (atlas-key) fits 390 px as it is; from 900 px the full table (atlas-table) may break
# long words so its 20 columns fit a 1280 px page without a scroll box.
PAGE_CSS = """body{font:15px/1.5 system-ui,-apple-system,sans-serif;max-width:1280px;margin:2em auto;padding:0 1em;color:#222}
img,svg{max-width:100%;height:auto}h1,h2,h3{line-height:1.2}
.atlas-nav{font-size:14px;margin:0 0 1em;padding:.4em 0;border-bottom:1px solid #ddd}
.output_subarea,.jp-OutputArea-output,.atlas-scroll{overflow-x:auto;max-width:100%}
.output_subarea svg{min-width:720px}math{font-size:1.05em}math[display=block]{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:12.5px;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;
vertical-align:top}thead th{background:#f3f3f3}tbody tr:nth-child(even){background:#fafafa}
.jp-OutputArea-output{overflow-x:auto}pre{background:#f6f6f6;padding:.5em;overflow-x:auto;font-size:12px}
code{font-size:.92em}.jp-InputPrompt,.jp-OutputPrompt{display:none}
.anchor-link{visibility:hidden;text-decoration:none;margin-left:.25em;color:#888}
h1:hover>.anchor-link,h2:hover>.anchor-link,h3:hover>.anchor-link{visibility:visible}
@media (prefers-color-scheme: dark){body{background:#121212;color:#ddd}thead th{background:#222}
tbody tr:nth-child(even){background:#1a1a1a}th,td{border-color:#444}pre{background:#1e1e1e}
img,svg{background:#fff}a{color:#8ab4f8}}
@page{size:A4 landscape;margin:10mm}
@media print{body{max-width:none;margin:0;font-size:10pt}table{font-size:7.5pt;width:100%;table-layout:auto}
th,td{padding:1px 3px;word-break:normal;overflow-wrap:normal;hyphens:none}thead{display:table-header-group}
tr{break-inside:avoid}.anchor-link{display:none}pre{white-space:pre-wrap}img,svg{page-break-inside:avoid;break-inside:avoid}
.text_cell,h1,h2,h3{break-after:avoid;page-break-after:avoid}
.output_subarea{overflow:visible}.output_subarea svg{min-width:0}ol.atlas-notes{break-before:avoid;page-break-before:avoid}
.atlas-nav{display:none}a[href$=".html"]::after,a[href$=".csv"]::after,a[href$=".json"]::after{content:" (" attr(href) ")"}}
@media (max-width:600px){body{margin:.5em auto;padding:0 .6em;font-size:14px}h1{font-size:1.5em}}
table.atlas-key{font-size:13px;max-width:100%}table.atlas-key td:first-child{overflow-wrap:break-word}
table.atlas-key td:nth-child(4),table.atlas-key td:nth-child(5){white-space:nowrap}
table.atlas-key td:first-child{font-weight:600}.atlas-print-only{display:none}p.atlas-nochart{color:#555;font-style:italic}
@media (max-width:600px){table.atlas-key{font-size:12px}table.atlas-key td,table.atlas-key th{padding:2px 3px}}
@media (min-width:900px){table.atlas-table{font-size:11.5px}table.atlas-table td,table.atlas-table th{overflow-wrap:anywhere;
padding:2px 4px}}
@media print{table.atlas-key{break-inside:avoid;page-break-inside:avoid;width:auto;font-size:9pt}
.atlas-scroll{overflow:visible}table.atlas-table{font-size:6.5pt}table.atlas-table td,table.atlas-table th{overflow-wrap:anywhere}
svg{max-height:180mm}details.atlas-params{display:none}.atlas-print-only{display:block;font-size:8pt}}"""




class _DropPlaceholderWarning(logging.Filter):
    """nbconvert warns about images without alt text before :func:`_with_alt_text` adds it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Alternative text is missing")


def page_document(title: str, body: str, *, style: str = PAGE_CSS, head_extra: str = "") -> str:
    """One HTML page of a report site: the shared head (charset, viewport, ``title``, already escaped, and
    ``style``) around ``body``."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">{VIEWPORT}'
            f"<title>{title}</title><style>{style}</style>{head_extra}</head>\n<body>\n{body}\n</body></html>\n")


def render_html(executed_notebook: Path, out_html: Path, *, with_code: bool, nav: str = "",
                title: str | None = None) -> Path:
    """Render an executed notebook to ``out_html`` (atomically); ``with_code=False`` shows outputs
    only. Parameter cells never show their source: it is the run's plumbing, not its content.
    ``nav``: the report's links (:func:`site_nav`); ``title``: the page title (default: the
    notebook's name)."""
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    executed_notebook, out_html = Path(executed_notebook), Path(out_html)
    if not executed_notebook.exists():
        raise FileNotFoundError(f"executed notebook {executed_notebook.name} not found; run the pipeline "
                                "(`atlas report`) or papermill first")
    nb = nbformat.read(executed_notebook, as_version=4)
    if not with_code:
        _strip_stderr(nb)
    elif dropped := _drop_library_warnings(nb):
        log.info("%s: %d library warning line(s) left to the run's log", out_html.name, dropped)
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = HIDDEN_INPUT_TAGS
    # progress bars arrive as one stream output per redraw ("\r..." frames); join consecutive
    # streams and keep what a terminal would show, not every frame
    c.CoalesceStreamsPreprocessor.enabled = True
    exporter = HTMLExporter(config=c, template_name="basic")  # the body only: no remote scripts, no 270 KB of CSS
    exporter.exclude_input = not with_code
    exporter.exclude_input_prompt = not with_code
    exporter.exclude_output_prompt = not with_code
    quiet = _DropPlaceholderWarning()
    exporter.log.addFilter(quiet)
    try:
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": executed_notebook.stem}})
    finally:
        exporter.log.removeFilter(quiet)
    body, missing = _with_alt_text(body, _alt_texts(nb))
    if missing:
        log.warning("%s: %d image(s) without alt text (figures not made by atlas_lib.report.charts)", out_html.name, missing)
    body, n_math = math_to_mathml(body)
    if n_math:
        log.info("%s: %d formula(s) rendered as MathML", out_html.name, n_math)
    # wide tables scroll in their own box; the key table is narrow enough for a phone and stays in the page
    body = re.sub(r'(<table\b(?![^>]*atlas-key).*?</table>)', r'<div class="atlas-scroll">\1</div>', body, flags=re.S)
    body, counts = scrub_text(body, _executed_from(nb))
    if counts["paths"] or counts["secrets"]:
        log.info("scrubbed %s: %d absolute path(s) made relative, %d secret value(s) redacted",
                 out_html.name, counts["paths"], counts["secrets"])
    else:
        log.info("scrubbed %s: no absolute paths or secret values found", out_html.name)
    title = html.escape(title or executed_notebook.stem.replace("_", " "))
    atomic_write_text(out_html, page_document(title, f"{nav}\n{body}", head_extra=PRINT_SCRIPT))
    umask = os.umask(0)
    os.umask(umask)
    out_html.chmod(0o666 & ~umask)  # a report is for sharing: not the temp file's private 0600
    return out_html
