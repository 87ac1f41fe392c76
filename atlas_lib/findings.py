"""The report's text: a findings paragraph computed from the table, and the provenance block.

Findings lead with the answer: which method changed the student's test accuracy, by how much,
as a paired difference on the same problems (95% paired-bootstrap interval, exact McNemar p), at
what device time; then the compute each method needed to reach the best validation accuracy the
other reached; then what did not train and why. A difference is called one only when its paired
test says so (p < 0.05); otherwise the text says it is not distinguishable at this n and gives the
smallest difference the run could have detected. Nothing here adds a judgement the numbers do not
carry.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml

from atlas_lib import config, stats
from atlas_lib.report import ALIGNED_COL as ALIGNED
from atlas_lib.report import Collected, RunInfo, paired_vs, results_table
from atlas_lib.report_html import scrub_text

ALPHA = 0.05
NAMES = {"gkd": "GKD", "grpo": "GRPO", "cross_tokenizer": "Cross-tokenizer distillation"}


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _name(key: str) -> str:
    return NAMES.get(key) or f"GKD sweep {key.removeprefix('sweep-')}"


def _acc(r: pd.Series) -> str:
    extra = []
    if _ok(r["CI low"]) and _ok(r["CI high"]):
        extra.append(f"95% CI {_pct(r['CI low'])}–{_pct(r['CI high'])}")
    if _ok(r["n"]):
        extra.append(f"n={r['n']:.0f}")
    return _pct(r["Accuracy"]) + (f" ({', '.join(extra)})" if extra else "")


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def paired_text(pr: stats.Paired) -> str:
    """'+4.0 points (paired 95% CI +1.0 to +7.0, exact McNemar p = 0.012, n = 200; 12 vs 4 problems)'."""
    return (f"{100 * pr.diff:+.1f} points (paired 95% CI {100 * pr.ci_low:+.1f} to {100 * pr.ci_high:+.1f}, exact "
            f"McNemar {_p(pr.p_value)}, n = {pr.n}; {_count(pr.a_only, 'problem')} gained, {pr.b_only} lost)")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _unit(r: pd.Series) -> str:
    return f"{r['Device kind']}-hours" if isinstance(r["Device kind"], str) else "device-hours"


def _hours(r: pd.Series) -> str:
    unit = _unit(r)
    steps = f" over {r['Steps']:.0f} steps" if _ok(r["Steps"]) else ""
    return f"{r['Device hours']:.3g} {unit}{steps}" if _ok(r["Device hours"]) else "device time not recorded"


def hours_to_reach(info: RunInfo, target: float) -> float | None:
    """Device hours at the first validation eval point whose accuracy reaches ``target`` (None: never)."""
    e = info.evals
    if not len(e) or "accuracy" not in e or "device_hours" not in e:
        return None
    hit = e[e["accuracy"] >= target - 1e-12]
    return float(hit["device_hours"].iloc[0]) if len(hit) else None


def compute_ratio(runs: dict[str, RunInfo], a: str, b: str, unit: str) -> str | None:
    """The on-policy distillation literature's headline: device hours each method needed to reach
    the best validation accuracy the other reached (or 'not reached')."""
    ia, ib = runs.get(a), runs.get(b)
    if ia is None or ib is None or not len(ia.evals) or not len(ib.evals) or "accuracy" not in ia.evals \
            or "accuracy" not in ib.evals:
        return None
    if ia.summary.get("did_not_train") or ib.summary.get("did_not_train"):
        return None  # a method that did not train has no curve to match
    parts = []
    for x, y, ix, iy in ((a, b, ia, ib), (b, a, ib, ia)):
        best = float(iy.evals["accuracy"].max())
        h = hours_to_reach(ix, best)
        start = float(ix.evals["accuracy"].iloc[0])
        if h is None:
            parts.append(f"{_name(x)} did not reach {_name(y)}'s best {_pct(best)}")
        elif best <= start:
            parts.append(f"{_name(x)} started at or above {_name(y)}'s best {_pct(best)}")
        else:
            parts.append(f"{_name(x)} reached {_name(y)}'s best {_pct(best)} after {h:.3g} {unit}")
    n = ia.evals["n"].iloc[-1] if "n" in ia.evals else None
    where = f" (validation split, n = {n:.0f})" if _ok(n) else " (validation split)"
    return "Compute to match the other method's best validation accuracy" + where + ": " + "; ".join(parts) + "."


def _status_line(name: str, info: RunInfo) -> str | None:
    if info.status == "not run":
        return f"{name} was not run."
    if info.status == "failed":
        return f"{name} failed ({info.summary.get('error', 'no error recorded')}); its row shows its last eval point."
    if info.status in ("incomplete", "unreadable"):
        return f"{name} is {info.status} (no usable summary.json); its row shows its last eval point."
    s = info.summary
    if s.get("did_not_train"):
        return f"{name} did not train: {s['did_not_train']}; its row is the untrained model, not a result."
    if s.get("flags"):
        return f"{name}: " + "; ".join(s["flags"]) + "."
    return None


def _lead(col: Collected, t: pd.DataFrame) -> list[str]:
    """The answer: each trained method against the untrained student, paired on the test problems."""
    out, results = [], []
    for key in ("gkd", "grpo", *[k for k in col.runs if k.startswith("sweep-")]):
        info = col.runs.get(key)
        pr = paired_vs(col, key) if info is not None and info.status == "complete" else None
        if pr is None or info.summary.get("did_not_train"):
            continue
        results.append((key, pr))
    if not results:
        return ["No trained method has a test evaluation paired with the untrained student's yet."]
    sig = [(k, pr) for k, pr in results if pr.p_value < ALPHA and pr.diff > 0]
    worse = [(k, pr) for k, pr in results if pr.p_value < ALPHA and pr.diff < 0]
    lead = max(sig, key=lambda kp: kp[1].diff)[0] if sig else None
    if lead is not None:
        pr = dict(results)[lead]
        out.append(f"**{_name(lead)} improved the student's test accuracy by {paired_text(pr)}**, from "
                   f"{_pct(pr.acc_b)} to {_pct(pr.acc_a)}, at {_hours(t.loc[lead])}.")
    else:
        out.append("**No method changed the student's test accuracy by more than this run can distinguish "
                   "from noise** (paired, exact McNemar p >= 0.05).")
    for k, pr in results:
        if k == lead:
            continue
        verdict = "improved it" if (k, pr) in sig else "lowered it" if (k, pr) in worse else "changed it by"
        out.append(f"{_name(k)} {verdict} {paired_text(pr)} at {_hours(t.loc[k])}.")
    if "gkd" in col.correct and "grpo" in col.correct and all(k in dict(results) for k in ("gkd", "grpo")):
        pr = paired_vs(col, "gkd", "grpo")
        if pr is not None:
            out.append(f"GKD minus GRPO on the same test problems: {paired_text(pr)}.")
    return out


def mde_sentence(col: Collected) -> str | None:
    """The smallest paired difference this run's n can detect (80% power, two-sided 5%)."""
    base = col.correct.get("student")
    if not base:
        return None
    n = len(base)
    discord = [pr.a_only + pr.b_only for k in ("gkd", "grpo") if (pr := paired_vs(col, k)) is not None]
    if discord:
        q = max(discord) / n
        how = f"the discordance observed here ({100 * q:.0f}% of problems)"
    else:
        acc = sum(base.values()) / n
        q = 2 * acc * (1 - acc)
        how = "independent errors at the student's accuracy"
    mde = stats.min_detectable_difference(n, q)
    return (f"Power: with n = {n} test problems and {how}, the smallest paired difference detectable with 80% "
            f"power at 5% is about {100 * mde:.1f} points; smaller true differences would usually read as noise.")


