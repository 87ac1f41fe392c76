"""The one answer checker, shared by the evaluator and the GRPO reward: it credits a *stated value*.

An RL policy optimises the grader it is given, so this grader pays for a value the completion states
and for nothing it could compute on the completion's behalf (the study's GRPO once learned to answer
``Calculate 26 * 96.`` with ``Final Answer: 26 * 96`` while an evaluating grader paid for it).

**Where the final answer is.** Normalise ``$12`` -> ``12``, ``1,000`` -> ``1000``, ``50%`` -> ``50``,
unicode minus -> ``-``; cut a run-on at a new ``Question:`` block (models continue the plain-text
prompt). The final answer is the text after the *last* final-answer marker (``Final Answer:``,
``####``, ``The answer is``, ``Answer:``, ``\\boxed{...}``) that has a digit after it: its line, to
the end of its first sentence. With no such marker, the last sentence holding a digit on the last
line holding one (a completion cut at the budget usually has no marker: only a stated number there
counts, never an expression). If the answer holds ``=`` (or ``\\approx``), only what follows the last
one counts: ``26 * 96 = 2496`` states 2496; ``= -(-23 - -65 / 65) = ...`` states nothing.

**What counts as a value** (the last number of that text, wrappers stripped):

- an integer or decimal with a sign: ``72``, ``-5``, ``3.75``, ``(-5)``, ``.5``;
- a simple fraction in lowest terms: ``3/4``, ``-1/2``, ``\\frac{3}{4}``, ``\\dfrac{1}{2}``;
- tolerated around it: ``\\boxed{}``, ``$...$``, ``\\(...\\)``, ``\\text{}``, markdown ``**``,
  currency (``$12.50``), thousands separators, ``%``, units and words (``12 apples``, ``5 cm^2``),
  a trailing period;
- for symbolic answers, a closed form math_verify parses to a number, with no operator between two
  plain numbers: ``2\\sqrt{3}``, ``\\pi/2``, ``3\\sqrt{2}/2``.

**What does not:** a number that is an operand of arithmetic left undone -- ``+ - * / x × · ÷ ^``,
``\\times \\cdot \\div``, the words ``plus minus times`` -- whatever it evaluates to: ``26 * 96``,
``-87 + 59 - 82``, ``6 + (-5 * 6)``, ``2^10``, ``\\frac{26}{1} \\times 3``, ``2496 (26 * 96)``; an
unreduced fraction (``84/7``, ``6/8``: a division left undone); an answer with no number after its
last ``=``.

The value is then compared with the reference by ``math_verify.verify`` (numeric tolerance: ``0.5``
equals ``1/2``), both sides parsed the same way.

math_verify guards each call with ``signal.alarm``, which only works on the main thread; we pass its
timeout only there (``parsing_timeout``/``timeout_seconds`` = None elsewhere, e.g. in a reward worker
thread). What could hang without it -- power towers such as ``9^9^9`` or huge factorials that sympy
would try to evaluate -- is rejected by :func:`_too_big` before any comparison, and snippets are
capped in length, so no input can stall a GRPO rollout on any thread.

:func:`answer_form` and :func:`restates_question` describe an answer's form for the report's audit,
which reads the completions independently of this grader's verdict.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass
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
_LATEX_ONLY = (LatexExtractionConfig(boxed_match_priority=0),)
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
_SENTENCE_END = re.compile(r"\.(?=\s+[A-Z(])|\n")
_EQUALS = re.compile(r"=|\\approx|≈|\\simeq")
# Wrappers around a value: dropped before reading it (their content stays)
_WRAPPERS = re.compile(r"\\(?:boxed|text|textbf|mathrm|mathbf|operatorname|displaystyle|left|right)"
                       r"|\\[,;:! ]|\$|\\\(|\\\)|\\\[|\\\]|\*\*|~")
# A unit with an exponent (``cm^2``, ``m²``): the exponent is not the answer
_UNIT_POWER = re.compile(r"(?<=[A-Za-z])\s*(?:\^\s*\{?\s*\d+\s*\}?|[²³])")
_TOKEN = re.compile(
    r"(?P<frac>\\[dt]?frac\s*\{(?P<fn>[^{}]*)\}\s*\{(?P<fd>[^{}]*)\})"
    r"|(?P<num>\d+(?:\.\d+)?|\.\d+)"
    r"|(?P<sym>\\sqrt|\\pi|π|√|\\ln|\\log|\\exp|\\sin|\\cos|\\tan|\\infty|\\e\b)"
    r"|(?P<op>\\times|\\cdot|\\div|\\ast|[+\-*/×÷^·]|(?<![A-Za-z])[xX](?![A-Za-z])"
    r"|\b(?:plus|minus|times|multiplied\s+by|divided\s+by)\b|(?<=\s)\.(?=\s))"
    r"|(?P<lp>[(\[{])|(?P<rp>[)\]}])"
    r"|(?P<word>\\?[A-Za-z]+)"
    r"|(?P<other>\S)"
)
_OPERAND = ("num", "frac", "sym")


@dataclass(frozen=True)
class _Tok:
    kind: str  # num, frac, sym, op, lp, rp, word, other
    text: str
    value: Fraction | None = None  # num and frac: the exact value


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


def _first_sentence(line: str) -> str:
    m = _SENTENCE_END.search(line)
    return line[: m.start()] if m else line


def _after_marker(text: str, m: re.Match) -> str:
    """The answer a marker introduces: a box's content, else the marker's line (or the next
    non-empty line) up to the end of its first sentence."""
    if m.group(0).startswith("\\boxed"):
        return _boxed_body(text, m.end())
    rest = text[m.end():].replace("**", "")  # markdown bold around the answer
    lines = [ln for ln in rest.split("\n") if ln.strip()]
    if not lines:
        return ""
    line = lines[0] if any(c.isdigit() for c in lines[0]) or len(lines) == 1 else lines[1]
    return _first_sentence(line.strip())


def final_answer_text(text: str) -> str | None:
    """The text that holds the completion's final answer (see the module doc), or None."""
    if not text or not isinstance(text, str):
        return None
    run_on = _RUN_ON.search(text, 1)
    text = _clean(text[: run_on.start()] if run_on else text)
    for m in reversed(list(_MARKER.finditer(text))):
        snippet = _after_marker(text, m)
        if any(c.isdigit() for c in snippet):
            return snippet[:_MAX_SNIPPET]
    lines = [ln for ln in text.split("\n") if any(c.isdigit() for c in ln)]
    if not lines:
        return None
    sentences = [s for s in _SENTENCE_END.split(lines[-1]) if any(c.isdigit() for c in s)]
    return sentences[-1].strip()[-_MAX_SNIPPET:] if sentences else None


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    return int(text) if re.fullmatch(r"\d+", text) else None


