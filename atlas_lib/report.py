"""Notebook 05's data layer: read every run directory of a profile, build the comparison table,
the findings paragraph and the provenance block, and render executed notebooks to HTML.

Every piece may be missing (a stage not run, an interrupted or failed run, an older summary
schema). Missing values stay NaN in the numeric table and read "missing" / "not run" in the
formatted one, with the reason in the row's note: a missing number is never shown as zero.
Charts live in :mod:`atlas_lib.charts` and are re-exported here, so notebooks import one module.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from atlas_lib import config, rundir, stats
from atlas_lib.charts import (
    accuracy_chart,
    data_charts,
    divergence_chart,
    loss_chart,
    reward_chart,
    stage_figure,
    tokens_chart,
)
from atlas_lib.paths import runs_root
from atlas_lib.report_html import render_html, scrub_text

log = logging.getLogger(__name__)
__all__ = ["Collected", "RunInfo", "collect", "load_run", "results_table", "styled_table", "findings", "provenance",
           "stage_view", "render_html", "scrub_text", "baseline_frame", "examples_frame", "accuracy_chart",
           "data_charts", "divergence_chart", "loss_chart", "reward_chart", "tokens_chart", "stage_figure"]
NAN = float("nan")
SAME_TOK_DIV = "reverse KL to the teacher (same tokenizer)"
CROSS_DIV = "aligned span divergence (cross-tokenizer)"
ALIGNED_COL = "Aligned divergence (cross-tokenizer)"
TRAINING_COLS = ("Device hours", "Training seconds", "Device hours to peak", "Steps", "Peak RSS GB",
                 "Diff vs student", "Diff CI low", "Diff CI high", "p (McNemar)")
TRAINED = ("gkd", "grpo", "cross_tokenizer")
LABELS = {"student": "Student (pre-distillation)", "teacher": "Teacher", "gkd": "GKD distilled student",
          "grpo": "GRPO / RLVR baseline", "cross_pre": "Cross-tokenizer student (pre)",
          "cross_post": "Cross-tokenizer student (post)"}
NOTEBOOK = {"gkd": "02_gkd", "grpo": "03_grpo", "cross_tokenizer": "04_cross_tokenizer"}


@dataclass
class RunInfo:
    """One training run directory as found on disk."""

    key: str  # gkd, grpo, cross_tokenizer or sweep-<name>
    rel: str  # the directory relative to the runs root (for messages; never absolute)
    status: str  # complete, failed, incomplete, unreadable or not run
    summary: dict = field(default_factory=dict)
    train: pd.DataFrame = field(default_factory=pd.DataFrame)
    evals: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)


@dataclass
class Collected:
    """Everything notebook 05 shows, read once."""

    profile: str
    manifest: dict | None
    baseline: dict | None
    runs: dict[str, RunInfo]  # gkd, sweep-<name>..., grpo, cross_tokenizer (in table order)
    notes: list[str] = field(default_factory=list)
    # Per table row, {problem id: correct} on the test split (the paired comparisons' input)
    correct: dict[str, dict] = field(default_factory=dict)


def _read_json(path: Path, notes: list[str], what: str) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        notes.append(f"{what}: unreadable ({type(e).__name__}); treated as missing")
        return None


def _numberish(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
        isinstance(v, str) and v.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"))


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame sorted by step. JSON holds NaN/inf as strings (rundir._clean): they become
    NaN here (an inf loss is a failed step, not a point to plot)."""
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rundir.dedupe_steps(rows)).drop(columns=["kind"], errors="ignore")
    for c in df.columns:
        if df[c].dtype == object and df[c].dropna().map(_numberish).all():
            df[c] = pd.to_numeric(df[c], errors="coerce")
    df = df.replace([math.inf, -math.inf], NAN)
    return df.sort_values("step").reset_index(drop=True) if "step" in df else df


def load_run(path: Path, key: str) -> RunInfo:
    rel = rundir_rel(path)
    notes: list[str] = []
    summary = _read_json(path / "summary.json", notes, f"{rel}/summary.json")
    rows = rundir.read_jsonl(path / "metrics.jsonl")
    info = RunInfo(key, rel, "not run", summary or {}, _frame([r for r in rows if r.get("kind") == "train"]),
                   _frame([r for r in rows if r.get("kind") == "eval"]), notes)
    if summary is not None:
        info.status = summary.get("status") or "complete"
        if "status" not in summary:
            notes.append("summary.json has no status field (older schema); read as complete")
        if info.status == "failed":
            notes.append(f"run failed: {summary.get('error', 'no error recorded')}")
    elif notes:
        info.status = "unreadable"
    elif rows:
        info.status = "incomplete"
        notes.append("no summary.json (interrupted or still running); values from the last eval point")
    else:
        notes.append(f"not run: no {rel}/summary.json or metrics.jsonl (run notebook {NOTEBOOK.get(key, '02_gkd')})")
    return info


