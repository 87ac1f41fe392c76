"""Recompute a committed report's paired statistics over problems from its ``problems.html`` alone.

``runs/`` is not committed, but ``problems.html`` records every test problem's verdict for every row
and seed. This reads those verdicts and applies the kit's own tests (``atlas_lib.evaluation.stats``:
cluster bootstrap over problems, exact sign test over problems, counts on a majority of seeds, each
seed's McNemar beside), so a report rendered before a change of statistics can be read under the
current rule without re-training. Usage::

    .venv/bin/python bench/restat_problems.py reports/study/problems.html
"""

from __future__ import annotations

import argparse
import html
import re
from collections import defaultdict

from atlas_lib.evaluation import stats


def verdicts(path: str) -> dict[str, list[dict[int, bool]]]:
    """``{row name: [per-seed {problem index: correct}]}`` (a row without seeds has one dict)."""
    text = open(path, encoding="utf-8").read()
    names = {int(k): html.unescape(v) for k, v in
             re.findall(r'<option value="(\d+)">([^<]*)</option>', text.split("<tbody", 1)[0])}
    columns: dict[int, dict[int, bool]] = defaultdict(dict)
    for i, m in enumerate(re.finditer(r"<tr ([^>]*data-c-[^>]*)>", text)):
        for k, v in re.findall(r'data-c-(\d+)="(\d)"', m.group(1)):
            columns[int(k)][i] = v == "1"
    rows: dict[str, list[dict[int, bool]]] = defaultdict(list)
    for k in sorted(columns):
        rows[re.sub(r",? seed \d+$", "", names.get(k, str(k)))].append(columns[k])
    return dict(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("problems_html")
    ap.add_argument("--against", default=None, help="the row every other row is compared with (default: the first)")
    args = ap.parse_args()
    rows = verdicts(args.problems_html)
    base_name = args.against or next(iter(rows))
    base = rows[base_name]
    trained = [n for n, seeds in rows.items() if n != base_name and len(seeds) > 1 or "distilled" in n or "GRPO" in n]
    pairs = [(n, base_name) for n in trained] + [(a, b) for i, a in enumerate(trained) for b in trained[i + 1:]]
    for a, b in pairs:
        r = stats.paired_seeds(rows[a], rows[b] if b != base_name else base)
        mde = stats.min_detectable_difference(r.n, r.discordance)
        print(f"{a} - {b}: {100 * r.diff:+.1f} points [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}] "
              f"(problems resampled with their seeds), p = {r.p_value:.2g} ({r.test}; {r.sign_a} vs {r.sign_b} "
              f"problems), gained on a majority of seeds {r.a_only}, lost {r.b_only}; per-seed McNemar p "
              + ", ".join(f"{p:.2g}" for p in r.seed_p_values)
              + f"; n = {r.n}, one seed's discordance {100 * r.discordance:.1f}%, detectable {100 * mde:.1f} points")


if __name__ == "__main__":
    main()