def _tokens(text: str) -> list[_Tok]:
    """The answer as tokens; ``\\frac{a}{b}`` of integers in lowest terms is one value, any other
    ``\\frac`` becomes ``(a) / (b)`` so the operator checks see the division."""
    text = _UNIT_POWER.sub("", _WRAPPERS.sub(" ", text))
    out: list[_Tok] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if m.group("frac") is not None:
            num, den = _int_or_none(m.group("fn")), _int_or_none(m.group("fd"))
            if num is not None and den is not None and den > 1 and math.gcd(num, den) == 1:
                out.append(_Tok("frac", m.group(0), Fraction(num, den)))
            else:
                out += [_Tok("lp", "("), *_tokens(m.group("fn")), _Tok("rp", ")"), _Tok("op", "/"),
                        _Tok("lp", "("), *_tokens(m.group("fd")), _Tok("rp", ")")]
        elif kind == "num":
            out.append(_Tok("num", m.group(0), Fraction(Decimal(m.group(0)))))
        else:
            out.append(_Tok(kind, m.group(0)))
    return out


def _is_binary(toks: list[_Tok], i: int) -> bool:
    """Whether the operator at ``i`` joins two things (a ``+``/``-`` after nothing, a bracket, a word
    or another operator is a sign)."""
    if toks[i].text not in "+-":
        return True
    return i > 0 and toks[i - 1].kind in ("num", "frac", "sym", "rp")


