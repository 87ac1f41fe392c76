"""The findings' sentences on the prompt controls (``evaluation.controls``): the untrained student under
another prompt, no training, on the same test problems, grader and decoding as every row. Each control is
paired with the student's own row, and set against each trained method's gain: how much of it a prompt
alone reaches (the control's paired difference over the method's)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from atlas_lib.evaluation import stats
from atlas_lib.report.collect import Collected, paired_vs, shared_student_runs


def _diff(pr: stats.Paired) -> str:
    return (f"{100 * pr.diff:+.1f} points (95% CI {100 * pr.ci_low:+.1f} to {100 * pr.ci_high:+.1f}, {pr.test} "
            f"p = {pr.p_value:.2g})")


def control_rows(baseline: dict | None, make_row: Callable) -> dict[str, dict]:
    """The table's control rows (``control_<name>``, kind ``control``) from notebook 01's baseline summary."""
    rows = {}
    for name, m in ((baseline or {}).get("controls") or {}).items():
        c = m.get("control") or {}
        rows[f"control_{name}"] = make_row(
            f"{c.get('label') or name} (control: no training)", "complete", m, kind="control",
            notes=[f"the untrained student with the prompt's instruction replaced by: {c.get('instruction', '?')!r}; "
                   "same test problems, grader and greedy decoding"])
    return rows


def control_sentences(col: Collected, t: pd.DataFrame) -> list[str]:
    """One sentence per control row of table ``t``: its change against the student's own prompt, its answer
    length, and the share of each method's test gain it reaches without training."""
    out = []
    for c in (k for k in t.index if t.loc[k, "Row kind"] == "control"):
        if (pc := paired_vs(col, c, "student")) is None:
            continue
        parts = []
        for k in shared_student_runs(col, methods_only=True):
            if (pm := paired_vs(col, k, "student")) is None:
                continue
            name, gain = col.runs[k].name, f"{100 * pm.diff:+.1f} points"
            parts.append(f"{name}: no gain to compare ({gain})" if pm.diff <= 0 else
                         f"none of {name}'s {gain}" if pc.diff <= 0 else f"{100 * pc.diff / pm.diff:.0f}% of {name}'s {gain}")
        tokens = t.loc[c, "Avg Generated Tokens"]
        out.append(f"Control, {t.loc[c, 'Model / Method'].split(' (control')[0]} (the untrained student, no training; "
                   f"only the prompt differs): {_diff(pc)} against the student's own prompt"
                   + (f", {tokens:.1f} tokens per answer" if isinstance(tokens, float) and math.isfinite(tokens) else "")
                   + ("; set against each method's gain: " + "; ".join(parts) if parts else "") + ".")
    return out