def findings(col: Collected) -> str:
    """A short Markdown paragraph that states what the collected numbers show, answer first."""
    t = results_table(col)
    runs = col.runs
    lines = _lead(col, t)
    g, r = t.loc["gkd"], t.loc["grpo"]
    if "gkd" in runs and "grpo" in runs:
        ratio = compute_ratio(runs, "gkd", "grpo", _unit(g) if _ok(g["Device hours"]) else _unit(r))
        if ratio:
            lines.append(ratio)
    for key in ("gkd", "grpo", "cross_tokenizer", *[k for k in runs if k.startswith("sweep-")]):
        line = _status_line(_name(key), runs[key]) if key in runs else None
        if line:
            lines.append(line)
    s, te = t.loc["student"], t.loc["teacher"]
    if _ok(s["Accuracy"]) and _ok(te["Accuracy"]):
        lines.append(f"Before training, the student scored {_acc(s)} and the teacher {_acc(te)} on the test split.")
    else:
        lines.append("The pre-distillation student and teacher baselines were not run (notebook 01).")
    if "cross_pre" in t.index and (pr := paired_vs(col, "cross_post", "cross_pre")) is not None:
        lines.append(f"Cross-tokenizer distillation changed its student's test accuracy by {paired_text(pr)}.")
    moves = [f"{_name(k)} {s['Avg Generated Tokens']:.1f} → {t.loc[k, 'Avg Generated Tokens']:.1f}"
             for k in runs if k in t.index and _ok(s["Avg Generated Tokens"]) and _ok(t.loc[k, "Avg Generated Tokens"])]
    if moves:
        lines.append("Mean generated tokens on the test split (untrained student → trained): " + "; ".join(moves) + ".")
    kls = [f"{_name(k)} {s['Mean Reverse KL']:.3f} → {t.loc[k, 'Mean Reverse KL']:.3f}"
           for k in runs if k in t.index and k != "cross_tokenizer" and _ok(s["Mean Reverse KL"])
           and _ok(t.loc[k, "Mean Reverse KL"])]
    if kls:
        lines.append("Mean reverse KL to the teacher on the test split (nats/token, same tokenizer): "
                     + "; ".join(kls) + ".")
    if "cross_pre" in t.index and _ok(t.loc["cross_pre", ALIGNED]) and _ok(t.loc["cross_post", ALIGNED]):
        lines.append(f"The cross-tokenizer student's aligned span divergence went {t.loc['cross_pre', ALIGNED]:.3f} → "
                     f"{t.loc['cross_post', ALIGNED]:.3f} (a different quantity from reverse KL; not comparable).")
    if (m := mde_sentence(col)) is not None:
        lines.append(m)
    lines.append("Table rows are the test split; training curves are the validation split (where the peak is "
                 "chosen), and end at the trained model's test point.")
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
