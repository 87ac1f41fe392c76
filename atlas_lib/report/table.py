"""The comparison table (numeric, then formatted) and notebook 01's small frames.

Rows: the untrained student, the teacher, the prompt controls (:mod:`~atlas_lib.report.controls`), then
each enabled method in registry order (a method that trains its own student gets that student's untrained row first; GKD sweeps follow GKD).
Missing values stay NaN in the numeric table and read "missing" / "not run" in the formatted one,
with the reason in the row's note: a missing number is never shown as zero.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from atlas_lib.core import registry
from atlas_lib.core.sections import LORA_DEFAULTS
from atlas_lib.evaluation import logratio, stats
from atlas_lib.report import controls
from atlas_lib.report.collect import (
    Collected,
    RunInfo,
    further_seed,
    hacking_flag,
    own_student_page,
    paired_vs,
    primary_tests,
    seed_correct,
    untrained_row,
)

NAN = float("nan")
SAME_TOK_DIV = registry.SAME_TOKENIZER_KL
ALIGNED_COL = "Aligned divergence (cross-tokenizer)"
# A one-seed row's exact McNemar p; a multi-seed mean row's exact sign test over problems (evaluation.stats)
P_COL = "p (paired test)"
TRAINING_COLS = ("Device hours", "Training seconds", "Training FLOPs", "Evaluation seconds", "Steps", "Peak RSS GB",
                 "Diff vs student", "Diff CI low", "Diff CI high", P_COL, "p (Holm)")
PAIRED_COLS = ("Diff vs student", "Diff CI low", "Diff CI high", P_COL)  # what a prompt control row shows too
BASE_LABELS = {"student": "Student (pre-distillation)", "teacher": "Teacher"}
PLAIN_COL = "Plain-value answers (of credited)"  # the answer-form audit (evaluation.audit)
RESTATE_COL = "Restates the question"
CUT_COL = "Credited answers cut at the budget"  # the audit's cut share (numeric table and findings only)
LOGRATIO_COL = "Log-ratio to teacher (nats/char)"  # every row's, any tokenizer (evaluation.logratio)
LOGRATIO_RULE = "Log-ratio rule"  # evaluation.logratio.VERSION it was scored under (1: stop token left out)
LOGRATIO_NOTE = ("Log-ratio to teacher: log p_student - log p_teacher of one greedy answer per problem, per "
                 "character (not an expectation over answers); each row is scored on its own answers' text, so "
                 "rows compare how far each one's own answers sit from the teacher. A finished answer's stop token "
                 "counts; an answer cut at the token budget has none.")
OLD_LOGRATIO = ("log-ratio scored under the old rule (stop token left out, so a loop cut at the token budget "
                "scored like a finished answer): not comparable with rows scored with the stop token; re-evaluate")
OBJECTIVE_COL = "Own objective (held-out)"  # the distilling method's training loss on the test answers
MEANED = ("Accuracy", "Avg Generated Tokens", "Truncation", "Mean Reverse KL", "Device hours", "Training seconds",
          "Training FLOPs", "Evaluation seconds", "Steps", "Peak RSS GB", ALIGNED_COL,
          LOGRATIO_COL, OBJECTIVE_COL)  # a multi-seed row: the seeds' mean


def _num(value) -> float:
    if isinstance(value, bool) or value is None:
        return NAN
    try:
        x = float(value)
    except (TypeError, ValueError):
        return NAN
    return x if math.isfinite(x) else NAN


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if isinstance(x, (int, float)) and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else NAN


def pct(x: float) -> str:
    # rounded first: the same mean reached by two sums (63.2499.. and 63.2500..) prints one way
    return f"{round(100 * x, 6):.1f}%"


def _short(model: str | None) -> str:
    return Path(str(model)).name if model else ""


def own_model(info, role: str = "student") -> str:
    """The student (or teacher) a method that trains its own student names in its summary, short ("" if none):
    the model its ``<key>_pre`` and trained rows are labelled with."""
    s = info.summary or {}
    return _short(s.get(f"{role}_model") or (s.get("config") or {}).get(info.method or info.key, {}).get(role))


def _row(label: str, status: str, m: dict | None, *, aligned: bool = False, training: dict | None = None,
         divergence: str = SAME_TOK_DIV, notes: list[str] | None = None, kind: str = "baseline") -> dict:
    m, t, notes = m or {}, training or {}, list(notes or [])
    row = {"Model / Method": label, "Status": status, "Row kind": kind, "Aligned": aligned, "Accuracy": _num(m.get("accuracy")),
           "CI low": _num(m.get("ci_low")), "CI high": _num(m.get("ci_high")), "n": _num(m.get("n")),
           "Avg Generated Tokens": _num(m.get("avg_generated_tokens")), "Truncation": _num(m.get("truncation_rate")),
           "Mean Reverse KL": NAN if aligned else _num(m.get("mean_reverse_kl")),
           LOGRATIO_COL: _num(m.get("mean_logratio_per_char")), OBJECTIVE_COL: _num(m.get("heldout_objective")),
           ALIGNED_COL: _num(m.get("aligned_divergence")) if aligned else NAN,
           # training compute from the ledger (evaluation apart); runs from before it: the wall clock
           "Device hours": _num(t.get("train_device_hours", t.get("device_hours"))), "Device kind": t.get("device_kind"),
           "Training seconds": _num(t.get("train_seconds", t.get("duration_seconds"))),
           "Training FLOPs": _num(t.get("train_flops")), "Evaluation seconds": _num(t.get("eval_seconds")),
           "Steps": _num(t.get("global_step")),
           "Peak RSS GB": _num(t.get("peak_rss_gb")), "Divergence kind": divergence}
    if m and status != "not run":
        for col, key in (("Accuracy", "accuracy"), ("Avg Generated Tokens", "avg_generated_tokens"),
                         (ALIGNED_COL if aligned else "Mean Reverse KL",
                          "aligned_divergence" if aligned else "mean_reverse_kl")):
            if math.isnan(row[col]):
                why = m.get("kl_note") if key == "mean_reverse_kl" and m.get("kl_note") else (
                    "not recorded" if key in m else "key absent (older schema?)")
                notes.append(f"{key}: {why}")
    if m and "mean_logratio_per_char" not in m:
        notes.append("log-ratio to the teacher: not recorded (evaluated before the kit computed it)")
    row[LOGRATIO_RULE] = NAN
    if not math.isnan(row[LOGRATIO_COL]):  # records from before logratio_version were scored under rule 1
        row[LOGRATIO_RULE] = float(m.get("logratio_version") or 1)
        if row[LOGRATIO_COL] != 0 and row[LOGRATIO_RULE] < logratio.VERSION:  # 0: a model against itself, any rule
            notes.append(OLD_LOGRATIO)
    if training and "train_seconds" not in t:
        notes.append("device time is the run's wall clock, evaluation included (recorded before the compute ledger)")
    if training is not None and math.isnan(row["Device hours"]):
        secs, devs = row["Training seconds"], _num(t.get("devices"))
        if not math.isnan(secs):
            row["Device hours"] = secs * (1 if math.isnan(devs) else devs) / 3600.0
            notes.append("device hours derived from duration_seconds")
        else:
            notes.append("no training time recorded (older schema?)")
    row["Note"] = "; ".join(notes)
    return row


def lora_text(summary: dict, key: str) -> str | None:
    """How a run trained, when it trained LoRA adapters rather than every weight (its summary's config)."""
    lora = ((summary.get("config") or {}).get(key) or {}).get("lora")
    if not lora:
        return None
    s = {**LORA_DEFAULTS, **lora}
    where = s["target_modules"] if isinstance(s["target_modules"], str) else ", ".join(s["target_modules"])
    return f"LoRA adapters (r {s['r']}, alpha {s['alpha']}, on {where}); the student's own weights stayed frozen"


def _run_rows(key: str, info: RunInfo) -> dict[str, dict]:
    s = info.summary
    first = info.evals.iloc[0].to_dict() if len(info.evals) else {}
    last = info.evals.iloc[-1].to_dict() if len(info.evals) else {}
    final = s.get("distilled") or last
    training = s.get("training")
    if training is None and len(info.evals):  # interrupted / older run: rebuild what the points show
        training = {"device_hours": last.get("device_hours"), "duration_seconds": last.get("seconds"),
                    "device_kind": last.get("device_kind"), "global_step": last.get("step")}
    notes = list(info.notes)
    if lora := lora_text(s, info.method):
        notes.append(lora)
    status = info.status
    if s.get("did_not_train"):
        status = f"did not train: {s['did_not_train']}"
    elif s.get("flags"):
        status = f"{info.status}; " + "; ".join(s["flags"])
    if info.summary and not s.get("distilled") and last:
        notes.append("summary has no 'distilled' block; values from the last eval point")
    spec = info.spec
    aligned = spec is not None and spec.divergence == "aligned"
    div = s.get("divergence_label") or (spec.divergence_label if spec else SAME_TOK_DIV)
    distills = {"Distills": spec is None or spec.distills}  # has an own objective to show
    if spec is None or not spec.own_student:
        return {key: _row(info.label, status, final, training=training, notes=notes, divergence=div, kind="trained",
                          aligned=aligned) | distills}
    student = own_model(info)
    suffix = f": {student}" if student else ""
    pre_notes = notes + ([] if s.get("initial") or not first else ["values from the first eval point"])
    return {f"{key}_pre": _row(f"{info.label} (pre){suffix}", info.status, s.get("initial") or first,
                               aligned=aligned, divergence=div, notes=pre_notes, kind="untrained") | distills,
            key: _row(f"{info.label} (post){suffix}", status, final, aligned=aligned, training=training,
                      divergence=div, notes=notes, kind="trained") | distills}


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
        label = BASE_LABELS[role] + (f": {model}" if model else "")
        div = "teacher vs itself (0 by definition)" if role == "teacher" else SAME_TOK_DIV
        rows[role] = _row(label, "complete" if m else "not run", m, divergence=div, notes=notes)
    rows.update(controls.control_rows(b, _row))
    for key, info in collected.runs.items():
        if further_seed(collected, key):
            continue  # a further seed's row comes with its method's
        rows.update(_run_rows(key, info))
        if key in collected.seeds:
            rows.update(_seed_rows(collected, key, rows.pop(key)))
    primary = {a: p for (a, b), (_, p) in primary_tests(collected).items() if b == untrained_row(collected, a)}
    for key, row in rows.items():  # each trained row against its own untrained student, paired by problem
        pr = (paired_vs(collected, key, untrained_row(collected, key)) if row["Row kind"] in ("trained", "seed", "control")
              else None)
        row.update({"Diff vs student": pr.diff if pr else NAN, "Diff CI low": pr.ci_low if pr else NAN,
                    "Diff CI high": pr.ci_high if pr else NAN, P_COL: pr.p_value if pr else NAN,
                    "p (Holm)": primary.get(key, NAN)})
        audits = [collected.audits.get(k) for _, k in collected.seeds.get(key, [(0, key)])]
        audits = [a for a in audits if a is not None]  # a multi-seed row: the seeds' mean, flagged if any seed is
        row.update({PLAIN_COL: _mean([a.plain_share for a in audits]), RESTATE_COL: _mean([a.restate_share for a in audits]),
                    CUT_COL: _mean([a.cut_share for a in audits]),
                    "Hacking flag": hacking_flag(collected, key) if row["Row kind"] in ("trained", "seed") else None})
        if row["Hacking flag"]:
            row["Status"] = f"{row['Hacking flag']}; {row['Status']}"
    return pd.DataFrame.from_dict(rows, orient="index")


def _seed_rows(col: Collected, key: str, first: dict) -> dict[str, dict]:
    """A method trained at several seeds: its mean row (under the method's key; intervals from a bootstrap
    over problems, each with all its seeds) followed by one row per seed."""
    seed_rows = {}
    for seed, run_key in col.seeds[key]:
        row = first if run_key == key else _run_rows(run_key, col.runs[run_key])[run_key]
        seed_rows[f"{key}-seed{seed}"] = {**row, "Model / Method": f"{first['Model / Method']} (seed {seed})",
                                          "Row kind": "seed"}
    mean = dict(first)
    vals = list(seed_rows.values())
    for c in MEANED:
        mean[c] = _mean([v[c] for v in vals])
    outcomes = seed_correct(col, key)
    if outcomes:
        acc = stats.paired_seeds(outcomes, [dict.fromkeys(outcomes[0], False)])
        mean["CI low"], mean["CI high"], mean["n"] = acc.ci_low, acc.ci_high, acc.n
    statuses = sorted({v["Status"] for v in vals})
    mean["Status"] = statuses[0] if len(statuses) == 1 else "; ".join(f"{v['Model / Method']}: {v['Status']}" for v in vals)
    mean["Model / Method"] = f"{first['Model / Method']}, {seeds_label(col, key)}"
    done = finished_seeds(col, key)
    waiting = [s for s, _ in col.seeds[key] if s not in done]
    mean["Note"] = ("mean of seeds " + ", ".join(map(str, done)) + (f" ({', '.join(map(str, waiting))} not finished)"
                                                                    if waiting else "")
                    + "; intervals resample problems "
                    "with all their seeds; p: exact sign test over problems on each problem's mean over seeds (each "
                    "seed's row: its own McNemar p)")
    scored = kl_scored_seeds([s for s, _ in col.seeds[key]], [v["Mean Reverse KL"] for v in vals])
    if scored:
        mean["Note"] += (f"; Mean Reverse KL, log-ratio and own objective: seed {', '.join(map(str, scored))} only "
                         "(evaluation.kl_seeds)")
    mean[LOGRATIO_RULE] = min((v[LOGRATIO_RULE] for v in vals if not pd.isna(v[LOGRATIO_RULE])), default=NAN)
    if mean[LOGRATIO_RULE] < logratio.VERSION and mean[LOGRATIO_COL] != 0:  # never a silent mix of rules
        mean["Note"] += "; " + OLD_LOGRATIO
    return {key: mean, **seed_rows}


def finished_seeds(col: Collected, key: str) -> list[int]:
    """The seeds of a multi-seed method whose runs finished (the ones its mean row averages)."""
    return [s for s, k in col.seeds.get(key, ()) if k in col.runs and col.runs[k].status == "complete"]


def seeds_label(col: Collected, key: str) -> str:
    """What a multi-seed method's mean row holds: "mean of 3 seeds"; while a study is part-way (seed-major,
    resumable) "mean of 2 of 3 seeds" or "1 of 3 seeds", never a mean of seeds that were not run."""
    n, done = len(col.seeds.get(key, ())), len(finished_seeds(col, key))
    if done == n:
        return f"mean of {n} seeds"
    return f"mean of {done} of {n} seeds" if done > 1 else f"{done} of {n} seeds"


def kl_scored_seeds(seeds: list[int], kls: list) -> list[int]:
    """The seeds whose test answers the teacher scored (a Mean Reverse KL), where that is some of a method's
    seeds but not all (evaluation.kl_seeds); [] when it scored every seed or none. One rule for the table's
    note and the findings' "(seed 42 only)"."""
    scored = [s for s, kl in zip(seeds, kls, strict=True) if not pd.isna(kl)]
    return scored if len(scored) < len(seeds) else []


def _applies(r: pd.Series, col: str) -> bool:
    if r["Row kind"] == "control":  # no training, but paired with the untrained student like a trained row
        return col in PAIRED_COLS or col not in TRAINING_COLS
    return r["Row kind"] in ("trained", "seed") if col in TRAINING_COLS else (
        not r["Aligned"] if col == "Mean Reverse KL" else bool(r["Aligned"]) if col == ALIGNED_COL else True)


def styled_table(table: pd.DataFrame | Collected) -> pd.DataFrame:
    """The table as display strings: percentages, 3 decimals, units; 'missing' / 'not run' / '—'."""
    df = results_table(table) if isinstance(table, Collected) else table
    out = []
    for _, r in df.iterrows():
        def cell(col, fmt, r=r):
            if not _applies(r, col):
                return "—"
            if r["Status"] == "not run":
                return "not run"
            return "missing" if pd.isna(r[col]) else fmt(r[col])
        unit = f" {r['Device kind']}-h" if isinstance(r["Device kind"], str) else " device-h"
        ci = cell("CI low", lambda lo, hi=r["CI high"]: f"[{pct(lo)}, {pct(hi)}]")
        diff = cell("Diff vs student", lambda d, r=r: f"{100 * d:+.1f} pts [{100 * r['Diff CI low']:+.1f}, "
                    f"{100 * r['Diff CI high']:+.1f}]")
        out.append({"Model / Method": r["Model / Method"], "Status": r["Status"],
                    "Accuracy": cell("Accuracy", pct), "95% CI": ci, "n": cell("n", lambda x: f"{x:.0f}"),
                    "Avg Generated Tokens": cell("Avg Generated Tokens", lambda x: f"{x:.1f}"),
                    "Truncation": cell("Truncation", pct),
                    "Paired diff vs untrained (95% CI)": diff,
                    P_COL: cell(P_COL, lambda p: f"{p:.3g}"),
                    "p (Holm, primary)": "—" if pd.isna(r["p (Holm)"]) else f"{r['p (Holm)']:.3g}",
                    PLAIN_COL: cell(PLAIN_COL, pct), RESTATE_COL: cell(RESTATE_COL, pct),
                    "Mean Reverse KL": cell("Mean Reverse KL", lambda x: f"{x:.3f}"),
                    ALIGNED_COL: cell(ALIGNED_COL, lambda x: f"{x:.3f}"),
                    LOGRATIO_COL: cell(LOGRATIO_COL, lambda x, r=r: f"{x:.3f}" + (
                        " (old rule)" if x != 0 and r.get(LOGRATIO_RULE, logratio.VERSION) < logratio.VERSION else "")),
                    OBJECTIVE_COL: cell(OBJECTIVE_COL, lambda x: f"{x:.4f}") if r.get("Distills") is True else "—",
                    "Training compute": cell("Device hours", lambda x, u=unit, r=r: f"{x:.3g}{u}" + (
                        f" ({r['Training seconds']:.0f} s)" if not pd.isna(r["Training seconds"]) else "") + (
                        f", {r['Training FLOPs']:.2e} FLOP" if not pd.isna(r["Training FLOPs"]) else "")),
                    "Evaluation time": cell("Evaluation seconds", lambda x: f"{x:.0f} s"),
                    "Steps": cell("Steps", lambda x: f"{x:.0f}"),
                    "Peak memory": cell("Peak RSS GB", lambda x: f"{x:.1f} GB RSS"),
                    "Divergence kind": r["Divergence kind"],
                    "Note": r["Note"]})
    return pd.DataFrame(out, index=df.index)


def baseline_frame(baselines: dict) -> pd.DataFrame:
    """Notebook 01's rows (student, teacher) from :func:`atlas_lib.evaluation.baselines.evaluate_baselines`."""
    b = Collected("", None, baselines, {})
    t = results_table(b)
    return styled_table(t.loc[["student", "teacher", *t.index[t["Row kind"] == "control"]]]).drop(
        columns=["Training compute", "Evaluation time", "Steps", "Peak memory", ALIGNED_COL, OBJECTIVE_COL,
                 "Paired diff vs untrained (95% CI)", P_COL, "p (Holm, primary)", PLAIN_COL, RESTATE_COL])


def examples_frame(prepared, n: int = 3) -> pd.DataFrame:
    """The first ``n`` held-out problems (question, reference answer, worked solution if any)."""
    return pd.DataFrame([{"id": r["id"], "question": r["question"], "answer": r["answer"],
                          "solution": r.get("solution")} for r in list(prepared.eval)[:n]]).set_index("id")


class TableView:
    """:func:`styled_table` as the report shows it: every name in full (pandas' notebook display cuts
    cells at 50 characters), and the two long text columns (divergence kind, note) as numbered
    footnotes under the table, so the numbers fit a 1280 px page and print with every column."""

    FOOTNOTED = ("Divergence kind", "Note")

    def __init__(self, table: pd.DataFrame | Collected):
        self.frame = styled_table(table)

    def _repr_html_(self) -> str:
        df = self.frame.drop(columns=list(self.FOOTNOTED))
        notes: list[str] = []
        marks = []
        for _, r in self.frame.iterrows():
            refs = []
            for col in self.FOOTNOTED:
                text = r[col]
                if isinstance(text, str) and text.strip():
                    if text not in notes:
                        notes.append(text)
                    refs.append(str(notes.index(text) + 1))
            marks.append(f" [{', '.join(refs)}]" if refs else "")
        df["Model / Method"] = [f"{name}{m}" for name, m in zip(df["Model / Method"], marks, strict=True)]
        body = df.to_html(escape=True, border=0, classes="atlas-table", index=False)  # the label names the row
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        shown = LOGRATIO_COL in df and df[LOGRATIO_COL].str.match(r"-?\d").any()  # what the column is, where shown
        return body + (f'<ol class="atlas-notes">{items}</ol>' if notes else "") + (
            f'<p class="atlas-notes">{html.escape(LOGRATIO_NOTE)}</p>' if shown else "")


KEY_COLS = ("Method", "Accuracy [95% CI]", "Difference vs its untrained student, points [95% CI]", "p",
            "Training compute")


def _p_plain(p: float) -> str:
    """A p-value without scientific notation: '< 0.001', '0.012', '0.50'."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def _compute_plain(hours: float, kind) -> str:
    """Training compute in the unit that keeps it readable (no scientific notation): h, min or s."""
    unit = kind if isinstance(kind, str) else "device"
    if hours >= 1:
        return f"{hours:.1f} {unit}-h"
    if hours * 60 >= 1:
        return f"{hours * 60:.1f} {unit}-min"
    return f"{hours * 3600:.0f} {unit}-s"


def row_name(col: Collected, key: str, r: pd.Series) -> str:
    """A row's one short name (the registry's ``name``; a seed "GKD (seed 43)"; an untrained student of a
    method with its own student "<name> (untrained student)"), as the lead and the key table write it."""
    if key in ("student", "teacher"):
        return {"student": "Untrained student", "teacher": "Teacher"}[key]
    if key.endswith("_pre") and key[:-4] in col.runs:
        return f"{col.runs[key[:-4]].name} (untrained student)"
    if key in col.runs:
        n = len(col.seeds.get(key, ()))
        return col.runs[key].name + (f" ({seeds_label(col, key)})" if n > 1 else "")
    return str(r["Model / Method"]).split(" (control")[0].split(":")[0]


def key_frame(table: pd.DataFrame, col: Collected) -> pd.DataFrame:
    """The five columns a reader needs first (:data:`KEY_COLS`), one row per model (seeds stay in the full
    table): accuracy with its interval, the paired difference from the row's own untrained student with
    its interval and p, and training compute, all without scientific notation."""
    out = []
    # a shared student no method trains (every method here brings its own, as in study_cross) is left to the
    # full table: beside the methods' own untrained rows it would read as theirs
    unused = {"student"} if own_student_page(col) else set()
    for k, r in table.iterrows():
        if r["Row kind"] == "seed" or k in unused:
            continue
        ok = r["Status"] != "not run" and not pd.isna(r["Accuracy"])
        acc = (f"{pct(r['Accuracy'])} [{100 * r['CI low']:.1f}–{100 * r['CI high']:.1f}]"
               if ok and not pd.isna(r["CI low"]) else pct(r["Accuracy"]) if ok else "not run")
        diff = (f"{100 * r['Diff vs student']:+.1f} [{100 * r['Diff CI low']:+.1f}, {100 * r['Diff CI high']:+.1f}]"
                if not pd.isna(r["Diff vs student"]) else "—")
        comp = (_compute_plain(r["Device hours"], r["Device kind"]) if r["Row kind"] in ("trained",)
                and not pd.isna(r["Device hours"]) else "—")
        flag = r.get("Hacking flag") if isinstance(r.get("Hacking flag"), str) else (
            "did not train" if str(r["Status"]).startswith("did not train") else None)
        out.append({"Method": row_name(col, k, r) + (f" ({flag})" if flag else ""), KEY_COLS[1]: acc,
                    KEY_COLS[2]: diff, "p": _p_plain(r[P_COL]) if not pd.isna(r[P_COL]) else "—",
                    "Training compute": comp})
    return pd.DataFrame(out, columns=list(KEY_COLS))


class KeyTable:
    """:func:`key_frame` as HTML: a narrow table (class ``atlas-key``) that fits a 390 px phone screen and
    prints whole on one A4 page; the full table follows it."""

    def __init__(self, col: Collected, table: pd.DataFrame | None = None):
        self.frame = key_frame(results_table(col) if table is None else table, col)

    def _repr_html_(self) -> str:
        return self.frame.to_html(escape=True, border=0, classes="atlas-key", index=False)


def key_table(col: Collected) -> KeyTable:
    """The key table for notebook 05 (:class:`KeyTable`)."""
    return KeyTable(col)


def table_view(table: pd.DataFrame | Collected) -> TableView:
    """The results table for display in notebook 05 and its HTML page (:class:`TableView`)."""
    return TableView(table)
