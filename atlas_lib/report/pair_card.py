"""The report's pair card: per arm, which template the teacher read, the stop-token findings and the
measured cost, from the ``pair_check.json`` stage 01 wrote (:mod:`atlas_lib.evaluation.pair_check`)
and each run's summary (``teacher_prompt``, ``teacher_prompt_gap``: what the arm actually did)."""

from __future__ import annotations

import json

from atlas_lib.core.paths import runs_root


def load(profile: str) -> dict | None:
    """Stage 01's check (``baseline/pair_check.json``), else one ``atlas check`` wrote for the profile."""
    for path in (runs_root() / profile / "baseline" / "pair_check.json", runs_root() / profile / "pair_check.json"):
        if path.exists():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                continue
    return None


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:+.4f}"


def pair_card(col, report: dict | None = None) -> str:
    """Markdown: one table per student/teacher pair (``col``: the report's :class:`Collected`)."""
    report = report if report is not None else load(col.profile)
    if report is None:
        return ("No pair check for this profile (stage 01 writes `baseline/pair_check.json`; "
                "`atlas check --params <file>` checks a pair by hand).")
    out = []
    for p in report["pairs"]:
        st, cost, d = p["stop_tokens"], p.get("cost") or {}, p["templates"]["first_difference"]
        s_stop = st["student"]["chat_end"] or st["student"]["eos"]
        masked = [k for k, v in st["stop_label_kept"].items() if v is False]
        out.append(f"**{p['student']} ← {p['teacher']}** ({'same tokenizer' if p['same_tokenizer'] else 'different tokenizers'}). "
                   + ("Both chat templates render the kit's conversation identically. " if d is None else
                      f"The chat templates differ at character {d['at']} ({d['kind']}): student `{d['student']!r}`, "
                      f"teacher `{d['teacher']!r}`. ")
                   + f"Student stop `{s_stop['token']}`: the teacher "
                   + ("stops there too" if st["teacher_stops_with_student"] else "**does not stop there**")
                   + (f", p = {cost['teacher_p_student_stop']:.3f} after a reference answer"
                      if cost.get("teacher_p_student_stop") is not None else "")
                   + ("; pad = eos masks the stop label on " + ", ".join(masked) if masked else
                      "; the stop token's label is kept on every label path checked") + ".")
        out += ["", "| arm | teacher read | teacher NLL gap (nats/token) | how the pair is compared |", "|---|---|---|---|"]
        for a in p["arms"]:
            run = getattr(col, "runs", {}).get(a["arm"])
            summary = getattr(run, "summary", {}) or {}
            read = summary.get("teacher_prompt") or a["teacher_reads"]
            gap = summary.get("teacher_prompt_gap", a["gap"]) if summary.get("teacher_prompt") else a["gap"]
            out.append(f"| {a['arm']} | {read} | {_fmt(gap)} | {a['alignment']} |")
        if cost:
            out.append(f"\nTeacher NLL per answer token on {cost['answers']} validation answers ({cost['answer_tokens']} "
                       f"tokens): {cost['nll_own']:.4f} in its own template, {cost['nll_student_template']:.4f} in the "
                       f"student's (gap {_fmt(cost['gap'])}; refusal above {report['max_gap']} with "
                       "`models.teacher_prompt: student`).")
        out.append("")
    return "\n".join(out).strip()

