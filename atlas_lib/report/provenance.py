"""The report's provenance block: the parameter set, seed, and each stage's commit, device, date
and package versions, from what the runs recorded."""

from __future__ import annotations

import html
from pathlib import Path

import yaml

from atlas_lib.core import config
from atlas_lib.report.collect import Collected
from atlas_lib.report.html import scrub_text


def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("" if c is None else str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _flat(value, prefix: str = "") -> list[str]:
    """'lora.r 16'-style pairs of a section's leaves (lists joined), for the print summary."""
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _flat(v, f"{prefix}{k}.")]
    if isinstance(value, list):
        return [] if not value else [f"{prefix[:-1]} " + (", ".join(map(str, value)) if all(not isinstance(v, (dict, list)) for v in value)
                                     else f"{len(value)} entries")]
    return [] if value is None else [f"{prefix[:-1]} {value}"]


def print_summary(params: dict) -> str:
    """The parameter set as one line per section (HTML, shown only in print: class atlas-print-only), so a
    printed report carries its settings in a few lines instead of pages of YAML."""
    def line(v) -> str:
        if isinstance(v, dict) and v.get("enabled") is False:
            return "disabled"
        return "; ".join(_flat(v)) if isinstance(v, dict) else str(v)

    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(line(v))}</li>" for k, v in params.items()
                    if v not in (None, {}, []))
    return (f'<div class="atlas-print-only"><p><b>Parameter set</b> (summary for print; the full YAML is in the '
            f"report's HTML page)</p><ul>{items}</ul></div>")


def provenance(col: Collected, params: config.Params) -> str:
    """Markdown: the parameter set, seed, and each stage's commit, device, date and package versions."""
    blocks = {"baseline": (col.baseline or {}).get("provenance")}
    blocks.update({k: i.summary.get("provenance") for k, i in col.runs.items()})
    blocks = {k: v for k, v in blocks.items() if isinstance(v, dict)}
    recorded = next((p["params_file"] for p in blocks.values() if p.get("params_file")), None)
    source = Path(params.source_path).name if params.source_path else recorded or "(given in code)"
    parts = [f"**Parameter set** `{params.name}` from `{source}`, hash `{params.params_hash()}`; "
             f"seed {params.run.seed}" + (f"; training seeds {', '.join(map(str, params.run.seeds))}." if params.run.seeds
                                          else ".")]
    if col.manifest:
        counts = col.manifest.get("counts") or {}
        parts.append(f"**Data**: source `{col.manifest.get('source')}`, task `{col.manifest.get('task')}`, seed "
                     f"{col.manifest.get('seed')}, {counts.get('train', '?')} train / {counts.get('eval', '?')} "
                     f"held-out problems; eval.jsonl sha256 `{(col.manifest.get('sha256') or {}).get('eval.jsonl', '?')[:16]}`.")
    if blocks:
        rows = [[k, p.get("date"), (p.get("git_commit") or "unknown")[:12] + (" (dirty)" if p.get("git_dirty") else ""),
                 p.get("device"), p.get("python"), p.get("params_hash")] for k, p in blocks.items()]
        parts.append(_table(["run", "date (UTC)", "git commit", "device", "python", "params hash"], rows))
        pkgs: dict[str, dict[str, list[str]]] = {}
        for k, p in blocks.items():
            for name, ver in (p.get("packages") or {}).items():
                pkgs.setdefault(name, {}).setdefault(str(ver), []).append(k)
        rows = [[n, "; ".join(v if len(vs) == 1 else f"{v} ({', '.join(ks)})" for v, ks in vs.items())]
                for n, vs in sorted(pkgs.items())]
        parts.append(_table(["package", "version"], rows))
    else:
        parts.append("No provenance recorded: no stage has written a summary yet.")
    dump = yaml.safe_dump(params.to_dict(), sort_keys=False, allow_unicode=True)
    # on screen the full YAML (closed; html.PRINT_SCRIPT leaves it closed on paper), in print its summary
    parts.append(f'<details class="atlas-params"><summary>Full parameter set</summary>\n\n```yaml\n{dump}```\n\n</details>')
    parts.append(print_summary(params.to_dict()))
    return scrub_text("\n\n".join(parts))[0]