def rundir_rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(runs_root().resolve()))
    except ValueError:
        return Path(path).name


def collect(params: config.Params) -> Collected:
    """Read manifest, baselines and every stage's run directory of ``params``' profile."""
    profile = runs_root() / params.name
    notes: list[str] = []
    manifest = _read_json(profile / "data" / "manifest.json", notes, "data/manifest.json")
    if manifest is None:
        notes.append("data/manifest.json not found: notebook 01 (data) was not run for this profile")
    baseline = _read_json(profile / "baseline" / "summary.json", notes, "baseline/summary.json")
    if baseline is None:
        notes.append("baseline/summary.json not found: the pre-distillation student and teacher were not "
                     "evaluated (notebook 01)")
    dirs = {"gkd": rundir.stage_dir(params, "gkd")}
    for name, variant in config.sweep_variants(params):
        dirs[f"sweep-{name}"] = rundir.stage_dir(variant, "gkd")
    for stage in ("grpo", "cross_tokenizer"):
        dirs[stage] = rundir.stage_dir(params, stage)
    runs = {key: load_run(d, key) for key, d in dirs.items()}
    known = {Path(r.rel).name for r in runs.values()}
    for d in sorted(profile.glob("sweep-*")):
        if d.name not in known:
            notes.append(f"{d.name}/ exists but is not a sweep of this params file; not shown")
    for info in runs.values():
        notes += [f"{info.key}: {n}" for n in info.notes]
    correct = {"student": _correct(profile / "baseline" / "student.records.jsonl"),
               "teacher": _correct(profile / "baseline" / "teacher.records.jsonl")}
    for key, run_dir in dirs.items():
        if key == "cross_tokenizer":
            correct["cross_pre"] = _correct(run_dir / "eval" / "initial_full.records.jsonl")
            correct["cross_post"] = _correct(run_dir / "eval" / "final_full.records.jsonl")
        else:
            correct[key] = _correct(run_dir / "eval" / "final_full.records.jsonl")
    return Collected(params.name, manifest, baseline, runs, notes, {k: v for k, v in correct.items() if v})


def _correct(path: Path) -> dict:
    """{problem id: correct} of an evaluation's records (empty when absent)."""
    return {r["id"]: bool(r["correct"]) for r in rundir.read_jsonl(path) if "id" in r and "correct" in r}


def paired_vs(col: Collected, key: str, base: str = "student") -> stats.Paired | None:
    """Row ``key`` against row ``base`` on the test problems both were evaluated on."""
    a, b = col.correct.get(key), col.correct.get(base)
    if not a or not b or not set(a) & set(b):
        return None
    return stats.paired(a, b)


# -- the table ------------------------------------------------------------------------------------
def _num(value) -> float:
    if isinstance(value, bool) or value is None:
        return NAN
    try:
        x = float(value)
    except (TypeError, ValueError):
        return NAN
    return x if math.isfinite(x) else NAN


def _short(model: str | None) -> str:
    return Path(str(model)).name if model else ""


def _row(label: str, status: str, m: dict | None, *, cross: bool = False, training: dict | None = None,
         divergence: str = SAME_TOK_DIV, notes: list[str] | None = None) -> dict:
    m, t, notes = m or {}, training or {}, list(notes or [])
    row = {"Model / Method": label, "Status": status, "Accuracy": _num(m.get("accuracy")),
           "CI low": _num(m.get("ci_low")), "CI high": _num(m.get("ci_high")), "n": _num(m.get("n")),
           "Avg Generated Tokens": _num(m.get("avg_generated_tokens")),
           "Truncation": _num(m.get("truncation_rate")),
           "Mean Reverse KL": NAN if cross else _num(m.get("mean_reverse_kl")),
           ALIGNED_COL: _num(m.get("aligned_divergence")) if cross else NAN,
           "Device hours": _num(t.get("device_hours")), "Device kind": t.get("device_kind"),
           "Training seconds": _num(t.get("duration_seconds")),
           "Device hours to peak": _num(t.get("device_hours_to_peak")),
           "Peak accuracy": _num(t.get("peak_accuracy")), "Peak step": _num(t.get("peak_step")),
           "Steps": _num(t.get("global_step")),
           "Peak RSS GB": _num(t.get("peak_rss_gb")), "Divergence kind": divergence}
    if m and status != "not run":
        for col, key in (("Accuracy", "accuracy"), ("Avg Generated Tokens", "avg_generated_tokens"),
                         ("Mean Reverse KL" if not cross else ALIGNED_COL,
                          "aligned_divergence" if cross else "mean_reverse_kl")):
            if math.isnan(row[col]):
                why = m.get("kl_note") if key == "mean_reverse_kl" and m.get("kl_note") else (
                    "not recorded" if key in m else "key absent (older schema?)")
                notes.append(f"{key}: {why}")
    if training is not None and math.isnan(row["Device hours"]):
        secs, devs = row["Training seconds"], _num(t.get("devices"))
        if not math.isnan(secs):
            row["Device hours"] = secs * (1 if math.isnan(devs) else devs) / 3600.0
            notes.append("device hours derived from duration_seconds")
        else:
            notes.append("no training time recorded (older schema?)")
    row["Note"] = "; ".join(notes)
    return row


