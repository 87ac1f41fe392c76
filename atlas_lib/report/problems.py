"""The per-problem page (``reports/<profile>/problems.html``): every held-out test problem with its
question, reference answer and each model's greedy completion, marked right or wrong, filterable to
"A right, B wrong" for any two rows, and -- for rows scored by a same-tokenizer teacher -- each
completion's tokens shaded by their reverse KL to the teacher (the quantity GKD minimises), so a
reader sees where the student leaves the teacher before and after training. Self-contained (inline
style and script, nothing remote); the shading is built in the browser from a compact list of
token lengths and KL levels, so the page stays small."""

from __future__ import annotations

import html
import json
from pathlib import Path

from atlas_lib.core import config
from atlas_lib.core.files import atomic_write_text, read_jsonl
from atlas_lib.core.paths import runs_root
from atlas_lib.evaluation.baselines import baseline_dir
from atlas_lib.report.collect import Collected
from atlas_lib.report.html import VIEWPORT, scrub_text
from atlas_lib.report.table import BASE_LABELS, results_table


def _records(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(path) if "id" in r}


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


# Print: every model column, narrowed to fit A4 landscape (fixed layout shares the width; long words wrap)
_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:1em auto;max-width:1400px;padding:0 .5em}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:4px 6px;
vertical-align:top}th{background:#f3f3f3;position:sticky;top:0}td.ok{background:#e8f6e8}td.bad{background:#fbe9e9}
pre{white-space:pre-wrap;margin:0;font:12px/1.3 ui-monospace,monospace;min-width:12em}.q{max-width:22em}
select{max-width:100%}nav{margin:.3em 0 1em}
pre span{border-radius:2px}.legend span{padding:0 .4em;font:12px ui-monospace,monospace}
@media (prefers-color-scheme: dark){body{background:#111;color:#ddd}th{background:#222}
td{border-color:#444}td.ok{background:#15301a}td.bad{background:#3a1717}a{color:#8ab4f8}}
@page{size:A4 landscape;margin:8mm}
@media print{th{position:static}tr{break-inside:avoid}body{max-width:none;margin:0;font-size:8pt}.scroll{overflow:visible}
table{table-layout:fixed;width:100%}td,th{padding:1px 2px;overflow-wrap:anywhere}pre{min-width:0;font-size:6.5pt}
.q{max-width:none}nav,select,input,.legend{display:none}}"""
# Shading: KL levels 0..9 (nats per token, upper edges below); level 9 is everything above 4 nats
KL_EDGES = (0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 3.0, 4.0)
_SCRIPT = """function f(){const a=document.getElementById('a').value,b=document.getElementById('b').value,
m=document.getElementById('m').value;let n=0;document.getElementById('bb').textContent=
m==='ab'?'is wrong':m==='ba'?'is right':'(either)';for(const r of document.querySelectorAll('tbody tr')){
const x=r.getAttribute('data-c-'+a),y=r.getAttribute('data-c-'+b);let s=true;if(m==='ab')s=x==='1'&&y==='0';
else if(m==='ba')s=x==='0'&&y==='1';r.style.display=s?'':'none';if(s)n++;}
document.getElementById('n').textContent=n+' problems shown';return n;}
function shade(on){const K=JSON.parse(document.getElementById('kl').textContent);
for(const p of document.querySelectorAll('pre[data-k]')){const t=p.getAttribute('data-t');
if(!on){p.textContent=t;continue;}const lv=K[p.getAttribute('data-k')];let i=0;p.textContent='';
for(const [len,q] of lv){const s=document.createElement('span');s.textContent=t.slice(i,i+len);i+=len;
s.style.background='rgba(220,50,30,'+(q/10).toFixed(1)+')';s.title='reverse KL level '+q;p.appendChild(s);}
if(i<t.length)p.appendChild(document.createTextNode(t.slice(i)));}}"""


def kl_level(kl: float) -> int:
    """0..9: which of :data:`KL_EDGES` a token's reverse KL is under (9: above the last)."""
    return next((i for i, edge in enumerate(KL_EDGES) if kl < edge), len(KL_EDGES))


def token_levels(record: dict) -> list[list[int]] | None:
    """``[[characters, level], ...]`` of a record's completion tokens (None: no per-token KL)."""
    tokens = record.get("token_kl")
    if not tokens or "".join(p for p, _ in tokens) != record.get("completion"):
        return None
    return [[len(p), kl_level(float(k))] for p, k in tokens]


def _default_pair(rows: list[tuple[str, str]], col: Collected) -> tuple[int, int]:
    """The filter the page opens on: the first trained row right where its untrained student is wrong."""
    keys = [k for k, _ in rows]
    for k, info in col.runs.items():
        pre = f"{k}_pre" if info.spec is not None and info.spec.own_student else "student"
        if k in keys and pre in keys:
            return keys.index(k), keys.index(pre)
    return (min(1, len(keys) - 1), 0)


def render(params: config.Params, col: Collected, path: Path, nav: str = "", table=None) -> Path | None:
    """Write the page (None when no row has test records yet). ``nav``: the report's links (html.site_nav);
    ``table``: the results table when the caller has it (its row names label the columns)."""
    rows, recs = completions(params, col)
    if not rows:
        return None
    table = results_table(col) if table is None else table  # the rows carry the index page's names
    # a method trained at several seeds: its own run is the first seed's (the table's row under its key is the mean)
    names = {k: f"{k}-seed{col.seeds[k][0][0]}" if k in col.seeds else k for k, _ in rows}
    rows = [(k, table.loc[names[k], "Model / Method"] if names[k] in table.index else label) for k, label in rows]
    data = {r["id"]: r for r in read_jsonl(runs_root() / params.name / "data" / "eval.jsonl")}
    ids = list(next(iter(recs.values())))
    options = "".join(f'<option value="{i}">{html.escape(label)}</option>' for i, (_, label) in enumerate(rows))
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in rows)
    body, levels = [], {}
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
            text = str(r.get("completion", ""))
            attrs = ""
            if (lv := token_levels(r)) is not None:
                key = str(len(levels))
                levels[key] = lv
                attrs = f' data-k="{key}" data-t="{html.escape(text, quote=True)}"'
            cells.append(f'<td class="{"ok" if r.get("correct") else "bad"}">{mark} <pre{attrs}>'
                         f"{html.escape(text)}</pre></td>")
        body.append(f'<tr {flags}><td>{html.escape(pid)}</td><td class="q">{html.escape(q)}</td>'
                    f"<td>{html.escape(str(ref))}</td>{''.join(cells)}</tr>")
    a, b = _default_pair(rows, col)
    shading = ""
    if levels:
        legend = "".join(f'<span style="background:rgba(220,50,30,{q / 10:.1f})">&lt;{e:g}</span>'
                         for q, e in enumerate(KL_EDGES)) + '<span style="background:rgba(220,50,30,.9)">more</span>'
        shading = (f'<p><label><input type="checkbox" id="sh" onchange="shade(this.checked)"> Shade each token by the '
                   f"student's reverse KL to the teacher at that token (nats; the quantity GKD minimises), for the rows "
                   f'scored by a same-tokenizer teacher</label> <span class="legend">{legend}</span></p>')
    kl_json = json.dumps(levels, separators=(",", ":")).replace("</", "<\\/")
    rows_json = json.dumps([k for k, _ in rows]).replace("</", "<\\/")
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">{VIEWPORT}
<title>{html.escape(params.name)}: per-problem completions</title><style>{_STYLE}</style></head><body>
{nav}<h1>Per-problem completions ({html.escape(params.name)}, test split, n = {len(ids)})</h1>
<p>Greedy completions on the held-out test problems, graded by the kit's one grader (✓ right, ✗ wrong).
Show problems where <select id="a" onchange="f()">{options}</select>
<select id="m" onchange="f()"><option value="ab">is right and</option><option value="ba">is wrong and</option>
<option value="all">(either) and</option></select> <select id="b" onchange="f()">{options}</select>
<span id="bb">is wrong</span>: <span id="n"></span>.</p>{shading}
<div class="scroll"><table><thead><tr><th>id</th><th>question</th><th>reference</th>{head}</tr></thead><tbody>
{"".join(body)}</tbody></table></div><script>{_SCRIPT}
document.getElementById('a').selectedIndex={a};document.getElementById('b').selectedIndex={b};
document.getElementById('m').value='ab';if(!f()){{document.getElementById('m').value='all';f();}}</script>
<script type="application/json" id="kl">{kl_json}</script>
<script type="application/json" id="rows">{rows_json}</script>
</body></html>"""
    text, _ = scrub_text(page)
    atomic_write_text(path, text)
    return path
