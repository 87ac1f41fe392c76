"""The per-problem page (``reports/<profile>/problems.html``): every held-out test problem with its
question, reference answer and each model's greedy completion, marked right or wrong, filterable to
"A right, B wrong" for any two rows. Self-contained (inline style and script, nothing remote)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from atlas_lib.core import config, rundir
from atlas_lib.core.paths import runs_root
from atlas_lib.evaluation.baselines import baseline_dir
from atlas_lib.report.collect import Collected
from atlas_lib.report.html import scrub_text
from atlas_lib.report.table import BASE_LABELS


def _records(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in rundir.read_jsonl(path) if "id" in r}


def completions(params: config.Params, col: Collected) -> tuple[list[tuple[str, str]], dict[str, dict]]:
    """``([(row key, label)], {row key: {problem id: record}})`` for every row that has test records."""
    base = baseline_dir(params)
    rows: list[tuple[str, str]] = []
    recs: dict[str, dict] = {}
    for key, label in BASE_LABELS.items():
        recs[key] = _records(base / f"{key}.records.jsonl")
        rows.append((key, label))
    for key, info in col.runs.items():  # the directories collect() already resolved
        d = runs_root() / info.rel
        if info.spec is not None and info.spec.own_student:
            recs[f"{key}_pre"] = _records(d / "eval" / "initial_full.records.jsonl")
            rows.append((f"{key}_pre", f"{info.name} (untrained student)"))
        recs[key] = _records(d / "eval" / "final_full.records.jsonl")
        rows.append((key, info.label))
    rows = [(k, label) for k, label in rows if recs.get(k)]
    return rows, {k: recs[k] for k, _ in rows}


_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;max-width:1400px}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}td.ok{background:#e8f6e8}td.bad{background:#fbe9e9}
pre{white-space:pre-wrap;margin:0;font:12px/1.3 ui-monospace,monospace}.q{max-width:22em}
@media (prefers-color-scheme: dark){body{background:#111;color:#ddd}th{background:#222}
td{border-color:#444}td.ok{background:#15301a}td.bad{background:#3a1717}}"""
_SCRIPT = """function f(){const a=document.getElementById('a').value,b=document.getElementById('b').value,
m=document.getElementById('m').value;let n=0;for(const r of document.querySelectorAll('tbody tr')){
const x=r.getAttribute('data-c-'+a),y=r.getAttribute('data-c-'+b);let s=true;if(m==='ab')s=x==='1'&&y==='0';
else if(m==='ba')s=x==='0'&&y==='1';r.style.display=s?'':'none';if(s)n++;}
document.getElementById('n').textContent=n+' problems shown';}"""


def render(params: config.Params, col: Collected, path: Path) -> Path | None:
    """Write the page (None when no row has test records yet)."""
    rows, recs = completions(params, col)
    if not rows:
        return None
    data = {r["id"]: r for r in rundir.read_jsonl(runs_root() / params.name / "data" / "eval.jsonl")}
    ids = list(next(iter(recs.values())))
    options = "".join(f'<option value="{i}">{html.escape(label)}</option>' for i, (_, label) in enumerate(rows))
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in rows)
    body = []
    for pid in ids:
        flags = " ".join(f'data-c-{i}="{int(bool(recs[k].get(pid, {}).get("correct")))}"' for i, (k, _) in enumerate(rows))
        q = data.get(pid, {}).get("question", "")
        ref = data.get(pid, {}).get("answer", next((recs[k][pid].get("reference") for k, _ in rows
                                                     if pid in recs[k]), ""))
        cells = []
        for k, _ in rows:
            r = recs[k].get(pid)
            if r is None:
                cells.append("<td>—</td>")
                continue
            mark = "✓" if r.get("correct") else "✗"
            cells.append(f'<td class="{"ok" if r.get("correct") else "bad"}">{mark} <pre>'
                         f"{html.escape(str(r.get('completion', '')))}</pre></td>")
        body.append(f'<tr {flags}><td>{html.escape(pid)}</td><td class="q">{html.escape(q)}</td>'
                    f"<td>{html.escape(str(ref))}</td>{''.join(cells)}</tr>")
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(params.name)}: per-problem completions</title><style>{_STYLE}</style></head><body>
<h1>Per-problem completions ({html.escape(params.name)}, test split, n = {len(ids)})</h1>
<p>Greedy completions on the held-out test problems, graded by the kit's one grader (✓ right, ✗ wrong).
Show problems where <select id="a" onchange="f()">{options}</select>
<select id="m" onchange="f()"><option value="ab">is right and</option><option value="ba">is wrong and</option>
<option value="all">(all problems) vs</option></select> <select id="b" onchange="f()">{options}</select>
<span id="n"></span>.</p>
<table><thead><tr><th>id</th><th>question</th><th>reference</th>{head}</tr></thead><tbody>
{"".join(body)}</tbody></table><script>{_SCRIPT}
document.getElementById('b').selectedIndex=Math.min(2,document.getElementById('b').options.length-1);
document.getElementById('a').selectedIndex=Math.min(3,document.getElementById('a').options.length-1);
document.getElementById('m').value='all';f();</script>
<script type="application/json" id="rows">{html.escape(json.dumps([k for k, _ in rows]))}</script>
</body></html>"""
    text, _ = scrub_text(page)
    rundir.atomic_write_text(path, text)
    return path