def _run_rows(key: str, info: RunInfo) -> dict[str, dict]:
    s, label = info.summary, LABELS.get(key) or f"GKD sweep: {key.removeprefix('sweep-')}"
    first = info.evals.iloc[0].to_dict() if len(info.evals) else {}
    last = info.evals.iloc[-1].to_dict() if len(info.evals) else {}
    final = s.get("distilled") or last
    training = s.get("training")
    if training is None and len(info.evals):  # interrupted / older run: rebuild what the points show
        training = {"device_hours": last.get("device_hours"), "duration_seconds": last.get("seconds"),
                    "device_kind": last.get("device_kind"), "global_step": last.get("step")}
    notes = list(info.notes)
    status = info.status
    if s.get("did_not_train"):
        status = f"did not train: {s['did_not_train']}"
    elif s.get("flags"):
        status = f"{info.status}; " + "; ".join(s["flags"])
    if info.summary and not s.get("distilled") and last:
        notes.append("summary has no 'distilled' block; values from the last eval point")
    if key != "cross_tokenizer":
        return {key: _row(label, status, final, training=training, notes=notes,
                          divergence=s.get("divergence_label", SAME_TOK_DIV))}
    student = _short(s.get("student_model") or (s.get("config") or {}).get("cross_tokenizer", {}).get("student"))
    suffix = f": {student}" if student else ""
    div = s.get("divergence_label", CROSS_DIV)
    pre_notes = notes + ([] if s.get("initial") or not first else ["values from the first eval point"])
    return {"cross_pre": _row(LABELS["cross_pre"] + suffix, info.status, s.get("initial") or first, cross=True,
                              divergence=div, notes=pre_notes),
            "cross_post": _row(LABELS["cross_post"] + suffix, status, final, cross=True, training=training,
                               divergence=div, notes=notes)}


def results_table(collected: Collected) -> pd.DataFrame:
    """The comparison table, numeric (NaN = missing), indexed by row key."""
    b = collected.baseline or {}
    fallback = next((r.summary for r in collected.runs.values() if r.summary.get("baseline")), {})
    rows: dict[str, dict] = {}
    for role, key in (("student", "baseline"), ("teacher", "teacher")):
        m, notes = b.get(role), []
        if m is None and fallback.get(key):
            m, notes = fallback[key], ["baseline/summary.json missing; copied from a training summary"]
        elif m is None:
            notes = ["not run: no baseline/summary.json (run notebook 01)"]
        model = _short((b.get("models") or {}).get(role))
        label = LABELS[role] + (f": {model}" if model else "")
        div = "teacher vs itself (0 by definition)" if role == "teacher" else SAME_TOK_DIV
        rows[role] = _row(label, "complete" if m else "not run", m, divergence=div, notes=notes)
    for key, info in collected.runs.items():
        rows.update(_run_rows(key, info))
    for key, row in rows.items():  # each trained row against its own untrained student, paired by problem
        pr = paired_vs(collected, key, "cross_pre" if key == "cross_post" else "student") \
            if key not in ("student", "teacher", "cross_pre") else None
        row.update({"Diff vs student": pr.diff if pr else NAN, "Diff CI low": pr.ci_low if pr else NAN,
                    "Diff CI high": pr.ci_high if pr else NAN, "p (McNemar)": pr.p_value if pr else NAN})
    return pd.DataFrame.from_dict(rows, orient="index")


