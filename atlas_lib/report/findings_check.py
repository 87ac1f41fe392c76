"""Read the findings back against the table: every number a sentence states, and every model it names.

The findings (:mod:`atlas_lib.report.findings`) are computed from the table, so on a freshly rendered
page they agree with it by construction; a page rendered by older code, a hand edit, or a sentence
that names the wrong row does not. This checker works on what a reader sees: the findings section of
``index.html`` (notebook 05's ``answer`` cell: the headline and the findings) or the Markdown that
:func:`atlas_lib.report.findings.findings` returns, against ``table.json`` beside it
(:func:`atlas_lib.report.table.results_table`, ``orient="index"``). It loads no model and reads no run.

The grammar is generic rather than sentence by sentence, so rewording a sentence keeps it checked:

- a **row** is named by its table label (``Model / Method``, or the part before its ``:``), by its
  method's short name (the registry), or as "the student" / "the teacher";
- a number is read with its **unit** and checked against the cell of the row named before it in the
  same clause (a clause ends at ``;`` outside parentheses): ``x% (95% CI a%–b%, n=N)`` is Accuracy,
  CI low/high and n; ``±d points (... 95% CI lo to hi ..., p = v, n = N; G gained, L lost)`` is the
  row's paired difference from its untrained student (its interval, McNemar p, n, and G - L = d x n
  where one seed makes that exact); ``A minus B ...: ±d points`` is A's accuracy less B's; ``from
  x% to y%`` the untrained and trained accuracies; ``h CPU-hours over s steps`` device hours and steps;
  ``x → y`` in a sentence about generated tokens, reverse KL, aligned span divergence or a method's own
  objective is the untrained row's value and the trained row's; the log-ratio and answer-form lists
  give one value (or ``a% / b% / c%``) per named row;
- each number is compared at the precision it is printed with (half a unit of its last digit);
- sentences that cannot be true whatever the numbers: "no trained method has a test evaluation
  paired ..." while the table holds paired differences; "no method changed ... more than this run can
  distinguish" beside a decisive one; a compute stated as zero (``0.00x``, ``0.00e+00``, ``0 CPU-hours``);
  a power sentence that does not follow from its own n and discordance, or that says smaller differences
  "read as noise" beside a smaller one the same page calls significant; "evaluation measured apart"
  beside a trained row that recorded no evaluation seconds (its hours are wall clock, evaluation in);
- a model named as "the student" with a number (or in the title) must be the student of the trained
  rows: where every trained row trains its own student (cross-tokenizer reports), "the student" and its
  accuracy describe a model no row trains; a model id followed by "at x%" must have that accuracy;
- the first screen (``findings.first_screen``): ``Name x% → y% [lo–hi]`` is the row's untrained and
  trained accuracy and interval; ``A − B: ±d points ...: a difference`` is read as the pairwise rule.

Not read back: a method-vs-method comparison's interval and p (the table holds each row against its
untrained student only; its difference is checked as A's accuracy less B's), and the compute-to-match
amounts and each curve's change over its last eval interval (report/plateau.py): validation curves are
not in the table; only a zero compute is refused.

Numbers the grammar does not cover (LoRA ranks, GRPO's signal counts from the training logs, the
validation split's n) are counted as unchecked, not as mismatches; the JSON gives both counts.
"""

from __future__ import annotations

import html as html_lib
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from atlas_lib.core.files import atomic_write_json
from atlas_lib.report.table import (
    ALIGNED_COL,
    CUT_COL,
    LOGRATIO_COL,
    OBJECTIVE_COL,
    P_COL,
    PLAIN_COL,
    RESTATE_COL,
)

log = logging.getLogger(__name__)

NUM = r"[+\-]?\d+(?:\.\d+)?(?:e[+\-]\d+)?"
ALPHA = 0.05
CHECK_FILE = "findings_check.json"
COLS = {"tokens": "Avg Generated Tokens", "kl": "Mean Reverse KL", "aligned": ALIGNED_COL, "objective": OBJECTIVE_COL,
        "logratio": LOGRATIO_COL, "plain": PLAIN_COL, "cut": CUT_COL, "restate": RESTATE_COL}


