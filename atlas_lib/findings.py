"""The report's text: a findings paragraph computed from the table, and the provenance block.

Findings state numbers and what they allow: which method is higher, by how much, at what device
time, and whether the 95% intervals overlap (overlap -> "within noise"). Missing stages are named
as not run. Nothing here adds a judgement the numbers do not carry.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml

from atlas_lib import config
from atlas_lib.report import Collected, RunInfo, results_table
from atlas_lib.report_html import scrub_text


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _acc(r: pd.Series) -> str:
    extra = []
    if _ok(r["CI low"]) and _ok(r["CI high"]):
        extra.append(f"95% CI {_pct(r['CI low'])}–{_pct(r['CI high'])}")
    if _ok(r["n"]):
        extra.append(f"n={r['n']:.0f}")
    return _pct(r["Accuracy"]) + (f" ({', '.join(extra)})" if extra else "")


def overlap(lo_a: float, hi_a: float, lo_b: float, hi_b: float) -> bool:
    """Whether two intervals share a point (unknown bounds count as overlapping: nothing is claimed)."""
    if not all(_ok(x) for x in (lo_a, hi_a, lo_b, hi_b)):
        return True
    return max(lo_a, lo_b) <= min(hi_a, hi_b)


def compare(name_a: str, a: pd.Series, name_b: str, b: pd.Series, what: str) -> str:
    """One sentence: both accuracies, which is higher, and whether their intervals overlap."""
    head = f"{what}: {name_a} {_acc(a)} vs {name_b} {_acc(b)}."
    diff = a["Accuracy"] - b["Accuracy"]
    if diff == 0:
        return head + " The two are equal."
    hi, lo = (name_a, name_b) if diff > 0 else (name_b, name_a)
    gap = f" {hi[0].upper() + hi[1:]} is higher than {lo} by {100 * abs(diff):.1f} percentage points;"
    if overlap(a["CI low"], a["CI high"], b["CI low"], b["CI high"]):
        return head + gap + " the 95% intervals overlap, so the difference is within noise."
    return head + gap + " the 95% intervals do not overlap."


def _unit(r: pd.Series) -> str:
    return f"{r['Device kind']}-hours" if isinstance(r["Device kind"], str) else "device-hours"


def _hours(r: pd.Series) -> str:
    unit = _unit(r)
    steps = f", {r['Steps']:.0f} steps" if _ok(r["Steps"]) else ""
    return f"{r['Device hours']:.3g} {unit}{steps}" if _ok(r["Device hours"]) else "device time not recorded"


def _first_last(info: RunInfo, key: str) -> tuple[float, float] | None:
    """First and last eval point (one subset of problems); the summary's initial/final rows only
    where the run has no eval points (they may be measured on a different number of problems)."""
    s, e = info.summary, info.evals
    if key in e and len(e) and _ok(e[key].iloc[0]) and _ok(e[key].iloc[-1]):
        return float(e[key].iloc[0]), float(e[key].iloc[-1])
    a, b = (s.get("initial") or {}).get(key), (s.get("distilled") or {}).get(key)
    return (float(a), float(b)) if _ok(a) and _ok(b) else None


def _peak(info: RunInfo, name: str, unit: str) -> str | None:
    t, e = info.summary.get("training") or {}, info.evals
    if not _ok(t.get("peak_accuracy")) and "accuracy" in e and e["accuracy"].notna().any():
        best = e.loc[e["accuracy"].idxmax()]
        t = {"peak_accuracy": best["accuracy"], "peak_step": best["step"],
             "device_hours_to_peak": best.get("device_hours")}
    if not _ok(t.get("peak_accuracy")):
        return None
    where = f" at step {t['peak_step']:.0f}" if _ok(t.get("peak_step")) else ""
    cost = f" after {t['device_hours_to_peak']:.3g} {unit}" if _ok(t.get("device_hours_to_peak")) else ""
    k = len(e) if len(e) else "?"
    return f"{name} peaked at {_pct(t['peak_accuracy'])}{where}{cost} (best of {k} eval points on the same subset)"


def _status_line(name: str, info: RunInfo) -> str | None:
    if info.status == "not run":
        return f"{name} was not run."
    if info.status == "failed":
        return f"{name} failed ({info.summary.get('error', 'no error recorded')}); its row shows its last eval point."
    if info.status in ("incomplete", "unreadable"):
        return f"{name} is {info.status} (no usable summary.json); its row shows its last eval point."
    return None


def findings(col: Collected) -> str:
    """A short Markdown paragraph that states what the collected numbers show."""
    t = results_table(col)
    names = {"gkd": "GKD", "grpo": "GRPO", "cross_tokenizer": "Cross-tokenizer distillation"}
    lines = []
    s, te = t.loc["student"], t.loc["teacher"]
    if _ok(s["Accuracy"]) and _ok(te["Accuracy"]):
        lines.append(f"Before training, the student scored {_acc(s)} and the teacher {_acc(te)}.")
    else:
        lines.append("The pre-distillation student and teacher baselines were not run (notebook 01).")
    runs = col.runs
    for key in ("gkd", "grpo", "cross_tokenizer"):
        line = _status_line(names[key], runs[key]) if key in runs else None
        if line:
            lines.append(line)
    g, r = t.loc["gkd"], t.loc["grpo"]
    if _ok(g["Accuracy"]) and _ok(r["Accuracy"]):
        lines.append(compare("GKD", g, "GRPO", r, "Final held-out accuracy"))
        lines.append(f"Training cost: GKD {_hours(g)}; GRPO {_hours(r)}.")
        peaks = [p for p in (_peak(runs["gkd"], "GKD", _unit(g)), _peak(runs["grpo"], "GRPO", _unit(r))) if p]
        if peaks:
            lines.append("; ".join(peaks) + ".")
    elif _ok(g["Accuracy"]) or _ok(r["Accuracy"]):
        lines.append("GKD and GRPO cannot be compared: only one of them has a final accuracy.")
    for key in (k for k in runs if k.startswith("sweep-")):
        v = t.loc[key]
        if _ok(v["Accuracy"]) and _ok(g["Accuracy"]):
            lines.append(compare(f"GKD sweep {key[6:]}", v, "GKD", g, "Sweep"))
        else:
            lines.append(f"GKD sweep {key[6:]}: {runs[key].status}, no final accuracy.")
    if "cross_pre" in t.index and _ok(t.loc["cross_pre", "Accuracy"]) and _ok(t.loc["cross_post", "Accuracy"]):
        lines.append(compare("the trained student", t.loc["cross_post"], "the untrained student",
                             t.loc["cross_pre"], "Cross-tokenizer student accuracy"))
    moves = []
    for key, info in runs.items():
        fl = _first_last(info, "avg_generated_tokens")
        if fl:
            moves.append(f"{names.get(key, 'GKD sweep ' + key[6:])} {fl[0]:.1f} → {fl[1]:.1f}")
    if moves:
        lines.append("Mean generated tokens on the held-out subset (first → last eval point): " + "; ".join(moves) + ".")
    kls = [f"{names.get(k, 'GKD sweep ' + k[6:])} {fl[0]:.3f} → {fl[1]:.3f}" for k, i in runs.items()
           if k != "cross_tokenizer" and (fl := _first_last(i, "mean_reverse_kl"))]
    if kls:
        lines.append("Mean reverse KL to the teacher (nats/token, same tokenizer): " + "; ".join(kls) + ".")
    if "cross_tokenizer" in runs and (fl := _first_last(runs["cross_tokenizer"], "aligned_divergence")):
        lines.append(f"The cross-tokenizer student's aligned span divergence went {fl[0]:.3f} → {fl[1]:.3f} "
                     "(a different quantity from reverse KL; not comparable).")
    ns = {f"{v:.0f}" for v in t["n"] if _ok(v)}
    if len(ns) > 1:
        lines.append(f"Rows are evaluated on different numbers of problems (n = {', '.join(sorted(ns, key=int))}): "
                     "baselines use evaluation.limit, training eval points evaluation.during_training_limit.")
    return " ".join(lines)


def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("" if c is None else str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def provenance(col: Collected, params: config.Params) -> str:
    """Markdown: the parameter set, seed, and each stage's commit, device, date and package versions."""
    blocks = {"baseline": (col.baseline or {}).get("provenance")}
    blocks.update({k: i.summary.get("provenance") for k, i in col.runs.items()})
    blocks = {k: v for k, v in blocks.items() if isinstance(v, dict)}
    recorded = next((p["params_file"] for p in blocks.values() if p.get("params_file")), None)
    source = Path(params.source_path).name if params.source_path else recorded or "(given in code)"
    parts = [f"**Parameter set** `{params.name}` from `{source}`, hash `{params.params_hash()}`; "
             f"seed {params.run.seed}."]
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
    parts.append(f"<details><summary>Full parameter set</summary>\n\n```yaml\n{dump}```\n\n</details>")
    return scrub_text("\n\n".join(parts))[0]