def _applies(key: str, col: str) -> bool:
    if col in TRAINING_COLS:
        return key not in ("student", "teacher", "cross_pre")
    if col == "Mean Reverse KL":
        return not key.startswith("cross")
    if col == ALIGNED_COL:
        return key.startswith("cross")
    return True


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def styled_table(table: pd.DataFrame | Collected) -> pd.DataFrame:
    """The table as display strings: percentages, 3 decimals, units; 'missing' / 'not run' / '—'."""
    df = results_table(table) if isinstance(table, Collected) else table
    out = []
    for key, r in df.iterrows():
        def cell(col, fmt, r=r, key=key):
            if not _applies(key, col):
                return "—"
            if r["Status"] == "not run":
                return "not run"
            return "missing" if pd.isna(r[col]) else fmt(r[col])
        unit = f" {r['Device kind']}-h" if isinstance(r["Device kind"], str) else " device-h"
        ci = cell("CI low", lambda lo, hi=r["CI high"]: f"[{_pct(lo)}, {_pct(hi)}]")
        diff = cell("Diff vs student", lambda d, r=r: f"{100 * d:+.1f} pts [{100 * r['Diff CI low']:+.1f}, "
                    f"{100 * r['Diff CI high']:+.1f}]")
        hours_to_peak = cell("Device hours to peak", lambda x, u=unit: f"{x:.3g}{u}")
        if hours_to_peak == "missing" and _applies(key, "Device hours to peak") and r["Status"] != "not run" \
                and r.get("Peak step") == 0:
            hours_to_peak = "no improvement"
        out.append({"Model / Method": r["Model / Method"], "Status": r["Status"],
                    "Accuracy": cell("Accuracy", _pct), "95% CI": ci, "n": cell("n", lambda x: f"{x:.0f}"),
                    "Avg Generated Tokens": cell("Avg Generated Tokens", lambda x: f"{x:.1f}"),
                    "Truncation": cell("Truncation", _pct),
                    "Paired diff vs untrained (95% CI)": diff,
                    "p (McNemar)": cell("p (McNemar)", lambda p: f"{p:.3g}"),
                    "Mean Reverse KL": cell("Mean Reverse KL", lambda x: f"{x:.3f}"),
                    ALIGNED_COL: cell(ALIGNED_COL, lambda x: f"{x:.3f}"),
                    "Device time": cell("Device hours", lambda x, u=unit, r=r: f"{x:.3g}{u}" + (
                        f" ({r['Training seconds']:.0f} s)" if not pd.isna(r["Training seconds"]) else "")),
                    "Device hours to peak": hours_to_peak,
                    "Steps": cell("Steps", lambda x: f"{x:.0f}"),
                    "Peak memory": cell("Peak RSS GB", lambda x: f"{x:.1f} GB RSS"),
                    "Divergence kind": r["Divergence kind"],
                    "Note": r["Note"]})
    return pd.DataFrame(out, index=df.index)


def baseline_frame(baselines: dict) -> pd.DataFrame:
    """Notebook 01's rows (student, teacher) from :func:`atlas_lib.stages.evaluate_baselines`' summary."""
    b = Collected("", None, baselines, {})
    return styled_table(results_table(b).loc[["student", "teacher"]]).drop(
        columns=["Device time", "Device hours to peak", "Steps", "Peak memory", ALIGNED_COL,
                 "Paired diff vs untrained (95% CI)", "p (McNemar)"])


def examples_frame(prepared, n: int = 3) -> pd.DataFrame:
    """The first ``n`` held-out problems (question, reference answer, worked solution if any)."""
    return pd.DataFrame([{"id": r["id"], "question": r["question"], "answer": r["answer"],
                          "solution": r.get("solution")} for r in list(prepared.eval)[:n]]).set_index("id")


def stage_view(params: config.Params, stage: str) -> tuple[pd.DataFrame, Figure]:
    """(eval points, figure) of one stage's run, for the end of notebooks 02-04."""
    info = load_run(rundir.stage_dir(params, stage), stage)
    for n in info.notes:
        log.info("%s: %s", stage, n)
    keep = ["step", "seconds", "device_hours", "accuracy", "ci_low", "ci_high", "n", "avg_generated_tokens",
            "truncation_rate", "mean_reverse_kl", "aligned_divergence", "train_loss"]
    points = info.evals[[c for c in keep if c in info.evals]] if len(info.evals) else pd.DataFrame(columns=keep)
    return points, stage_figure(info, keep_open=True)


def findings(collected: Collected) -> str:
    """Markdown paragraph stating what the numbers show (see :mod:`atlas_lib.findings`)."""
    from atlas_lib import findings as f

    return f.findings(collected)


def provenance(collected: Collected, params: config.Params) -> str:
    """Markdown: params, seed, commit, packages, device, date (see :mod:`atlas_lib.findings`)."""
    from atlas_lib import findings as f

    return f.provenance(collected, params)