class ReportCheckError(ValueError):
    """The report's files cannot be read (a missing or malformed index.html / table.json)."""


@dataclass
class Mismatch:
    sentence: str
    claim: str  # what the sentence states, e.g. "Accuracy of student"
    stated: str
    table: str  # what the table holds (or why the sentence cannot be true)
    row: str | None = None


@dataclass
class Result:
    mismatches: list[Mismatch] = field(default_factory=list)
    checked: int = 0  # numbers (and claims) compared with the table
    unchecked: int = 0  # numbers no rule of the grammar reads

    def as_dict(self) -> dict:
        return {"mismatches": [asdict(m) for m in self.mismatches], "checked": self.checked,
                "unchecked": self.unchecked, "ok": not self.mismatches}


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _tol(stated: str) -> float:
    """Half a unit of the stated number's last printed digit."""
    mant, _, exp = stated.lstrip("+-").lower().partition("e")
    dec = len(mant.split(".")[1]) if "." in mant else 0
    return 0.5 * 10.0 ** (-dec) * (10.0 ** int(exp) if exp else 1.0) * 1.0001 + 1e-12


def agrees(stated: str, value, scale: float = 1.0) -> bool:
    """Whether ``stated`` (as printed) is ``value * scale`` rounded to the printed precision."""
    return _ok(value) and abs(float(stated) - value * scale) <= _tol(stated)


# --- the text a reader sees -------------------------------------------------------------------------

def _strip_tags(fragment: str) -> list[str]:
    text = re.sub(r"<(?:/?(?:li|p|h\d|ul|ol|div|tr|br)\b)[^>]*>", "\n", fragment)
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", text)).replace("¶", "")
    return [line.strip() for line in text.split("\n") if line.strip()]


FINDINGS_CELLS = re.compile(r"answer|findings.*")  # notebook 05's cells that print the title and the findings


def findings_from_html(page: str) -> list[str]:
    """The findings section of a rendered ``index.html``, one paragraph or list item a line: notebook
    05's ``answer`` cell (the title and the first screen) and its ``findings-*`` cells (the detail below
    the key table); a page without them gives every Markdown output."""
    cells = [(m.start(), m.group(1)) for m in re.finditer(r'id="cell-id=([^"]*)"', page)] + [(len(page), "")]
    out = []
    for (start, cell), (end, _) in zip(cells, cells[1:], strict=False):
        if FINDINGS_CELLS.fullmatch(cell):
            start = page.find(">", start) + 1
            out += _strip_tags(page[start:page.rfind("<", start, end) if end < len(page) else end])
    if out:
        return out
    blocks = re.findall(r'<div class="output_markdown[^"]*">(.*?)</div>', page, re.S)
    return [line for b in blocks for line in _strip_tags(b)]


def findings_from_markdown(md: str) -> list[str]:
    """The Markdown that :func:`~atlas_lib.report.findings.findings` (and ``headline``) return, one
    paragraph or list item a line, emphasis removed."""
    out = []
    for line in md.split("\n"):
        line = re.sub(r"^\s*(?:[-*]\s+|#+\s*)", "", line).replace("**", "").replace("`", "").strip().strip("*")
        if line.strip():
            out.append(line.strip())
    return out