def _match(toks: list[_Tok], i: int, step: int) -> int:
    """The index of the bracket matching the one at ``i`` (``step`` -1: a closing one, +1: opening)."""
    depth = 0
    for j in range(i, len(toks) if step > 0 else -1, step):
        depth += {"lp": 1, "rp": -1}.get(toks[j].kind, 0) * step
        if depth == 0:
            return j
    return -1 if step < 0 else len(toks)


def _group_kind(toks: list[_Tok]) -> str | None:
    kinds = {t.kind for t in toks}
    return "sym" if "sym" in kinds else "num" if kinds & {"num", "frac"} else None


def _operand(toks: list[_Tok], i: int, step: int) -> str | None:
    """What stands beside the operator at ``i`` (``step`` -1: left, +1: right): "num" for plain
    numbers (or a bracket of them), "sym" for a closed form, else None."""
    j = i + step
    if step > 0:
        while j < len(toks) and toks[j].kind == "op" and toks[j].text in "+-":
            j += 1  # a sign
    if not 0 <= j < len(toks):
        return None
    t = toks[j]
    if t.kind == "num" or t.kind == "frac":
        return "num"
    if t.kind == "sym":
        return "sym"
    if (t.kind == "rp" and step < 0) or (t.kind == "lp" and step > 0):
        k = _match(toks, j, step)
        lo, hi = sorted((j, k))
        if step < 0 and k > 0 and toks[k - 1].kind == "sym":
            return "sym"  # \sqrt{3}
        return _group_kind(toks[max(lo, 0) + 1: hi])
    return None


def _undone_ops(toks: list[_Tok]) -> list[int]:
    """Indices of operators with a plain number on each side: arithmetic left for the reader."""
    return [i for i, t in enumerate(toks) if t.kind == "op" and _is_binary(toks, i)
            and _operand(toks, i, -1) == "num" and _operand(toks, i, +1) == "num"]


def _after_equals(text: str) -> str:
    parts = _EQUALS.split(text)
    return parts[-1]


def _numeric_value(toks: list[_Tok]) -> tuple[str, Fraction] | None:
    """The last number of a symbol-free answer with its sign, when no arithmetic touches it."""
    idx = [i for i, t in enumerate(toks) if t.kind in ("num", "frac")]
    if not idx:
        return None
    hi = lo = idx[-1]
    value = toks[hi].value
    text = toks[hi].text
    # a/b of integers is one value when in lowest terms; otherwise it is a division left undone
    if (lo >= 2 and toks[lo - 1].text == "/" and toks[lo - 2].kind == "num"
            and _int_or_none(toks[lo - 2].text) is not None and _int_or_none(text) is not None):
        lo -= 2
        a, b = int(toks[lo].text), int(text)
        if b <= 1 or math.gcd(a, b) != 1:
            return None
        value, text = Fraction(a, b), f"{a}/{b}"
    if _touches_op(toks, lo, hi):
        return None
    j = lo - 1
    while j >= 0 and toks[j].kind == "lp":
        j -= 1
    if j >= 0 and toks[j].text == "-" and not _is_binary(toks, j):
        value = -value
    if value.denominator == 1 or toks[hi].kind == "num" and "/" not in text:
        d = Decimal(value.numerator) / Decimal(value.denominator) if "." in text else Decimal(value.numerator)
        d = d.normalize()
        return format(d, "f") if d != 0 else "0", value
    return f"{value.numerator}/{value.denominator}", value


