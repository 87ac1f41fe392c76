"""The one answer checker, shared by the evaluator and the GRPO reward.

A completion's final answer is found in two steps:

1. **Locate** it (small pre-processing, the only regexes here): normalise ``$12`` -> ``12``,
   ``1,000`` -> ``1000``, ``50%`` -> ``50``, unicode minus -> ``-``; cut a run-on at a new
   ``Question:`` block (base models continue the plain-text prompt); then take the text after the
   *last* final-answer marker (``Final Answer:``, ``####``, ``The answer is``, ``Answer:``,
   ``\\boxed{...}``). A marker with no number after it falls back to the marker before it; with no
   usable marker the last line holding a digit is used, so the *last* number wins.
2. **Parse and compare** with ``math_verify`` (expression + LaTeX extraction, ``verify`` with its
   numeric tolerance), so ``0.5 == 1/2`` and ``\\frac{1}{2}`` works.

math_verify guards each call with ``signal.alarm``, which only works on the main thread; we pass its
timeout only there (``parsing_timeout``/``timeout_seconds`` = None elsewhere, e.g. in a reward worker
thread). What could hang without it -- power towers such as ``9^9^9`` or huge factorials that sympy
would try to evaluate -- is rejected by :func:`_too_big` before any comparison, and snippets are
capped in length, so no input can stall a GRPO rollout on any thread.
"""

from __future__ import annotations

import logging
import re
import threading
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache

import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

log = logging.getLogger(__name__)