def _sentences(item: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", item) if s]


def _clauses(sentence: str) -> list[str]:
    """Split at ';' outside parentheses (a paired result's '(p = 0.01; 12 gained, 4 lost)' stays whole)."""
    out, depth, cur = [], 0, []
    for ch in sentence:
        depth += (ch == "(") - (ch == ")")
        if ch == ";" and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [c.strip() for c in out if c.strip()]


# --- the table --------------------------------------------------------------------------------------

def _add_label_names(names: dict[str, str], table: dict[str, dict]) -> None:
    """Each row by its table label and the label's part before ':'; the baselines as sentences say them."""
    for k, row in table.items():
        label = str(row.get("Model / Method") or k)
        names.setdefault(label, k)
        names.setdefault(label.split(":")[0].strip(), k)
    for name, k in (("Untrained student", "student"), ("Teacher", "teacher")):
        if k in table:
            names.setdefault(name, k)


def _add_method_names(names: dict[str, str], table: dict[str, dict], m) -> None:
    """Method ``m``'s rows by its short name ("GKD", "TRL GOLD") and table.row_name's short names:
    "GKD (seed 43)", "GKD (mean of 3 seeds)", "GKD (untrained student)"."""
    if m.key in table:
        names.setdefault(m.name, m.key)
    for k in table:
        if (seed := re.fullmatch(rf"{re.escape(m.key)}-seed(\d+)", k)) is not None:
            names.setdefault(f"{m.name} (seed {seed.group(1)})", k)
        if k == m.key and (n := re.search(r"(?:mean of )?\d+ (?:of \d+ )?seeds$", str(table[k].get("Model / Method")))):
            names.setdefault(f"{m.name} ({n.group(0)})", k)
        if k == f"{m.key}_pre":
            names.setdefault(f"{m.name} (untrained student)", k)


def _add_registry_names(names: dict[str, str], table: dict[str, dict]) -> None:
    """The registered methods' names as sentences use them, where the kit's registry can be read."""
    try:
        from atlas_lib.core import registry
        for m in registry.methods():
            _add_method_names(names, table, m)
    except Exception:  # a table read without the kit's registry still checks by label
        log.debug("registry unavailable; rows are named by their labels only")


class _Table:
    def __init__(self, table: dict[str, dict]):
        self.t = table
        names: dict[str, str] = {}  # the first row a name is given to keeps it
        _add_label_names(names, table)
        _add_registry_names(names, table)
        self.names = sorted(names.items(), key=lambda kv: -len(kv[0]))

    def get(self, k: str | None, col: str):
        return (self.t.get(k) or {}).get(col) if k else None

    def model(self, k: str) -> str:
        label = str(self.get(k, "Model / Method") or "")
        return label.split(":", 1)[1].strip() if ":" in label else ""

    def trained(self) -> list[str]:
        return [k for k, r in self.t.items() if r.get("Row kind") == "trained"]

    def base(self, k: str) -> str:
        """The untrained row a trained row is paired with: its own (``<key>_pre``) or the shared student."""
        return f"{k}_pre" if f"{k}_pre" in self.t else "student"

    def student_models(self) -> set[str]:
        """The models the trained rows train (their untrained rows' models)."""
        return {self.model(self.base(k)) for k in self.trained()} - {""}

    def find(self, text: str) -> list[tuple[int, str]]:
        """(position, row) of every row named in ``text``, longest name first at each position."""
        out, i = [], 0
        while i < len(text):
            for name, k in self.names:
                if text.startswith(name, i) and (i + len(name) == len(text) or not text[i + len(name)].isalnum()) \
                        and (i == 0 or not text[i - 1].isalnum()):
                    out.append((i, k))
                    i += len(name)
                    break
            else:
                i += 1
        low = text.lower()
        out += [(m.start(), "student") for m in re.finditer(r"\bthe (?:untrained )?student\b", low)]
        out += [(m.start(), "teacher") for m in re.finditer(r"\bthe teacher\b", low)]
        return sorted(out)

    def named_before(self, text: str, pos: int) -> str | None:
        """The row named last before ``pos`` outside parentheses deeper than ``pos`` (a loss title such as
        '(GKD: generalized JSD)' names a method, not the row the sentence is about)."""
        depth = [0]
        for ch in text:
            depth.append(depth[-1] + (ch == "(") - (ch == ")"))
        found = [k for p, k in self.find(text) if p < pos and depth[p] <= depth[pos]]
        return found[-1] if found else None

    def raw_p(self, k: str):
        """The row's paired test p (McNemar, or the sign test over problems with seeds): 'p (paired test)',
        'p (McNemar)' in tables written before seeds were tested over problems."""
        return next((p for col in (P_COL, "p (McNemar)") if _ok(p := self.get(k, col))), None)

    def p_value(self, k: str):
        ps = [p for p in (self.get(k, "p (Holm)"), self.raw_p(k)) if _ok(p)]
        return max(ps) if ps else None  # a primary comparison counts at its Holm-adjusted p

    def decisive(self, k: str) -> bool:
        p, lo, hi = self.p_value(k), self.get(k, "Diff CI low"), self.get(k, "Diff CI high")
        return p is not None and p < ALPHA and _ok(lo) and _ok(hi) and (lo > 0 or hi < 0)


# --- the checks -------------------------------------------------------------------------------------

class _Checker:
    def __init__(self, table: dict[str, dict]):
        self.tb = _Table(table)
        self.res = Result()
        self.significant: list[tuple[str, float]] = []  # (what, |difference| in points) called significant

    def miss(self, sentence, claim, stated, table, row=None):
        self.res.mismatches.append(Mismatch(sentence, claim, str(stated), str(table), row))

    def num(self, sentence, row, col, stated, scale=1.0, claim=None):
        """Compare one stated number with the cell (row, col)."""
        if row is None or col not in (self.tb.t.get(row) or {}):
            return False
        self.res.checked += 1
        value = self.tb.get(row, col)
        if not agrees(stated, value, scale):
            shown = "empty" if not _ok(value) else f"{value * scale:.6g}"
            self.miss(sentence, claim or f"{col} of {row}", stated, shown, row)
        return True

    # whole-page claims
    def impossible(self, s: str) -> None:
        """Sentences that cannot be true whatever the numbers (see the module docstring)."""
        self._no_evaluation(s)
        self._no_decisive_change(s)
        self._zero_compute(s)
        self._evaluation_apart(s)
        self._the_student(s)
        self._student_named(s)

    def _no_evaluation(self, s: str) -> None:
        """'No trained method has a test evaluation (paired ...)' beside trained rows that have one."""
        tb = self.tb
        if m := re.search(r"no trained method has a test evaluation( paired)?", s, re.I):
            self.res.checked += 1
            col = "Diff vs student" if m.group(1) else "Accuracy"
            found = [k for k in tb.trained() if _ok(tb.get(k, col))]
            if found:
                self.miss(s, "no paired test evaluation" if m.group(1) else "no test evaluation", m.group(0),
                          f"{col} in the table for " + ", ".join(found))

    def _no_decisive_change(self, s: str) -> None:
        """'No method changed the student's test accuracy by more than ...' (or '<model>'s', where every method
        trains its own student) beside a decisive gain."""
        tb = self.tb
        if m := re.search(r"no method changed (the student's|[\w.\-]+'s|its own student's) test accuracy by more than",
                          s, re.I):
            self.res.checked += 1
            shared = m.group(1).lower() == "the student's"
            hits = [k for k in tb.trained() if (tb.base(k) == "student") == shared and tb.decisive(k)
                    and tb.get(k, "Diff vs student") > 0 and not tb.get(k, "Hacking flag")]
            if hits:
                self.miss(s, "no decisive difference", "none", "decisive gain for " + ", ".join(hits))

    def _zero_compute(self, s: str) -> None:
        """A compute stated as zero (0.00x, 0.00e+00, 0 CPU-hours): training compute never is."""
        for m in re.finditer(r"\b0\.0+x\b|\b0(?:\.0+)?e\+0+\b|\(0 (?:\(seeds [^)]*\) )?[A-Za-z]+-hours\)", s):
            self.res.checked += 1
            self.miss(s, "compute stated as zero", m.group(0), "training compute is never zero; the comparison "
                      "is not defined where the other method's curve starts at the target")

    def _evaluation_apart(self, s: str) -> None:
        """'Evaluation measured apart' beside a trained row that recorded no evaluation seconds."""
        tb = self.tb
        if "evaluation measured apart" in s.lower():  # a row without evaluation seconds ran before the ledger split them
            self.res.checked += 1
            mixed = [k for k in tb.trained() if _ok(tb.get(k, "Device hours")) and not _ok(tb.get(k, "Evaluation seconds"))]
            if mixed:
                self.miss(s, "compute excludes evaluation", "evaluation measured apart", "no evaluation seconds "
                          "recorded for " + ", ".join(mixed) + ": its device hours are the run's wall clock, "
                          "evaluation included (a run written before the compute ledger)")

    def _the_student(self, s: str) -> None:
        """'The student' with a number of its own, where no trained row trains the student row's model."""
        tb = self.tb
        models = tb.student_models()
        smodel = tb.model("student")
        # "the student" with a number of its own (its accuracy): a sentence about the student's frozen weights
        # is about whichever student trained, and stays unflagged
        said = re.search(r"\bthe student\b[^;]*?\d%|\bthe student's accuracy", s.lower())
        if tb.trained() and smodel and models and smodel not in models and said:
            self.res.checked += 1
            self.miss(s, "'the student'", f"the student ({smodel})",
                      f"the trained rows train {', '.join(sorted(models))}, not {smodel}", "student")

    def _student_named(self, s: str) -> None:
        """'student <model id>' naming a model of the table that no trained row trains."""
        tb = self.tb
        models = tb.student_models()
        for m in re.finditer(r"\bstudent ([\w.\-]+?)(?=[,;:)]|\s|$)", s):
            if tb.trained() and models and any(m.group(1).lower() == x.lower() for x in
                                               [tb.model(k) for k in tb.t] if x):
                self.res.checked += 1
                if m.group(1).lower() not in {x.lower() for x in models}:
                    self.miss(s, "student named", m.group(1), f"the trained rows train {', '.join(sorted(models))}")

    def accuracy_blocks(self, s: str, c: str) -> None:
        tb = self.tb
        for m in re.finditer(rf"({NUM})% \(95% CI ({NUM})%[–-]({NUM})%(?:, n=(\d+))?\)", c):
            k = tb.named_before(c, m.start())
            if self.num(s, k, "Accuracy", m.group(1), 100):
                self.num(s, k, "CI low", m.group(2), 100)
                self.num(s, k, "CI high", m.group(3), 100)
                if m.group(4):
                    self.num(s, k, "n", m.group(4))
        for m in re.finditer(r"([\w.\-]+) (?:at|scored|scores) (\d+\.\d)%", c):  # "SmolLM2-135M at 11.0%"
            rows = [k for k in tb.t if tb.model(k) and tb.model(k).lower().startswith(m.group(1).lower())]
            if rows:
                self.res.checked += 1
                if not any(agrees(m.group(2), tb.get(k, "Accuracy"), 100) for k in rows):
                    self.miss(s, f"accuracy of {m.group(1)}", m.group(2) + "%",
                              ", ".join(f"{k} {100 * tb.get(k, 'Accuracy'):.1f}%" for k in rows
                                        if _ok(tb.get(k, "Accuracy"))), rows[0])

    def paired(self, s: str, c: str) -> None:
        """A stated difference in points: 'A minus B: ±d points' (method against method) or a row's
        paired difference from its untrained student, with its interval, p, n, counts and verdict."""
        pair = re.search(r" minus | − ", c)
        m = re.search(rf"(?:(improved|lowered|changed)\b[^()]*?\bby |: |accuracy change \()({NUM}) points(?: \((.*)\))?", c)
        if not m:
            return
        d, par = m.group(2), m.group(3) or ""
        if pair and pair.start() < m.start():
            self._method_pair(s, c, m, d, par)
            return
        k = self.tb.named_before(c, m.start())
        if k is None or k in ("student", "teacher"):
            return
        self._against_student(s, c, m, k, d, par)

    def _method_pair(self, s: str, c: str, m: re.Match, d: str, par: str) -> None:
        """'A minus B ...: ±d points (...)': A's accuracy less B's; noted as significant where it says so."""
        tb = self.tb
        found = [k for p, k in tb.find(c) if p < m.start()]
        if len(found) < 2:
            return
        a, b = found[0], found[1]
        acc_a, acc_b = tb.get(a, "Accuracy"), tb.get(b, "Accuracy")
        self.res.checked += 1
        if not (_ok(acc_a) and _ok(acc_b) and abs(float(d) - 100 * (acc_a - acc_b)) <= _tol(d) + 0.051):
            self.miss(s, f"{a} minus {b}", d, f"{100 * (acc_a - acc_b):+.2f}" if _ok(acc_a) and _ok(acc_b)
                      else "empty", a)
        self._counts(s, par, d, tb.get(a, "n"), seeded="seed" in par or "seeds" in str(tb.get(a, "Model / Method")))
        said = re.search(r"[:,] a difference\b", c) or (
            (pm := re.search(r"\bp (<|=) (\d\.\d+)", par + c[m.end():])) and "not" not in c[m.end():]
            and (pm.group(1) == "<" or float(pm.group(2)) < ALPHA))
        if said:
            self.significant.append((f"{a} minus {b}", abs(float(d))))

    def _against_student(self, s: str, c: str, m: re.Match, k: str, d: str, par: str) -> None:
        """Row ``k``'s paired difference from its untrained student, as stated: the difference, its interval,
        p, n, gained / lost, the verdict, the accuracies before and after, the device hours."""
        tb = self.tb
        self.num(s, k, "Diff vs student", d, 100, claim=f"paired difference of {k}")
        ci = re.search(rf"95% CI ({NUM}) to ({NUM})", par)
        if ci:
            self.num(s, k, "Diff CI low", ci.group(1), 100)
            self.num(s, k, "Diff CI high", ci.group(2), 100)
        self._paired_p(s, k, par)
        nm = re.search(r"\bn = (\d+)", par)
        if nm:
            self.num(s, k, "n", nm.group(1))
        self._counts(s, par, d, tb.get(k, "n"), seeded="seed" in par or "seeds" in str(tb.get(k, "Model / Method")))
        self._verdict(s, c, k, m.group(1))
        fm = re.search(rf"from ({NUM})% to ({NUM})%", c[m.end() - len(par) - 1:] if par else c[m.end():])
        if fm:
            self.num(s, tb.base(k), "Accuracy", fm.group(1), 100)
            self.num(s, k, "Accuracy", fm.group(2), 100)
        self.hours(s, c, k)

    def _paired_p(self, s: str, k: str, par: str) -> None:
        """The stated p ('p = v' or 'p < v') against row ``k``'s paired test p."""
        pm = re.search(r"\bp (<|=) (\d\.\d+)", par)
        if pm:
            self.res.checked += 1
            p = self.tb.raw_p(k)
            good = _ok(p) and (p < float(pm.group(2)) if pm.group(1) == "<" else agrees(pm.group(2), p))
            if not good:
                self.miss(s, f"p of {k}", pm.group(0), f"{p:.4g}" if _ok(p) else "empty", k)

    def _verdict(self, s: str, c: str, k: str, verb: str | None) -> None:
        """'improved' / 'lowered' only where the row's paired test is significant, in that direction."""
        diff, p = self.tb.get(k, "Diff vs student"), self.tb.p_value(k)
        if verb in ("improved", "lowered") and "not a gain" not in c:
            self.res.checked += 1
            if not (_ok(diff) and p is not None and p < ALPHA and (diff > 0) == (verb == "improved")):
                self.miss(s, f"{k} {verb} the accuracy", verb, f"difference {diff}, p {p}", k)
            else:
                self.significant.append((k, abs(100 * diff)))

    def _counts(self, s, par, d, n, seeded):
        cm = re.search(r"(\d+) (?:problems? )?gained(?: on a majority of seeds)?, (\d+) lost", par)
        if cm and not seeded and _ok(n) and n > 0:  # with one seed the net count is the difference exactly
            self.res.checked += 1
            net = 100 * (int(cm.group(1)) - int(cm.group(2))) / n
            if abs(net - float(d)) > _tol(d):
                self.miss(s, "gained minus lost", cm.group(0), f"{net:+.1f} points at n = {n:.0f}, stated {d}")

    def hours(self, s, c, k):
        hm = re.search(rf"\bat ({NUM}) [A-Za-z]+-hours(?: over (\d+)(?:-(\d+))? steps)?", c)
        if hm:
            self.num(s, k, "Device hours", hm.group(1))
            if hm.group(2):
                self.steps(s, k, hm.group(2), hm.group(3))

    def steps(self, s, k, lo, hi=None):
        """"32 steps" is the row's count; "32-37 steps" the range of a mean row's seeds."""
        if hi is None:
            self.num(s, k, "Steps", lo)
            return
        seeds = [r.get("Steps") for key, r in self.tb.t.items() if key.startswith(f"{k}-seed") and _ok(r.get("Steps"))]
        self.res.checked += 1
        if not seeds or (float(lo), float(hi)) != (min(seeds), max(seeds)):
            self.miss(s, f"Steps of {k}'s seeds", f"{lo}-{hi}", f"{min(seeds):.0f}-{max(seeds):.0f}" if seeds else "empty", k)

    def arrows(self, s: str, c: str) -> None:
        low = s.lower()
        if "accuracy" in low and "→" in s:  # first screen: "GKD 37.5% → 59.0% [52.1–65.6]"
            for m in re.finditer(rf"({NUM})% → ({NUM})%(?: \[({NUM})–({NUM})\])?", c):
                k = self.tb.named_before(c, m.start())
                if k is None or k in ("student", "teacher"):
                    continue
                self.num(s, self.tb.base(k), "Accuracy", m.group(1), 100, claim=f"Accuracy of {self.tb.base(k)} "
                         "(untrained)")
                self.num(s, k, "Accuracy", m.group(2), 100)
                if m.group(3):
                    self.num(s, k, "CI low", m.group(3), 100)
                    self.num(s, k, "CI high", m.group(4), 100)
        topic = ("tokens" if "generated tokens" in low else "kl" if "reverse kl to the teacher" in low
                 else "aligned" if "aligned span divergence went" in low else "objective" if "own objective" in low
                 else None)
        if topic is None:
            return
        for m in re.finditer(rf"({NUM}) (?:→|->) ({NUM})", c):
            k = self.tb.named_before(c, m.start())
            if k is None:
                continue
            base = self.tb.base(k) if topic in ("aligned", "objective") else "student"
            if topic == "objective" and not _ok(self.tb.get(base, COLS[topic])):
                pass  # a shared-student method's starting objective is its summary's, not a table cell
            else:
                self.num(s, base, COLS[topic], m.group(1), claim=f"{COLS[topic]} of {base} (before)")
            self.num(s, k, COLS[topic], m.group(2))

    def lists(self, s: str, c: str) -> None:
        low = s.lower()
        if "log-ratio" in low:
            for m in re.finditer(rf"({NUM})(?= \(old rule|\.?$)", c):
                self.num(s, self.tb.named_before(c, m.start()), COLS["logratio"], m.group(1))
        if low.startswith("answer-form audit"):
            m = re.search(r"((?:\d+\.\d%|—)(?: / (?:\d+\.\d%|—)){1,2})\.?$", c)
            if m:
                k = self.tb.named_before(c, m.start())
                parts = [x.strip() for x in m.group(1).split("/")]
                cols = ["plain", "cut", "restate"] if len(parts) == 3 else ["plain", "restate"]
                for part, col in zip(parts, cols, strict=False):  # two shares on pages rendered before the cut share
                    if part != "—":
                        self.num(s, k, COLS[col], part.rstrip("%"), 100)

    def headline(self, s: str) -> None:
        m = re.search(r"(\d+) held-out test problems", s)
        if m:
            self.num(s, "student", "n", m.group(1))
        for m in re.finditer(r"(?:^|[:;] )([^:;]+?) (\d+)(?:-(\d+))? steps", s):
            k = next((k for name, k in self.tb.names if name == m.group(1).strip()), None)
            if k is not None:
                self.steps(s, k, m.group(2), m.group(3))

    def power(self, s: str) -> None:
        from atlas_lib.evaluation import stats

        m = re.search(rf"n = (\d+) test problems and (.*?), the smallest paired difference detectable .*? about "
                      rf"({NUM}) points", s)
        if not m:
            return
        n = int(m.group(1))
        self.num(s, "student", "n", m.group(1))
        q = re.search(r"\((\d+)% of problems", m.group(2))
        if q:
            qs = [max(0.0, (int(q.group(1)) + e) / 100) for e in (-0.5, 0.5)]
        elif "student's accuracy" in m.group(2) and _ok(acc := self.tb.get("student", "Accuracy")):
            qs = [2 * acc * (1 - acc)] * 2
        else:
            qs = []
        mde = float(m.group(3))
        if qs:
            self.res.checked += 1
            lo, hi = (100 * stats.min_detectable_difference(n, x) for x in qs)
            if not lo - _tol(m.group(3)) <= mde <= hi + _tol(m.group(3)):
                self.miss(s, "smallest detectable difference", m.group(3), f"{lo:.1f}–{hi:.1f} points from its n "
                          "and discordance")
        # A significant difference below the 80%-power figure is no contradiction (p < 0.05 needs about 0.7
        # of it); what misled readers was a figure computed from a wrong n or discordance, checked above.
        # A sentence that still says smaller differences "would read as noise" beside one is flagged.
        small = [(what, d) for what, d in self.significant if d < mde]
        if "read as noise" in s:
            self.res.checked += 1
            if small:
                self.miss(s, "power against the page's significant differences", f"{mde} points",
                          "significant on the same page: " + ", ".join(f"{w} {d:.1f} points" for w, d in small))

    def run(self, items: list[str]) -> Result:
        power = []
        for i, item in enumerate(items):
            for s in _sentences(item):
                n_nums = len(re.findall(NUM, s))
                before = self.res.checked
                self.impossible(s)
                if i == 0 or "held-out test problems" in s:
                    self.headline(s)
                if "smallest paired difference detectable" in s:
                    power.append(s)
                    continue
                for c in _clauses(s):
                    self.accuracy_blocks(s, c)
                    self.paired(s, c)
                    self.arrows(s, c)
                    self.lists(s, c)
                self.res.unchecked += max(0, n_nums - (self.res.checked - before))
        for s in power:  # last: it is read against every difference the page calls significant
            self.power(s)
        return self.res


def check(items: list[str], table: dict[str, dict]) -> Result:
    """Check the findings (paragraphs / list items as a reader sees them) against ``table``
    (``table.json``: row key -> column -> value)."""
    return _Checker(table).run(items)


def check_markdown(md: str, table: dict[str, dict]) -> Result:
    return check(findings_from_markdown(md), table)


def check_report(index_html: Path) -> Result:
    """Check a rendered report: ``index.html``'s findings against ``table.json`` beside it."""
    index_html = Path(index_html)
    table_path = index_html.parent / "table.json"
    for p in (index_html, table_path):
        if not p.is_file():
            raise ReportCheckError(f"{p}: not found; check-report reads a rendered report's index.html with "
                                   "table.json beside it (atlas report writes both)")
    try:
        table = json.loads(table_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportCheckError(f"{table_path}: not valid JSON ({e}); re-render the report") from e
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ReportCheckError(f"{table_path}: expected row -> column -> value (results_table's "
                               "to_json(orient='index')); re-render the report")
    return check(findings_from_html(index_html.read_text(encoding="utf-8")), table)


def format_text(result: Result) -> str:
    lines = [f"{len(result.mismatches)} mismatch(es); {result.checked} claims checked, "
             f"{result.unchecked} numbers outside the grammar"]
    lines += [f"- {m.claim}: states {m.stated}, table: {m.table}\n    in: {m.sentence[:160]}" for m in result.mismatches]
    return "\n".join(lines)


def write_check(index_html: Path) -> Result | None:
    """Run :func:`check_report` as a report renders: a warning per mismatch and ``findings_check.json``
    beside ``index.html``; it never fails the rendering (a checker bug must not cost a report)."""
    index_html = Path(index_html)
    try:
        result = check_report(index_html)
    except Exception as e:  # noqa: BLE001 - the page is already written; say why it was not checked
        log.warning("findings check of %s did not run: %s", index_html, e)
        return None
    for m in result.mismatches:
        log.warning("findings check: %s states %s, table %s (%s)", m.claim, m.stated, m.table, m.sentence[:120])
    atomic_write_json(index_html.parent / CHECK_FILE, result.as_dict())
    return result