def _touches_op(toks: list[_Tok], lo: int, hi: int) -> bool:
    """Whether a binary operator sits right beside the value (brackets and a sign skipped) with
    anything to operate on across it."""
    j = lo - 1
    while j >= 0 and toks[j].kind == "lp":
        j -= 1
    if j >= 0 and toks[j].kind == "op" and not _is_binary(toks, j):
        j -= 1  # the value's own sign
        while j >= 0 and toks[j].kind == "lp":
            j -= 1
    if j >= 0 and toks[j].kind == "op" and _is_binary(toks, j) and _operand(toks, j, -1) is not None:
        return True
    k = hi + 1
    while k < len(toks) and toks[k].kind == "rp":
        k += 1
    return k < len(toks) and toks[k].kind == "op" and _operand(toks, k, +1) is not None


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


@dataclass(frozen=True)
class Answer:
    """A completion's final answer as this grader reads it."""

    text: str | None  # the located answer text (None: no final answer with a digit)
    form: str  # "value" (a plain number), "closed_form", "expression" (arithmetic left undone), "none"
    canonical: str | None  # the stated value as text ("72", "-12.5", "3/4"); None unless a value


@lru_cache(maxsize=65536)
def read_answer(completion: str) -> Answer:
    """Locate the final answer and decide whether it states a value (module doc)."""
    text = final_answer_text(completion)
    if text is None:
        return Answer(None, "none", None)
    region = _after_equals(text)
    if not any(c.isdigit() for c in region):
        return Answer(text, "expression" if _EQUALS.search(text) else "none", None)
    toks = _tokens(region)
    if any(t.kind == "sym" for t in toks):
        if _undone_ops(toks):
            return Answer(text, "expression", None)
        value = _numeric(_parse("$" + _WRAPPERS.sub(" ", region).strip() + "$"))
        if value is None:
            return Answer(text, "none", None)
        return Answer(text, "closed_form", canonical_number(value))
    got = _numeric_value(toks)
    if got is None:
        return Answer(text, "expression" if _undone_ops(toks) or any(t.kind == "op" for t in toks) else "none",
                      None)
    return Answer(text, "value", got[0])


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
    """The completion's stated final value as canonical text (``"1000"``, ``"0.5"``, ``"3/4"``), or None."""
    if not text or not isinstance(text, str):
        return None
    return read_answer(text).canonical


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
    """Whether the completion *states* a final value equal to the numeric reference (module doc);
    never raises on the completion."""
    if not completion or not isinstance(completion, str):
        return False
    stated = read_answer(completion).canonical
    if stated is None:
        return False
    pred = _parse(stated)
    if not pred:
        return False
    gold = list(_gold(str(reference)))
    return bool(verify(gold, pred, timeout_seconds=_timeout()))


# -- the answer-form audit (read by the report, independent of is_correct's verdict) ---------------
_QUESTION_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def answer_form(completion: str) -> str:
    """``value``, ``closed_form``, ``expression`` (arithmetic left undone) or ``none``."""
    if not completion or not isinstance(completion, str):
        return "none"
    return read_answer(completion).form


def restates_question(completion: str, question: str) -> bool:
    """Whether the final answer is arithmetic left undone on the question's own numbers
    (``Calculate 26 * 96.`` -> ``26 * 96``; ``( 8 / 1 ) * 3`` -> ``8 * 3``): every number in the
    answer's undone arithmetic occurs in the question."""
    if not completion or not isinstance(completion, str):
        return False
    ans = read_answer(completion)
    if ans.form != "expression":
        return False
    region = _after_equals(ans.text)
    toks = _tokens(region if any(c.isdigit() for c in region) else ans.text)
    asked = {Fraction(Decimal(n)) for n in _QUESTION_NUMBER.findall(_clean(question or ""))}
    used = {t.value for t in toks if t.kind == "num"}
    return bool(used) and used <= asked