class _KnownNoTimeout(logging.Filter):
    """math_verify warns once that its timeout is off; here that is deliberate (see module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_KnownNoTimeout())

_CONFIGS = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_TIMEOUT_S = 2  # signal.alarm granularity is 1 s; only used on the main thread
_MAX_SNIPPET = 200  # characters handed to sympy per answer (bounds parsing time)

_MARKER = re.compile(
    r"####|\\boxed\s*\{|\bfinal\s+answer\b(?:\s+is\b)?\s*[:=]?|\b(?:the\s+)?answer\s+is\b\s*:?|\banswer\s*:",
    re.IGNORECASE,
)
_RUN_ON = re.compile(r"\n\s*Question\s*:")  # start of a new problem in the plain-text prompt format
_CURRENCY = re.compile(r"\\?\$(?=\s*-?\s*\.?\d)")  # $12, \$12, $ -3 (not $\frac..$ LaTeX)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PERCENT = re.compile(r"(?<=\d)\s*(?:\\?%|percent\b)", re.IGNORECASE)
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")


def _timeout() -> int | None:
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _clean(text: str) -> str:
    text = text.replace("\u2212", "-").replace("\u2013", "-")
    text = _CURRENCY.sub("", text)
    text = _THOUSANDS.sub("", text)
    return _PERCENT.sub("", text)


def _boxed_body(text: str, open_end: int) -> str:
    """The balanced-brace content after ``\\boxed{`` (to the end if never closed)."""
    depth = 1
    for i in range(open_end, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_end:i]
    return text[open_end:]


def _after_marker(text: str, m: re.Match) -> str:
    """The answer snippet a marker introduces (its line, or the next non-empty line)."""
    if m.group(0).startswith("\\boxed"):
        return "\\boxed{" + _boxed_body(text, m.end()) + "}"
    rest = text[m.end():].replace("**", "")  # markdown bold around the answer
    lines = [ln for ln in rest.split("\n") if ln.strip()]
    if not lines:
        return ""
    line = lines[0] if any(c.isdigit() for c in lines[0]) or len(lines) == 1 else lines[1]
    return "Answer: " + line.strip().rstrip(".")  # "1/2." must stay the fraction 1/2, not 1/2.0


def _parse(snippet: str) -> list:
    parsed = parse(snippet[:_MAX_SNIPPET], list(_CONFIGS), parsing_timeout=_timeout())
    return [v for v in parsed if not (isinstance(v, sympy.Basic) and _too_big(v))]


def _too_big(expr: sympy.Basic) -> bool:
    """Whether evaluating ``expr`` could stall sympy (power towers, huge powers or factorials)."""
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Pow):
            exp = node.exp
            if not isinstance(exp, sympy.Number) or abs(exp) > 1000:
                return True
        elif isinstance(node, sympy.factorial):
            arg = node.args[0]
            if not isinstance(arg, sympy.Number) or abs(arg) > 1000:
                return True
    return False


def _numeric(parsed: list) -> sympy.Basic | None:
    """The first parsed value that is a plain, safely evaluable number."""
    for value in parsed:
        if isinstance(value, sympy.Basic) and not _too_big(value) and value.is_number:
            return value
    return None


def _extract_parsed(text: str) -> list:
    """math_verify's parse of the final answer (empty when there is none)."""
    if not text or not isinstance(text, str):
        return []
    run_on = _RUN_ON.search(text, 1)
    text = _clean(text[: run_on.start()] if run_on else text)
    for m in reversed(list(_MARKER.finditer(text))):
        snippet = _after_marker(text, m)
        if snippet and any(c.isdigit() for c in snippet):
            parsed = _parse(snippet)
            if _numeric(parsed) is not None:
                return parsed
    lines = [ln for ln in text.split("\n") if any(c.isdigit() for c in ln)]
    if not lines:
        return []
    parsed = _parse(lines[-1][-_MAX_SNIPPET:])
    return parsed if _numeric(parsed) is not None else []


def canonical_number(value: sympy.Basic) -> str:
    """A number as text: ``72``, ``-12.5``, ``3/4`` (floats keep decimals, rationals stay exact)."""
    value = sympy.sympify(value).doit()
    if isinstance(value, sympy.Float):
        d = Decimal(str(value)).normalize()
        return format(d, "f") if d != 0 else "0"
    if isinstance(value, sympy.Rational):
        return str(value.p) if value.q == 1 else f"{value.p}/{value.q}"
    return str(value)


def final_marker_text(text: str) -> str | None:
    """The raw text after the last ``####`` / ``The answer is`` / ``Final Answer`` marker, or None.

    Used by data preparation to read a reference out of a worked solution (GSM8K, MetaMathQA); the
    result is then checked with :func:`normalize_reference`.
    """
    matches = [m for m in _MARKER.finditer(text or "") if not m.group(0).startswith("\\boxed")]
    if not matches:
        return None
    rest = text[matches[-1].end():].strip()
    return rest.split("\n")[0].strip() or None


def extract_answer(text: str) -> str | None:
    """The completion's final answer as canonical text (``"1000"``, ``"0.5"``, ``"3/4"``), or None."""
    value = _numeric(_extract_parsed(text))
    return canonical_number(value) if value is not None else None


@lru_cache(maxsize=65536)
def normalize_reference(ref: str) -> str:
    """Canonical text of a numeric reference answer; ``ValueError`` when it is not one number.

    Accepts ``72``, ``-3``, ``12.50``, ``1,000``, ``$4``, ``50%``, ``3/4``, ``\\frac{3}{4}`` (plus a
    trailing period); rejects empty strings, words, several numbers and division by zero.
    """
    raw = "" if ref is None else str(ref)
    text = _clean(raw.strip()).strip().rstrip(".").strip("$").replace(" ", "")  # "$\\frac{1}{2}$" is LaTeX math
    if not text:
        raise ValueError(f"reference answer {raw!r} is empty; expected one number such as 42")
    if _PLAIN_NUMBER.fullmatch(text):
        num, _, den = text.partition("/")
        if den and int(den) == 0:
            raise ValueError(f"reference answer {raw!r} divides by zero")
        try:
            if den:
                return canonical_number(sympy.Rational(Fraction(num) / int(den)))
            if "." in num:
                d = Decimal(num).normalize()
                return format(d, "f") if d != 0 else "0"
            return str(int(num))
        except (InvalidOperation, ValueError, ZeroDivisionError) as e:
            raise ValueError(f"reference answer {raw!r} is not a number ({e})") from e
    if text.lstrip("-").startswith("\\"):  # LaTeX such as \frac{3}{4}; must be a plain rational
        value = _numeric(_parse("\\boxed{" + text + "}"))
        if value is not None and value.doit().is_rational:
            return canonical_number(value)
    raise ValueError(f"reference answer {raw!r} is not a single number "
                     "(expected e.g. 42, -3.5, 1/2 or \\frac{1}{2})")


@lru_cache(maxsize=65536)
def _gold(reference: str) -> tuple:
    return tuple(_parse(normalize_reference(reference)))


def is_correct(completion: str, reference: str) -> bool:
    """Whether the completion's final answer equals the numeric reference (never raises on the completion)."""
    pred = _extract_parsed(completion)
    if not pred:
        return False
    gold = list(_gold(str(reference)))
    return bool(verify(gold, pred, timeout_seconds=_timeout()))
