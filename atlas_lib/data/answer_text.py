"""Reading a completion's final answer: where it is, and whether it states a value.

The rules (which forms count, which do not) are the grader's and are stated in
:mod:`atlas_lib.data.answers`, the one home of the grader; this module holds the reading they rest
on -- the final-answer markers, the tokens of the answer text, which numbers are operands of
arithmetic left undone -- and the answer-form helpers the report's audit uses
(:func:`answer_form`, :func:`restates_question`), which read completions apart from the verdict.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache

from atlas_lib.data.answer_math import MAX_SNIPPET, canonical_number, first_number, parse_math

log = logging.getLogger(__name__)


MARKER = re.compile(
    r"####|\\boxed\s*\{|\bfinal\s+answer\b(?:\s+is\b)?\s*[:=]?|\b(?:the\s+)?answer\s+is\b\s*:?|\banswer\s*:",
    re.IGNORECASE,
)
_RUN_ON = re.compile(r"\n\s*Question\s*:")  # start of a new problem in the plain-text prompt format
_CURRENCY = re.compile(r"\\?\$(?=\s*-?\s*\.?\d)")  # $12, \$12, $ -3 (not $\frac..$ LaTeX)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PERCENT = re.compile(r"(?<=\d)\s*(?:\\?%|percent\b)(?!\s*\d)", re.IGNORECASE)  # ``10 % 3`` is modulo
# ``!`` after a number is a factorial only where arithmetic goes on after it (``5! = 120``, ``5! + 1``,
# ``5!2``, ``(3!)^2``) or inside a math span (``$5!$``, ``\(5!\)``, ``\boxed{5!}``); anywhere else it
# is an exclamation mark (``Final Answer: 7!``, ``$7$!``, ``14! That is it.``, ``7 !!``, ``**7!**``),
# dropped before the answer is read: read as a factorial, it refused answers the grader credited before
_ARITHMETIC_ON = r"\s*(?:[-\u2212\u2013+/×÷^·%=<>\d]|\*(?!\*)|\\(?:times|cdot|div|ast|choose|[bp]?mod)\b)"  # ``**``: bold
_EXCLAMATION = re.compile(
    r"(?<=[\d)\]}$])\s*!+(?!!)(?!" + _ARITHMETIC_ON + r"|\$|\\[)\]]|\}|[)\]]+" + _ARITHMETIC_ON + ")")
# Python's power ``2**3`` or ``2 ** 3`` (read as ``2^3``), told from markdown bold (``**16** (**3**``) by a
# number or bracket on each side, glued on both or spaced on both (bold is glued on one side only)
_PY_POWER = re.compile(r"(?<=[\d)\]}])(?:\*\*(?=[-+\d(\[{])|\s+\*\*(?=\s+[-+\d(\[{]))")
_SENTENCE_END = re.compile(r"\.(?=\s+[A-Z(])|\n")
EQUALS = re.compile(r"=|\\approx|≈|\\simeq")
# Wrappers around a value: dropped before reading it (their content stays)
_WRAPPERS = re.compile(r"\\(?:boxed|text|textbf|mathrm|mathbf|operatorname|displaystyle|left|right)"
                       r"|\\[,;:! ]|\$|\\\(|\\\)|\\\[|\\\]|\*\*|~")
# A unit with an exponent (``cm^2``, ``m²``): the exponent is not the answer
_UNIT_POWER = re.compile(r"(?<=[A-Za-z])\s*(?:\^\s*\{?\s*\d+\s*\}?|[²³])")
_TOKEN = re.compile(
    r"(?P<frac>\\(?P<fop>[dt]?frac|[dt]?binom)\s*\{(?P<fn>[^{}]*)\}\s*\{(?P<fd>[^{}]*)\})"
    # a number in a notation this grader does not read as that number: scientific (``1e3``: math_verify
    # reads ``1 e 3``, Euler's e) or imaginary (``2i``, ``4j``, ``2\mathrm{i}``); an operand all the same
    # (a spaced bare ``4 i think``, ``7 j`` is prose: only the glued ``2i`` or a braced ``2 {i}`` is the unit)
    r"|(?P<unread>(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+|[ij](?![A-Za-z]|\.[A-Za-z])|\s?\{[ij]\}))"
    r"|(?P<num>\d+(?:\.\d+)?|\.\d+)"
    r"|(?P<sym>\\sqrt|\\pi|π|√|\\ln|\\log|\\exp|\\sin|\\cos|\\tan|\\infty|\\e\b)"
    r"|(?P<op>\\times|\\cdot|\\div|\\ast|\\choose|\\[bp]?mod|\\%|[+\-*/×÷^·%]|(?<![A-Za-z])[xX](?![A-Za-z])"
    r"|\b(?:plus|minus|times|multiplied\s+by|divided\s+by|mod)\b|(?<=\s)\.(?=\s)"
    r"|(?<=[\d)\]}])\s*!(?!=))"  # ``5!``: a factorial, postfix (an exclamation mark is gone: _EXCLAMATION)
    r"|(?P<lp>[(\[{])|(?P<rp>[)\]}])"
    r"|(?P<word>\\?[A-Za-z]+)"
    r"|(?P<other>\S)"
)
_OPERAND = ("num", "frac", "sym")
# The end of text cut mid-expression: an operator, ``=`` or an opening bracket or brace (``16 -``,
# ``\boxed{``, ``= (``), once closing wrappers (``**``, ``$``, ``\)``) at the very end are set aside
_DANGLING = re.compile(r"(?:[+\-*/×÷^·=≈]|\\(?:times|cdot|div|ast|approx|frac|dfrac|sqrt|boxed)|[(\[{]|\\\(|\\\[)$")
_TRAILING_WRAPPERS = re.compile(r"(?:\*\*|\$|\\\)|\\\]|\\[lc]?dots|\.|\s)+$")  # ``16 + ...`` is cut too
_RULE_LINE = re.compile(r"\s*(?:[-*_=]\s*){3,}")  # a markdown horizontal rule (``---``): no expression


@dataclass(frozen=True)
class _Tok:
    kind: str  # num, frac, sym, op, lp, rp, word, other
    text: str
    value: Fraction | None = None  # num and frac: the exact value


def clean(text: str) -> str:
    text = text.replace("\u2212", "-").replace("\u2013", "-")
    text = _PY_POWER.sub("^", _CURRENCY.sub("", text))
    text = _THOUSANDS.sub("", text)
    return _PERCENT.sub("", text)


def _boxed_body(text: str, open_end: int) -> tuple[str, bool]:
    """The balanced-brace content after ``\\boxed{`` (to the end if never closed), and whether it closed."""
    depth = 1
    for i in range(open_end, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_end:i], True
    return text[open_end:], False


def dangling(text: str) -> bool:
    """Whether ``text`` stops mid-expression: it ends in an operator, ``=`` or an open bracket or brace
    (``... from 0: 16 -``, ``the final answer is \\(\\boxed{``)."""
    return bool(_DANGLING.search(_TRAILING_WRAPPERS.sub("", text or "")))


def last_line(text: str) -> str:
    """The last non-empty line, markdown rules (``---``) aside."""
    lines = [ln for ln in text.split("\n") if ln.strip() and not _RULE_LINE.fullmatch(ln)]
    return lines[-1] if lines else ""


def _first_sentence(line: str) -> str:
    m = _SENTENCE_END.search(line)
    return line[: m.start()] if m else line


def _after_marker(text: str, m: re.Match) -> tuple[str, bool]:
    """The answer a marker introduces -- a box's content, else the marker's line (or the next
    non-empty line) up to the end of its first sentence -- and whether it is complete: the box
    closed, the line or sentence ended before the text did (a cut ``Final Answer: 1`` may have
    been ``16``)."""
    if m.group(0).startswith("\\boxed"):
        return _boxed_body(text, m.end())
    parts = text[m.end():].replace("**", "").split("\n")  # markdown bold around the answer
    filled = [(i, ln.strip()) for i, ln in enumerate(parts) if ln.strip()]
    if not filled:
        return "", False
    i, line = filled[0] if any(c.isdigit() for c in filled[0][1]) or len(filled) == 1 else filled[1]
    end = _SENTENCE_END.search(line)
    return (line[: end.start()] if end else line), end is not None or i < len(parts) - 1


def locate_answer(text: str, truncated: bool = False) -> tuple[str | None, bool]:
    """(the text that holds the completion's final answer, or None; whether the completion was cut
    mid-expression). See the module doc of :mod:`atlas_lib.data.answers` for the rules."""
    if not text or not isinstance(text, str):
        return None, False
    run_on = _RUN_ON.search(text, 1)
    text = clean(_EXCLAMATION.sub("", text[: run_on.start()] if run_on else text))  # ``5!**2``: a power
    if dangling(last_line(text)):  # cut mid-expression: no earlier line speaks for it
        return None, True
    markers = list(MARKER.finditer(text))
    if truncated:  # cut at the budget: only the last marker, complete, states the answer
        if not markers:
            return None, False
        snippet, complete = _after_marker(text, markers[-1])
        if not complete:
            return None, True
        return (snippet[:MAX_SNIPPET], False) if any(c.isdigit() for c in snippet) else (None, False)
    for m in reversed(markers):
        snippet, _ = _after_marker(text, m)
        if any(c.isdigit() for c in snippet):
            return snippet[:MAX_SNIPPET], False
    lines = [ln for ln in text.split("\n") if any(c.isdigit() for c in ln)]
    if not lines:
        return None, False
    sentences = [s for s in _SENTENCE_END.split(lines[-1]) if any(c.isdigit() for c in s)]
    return (sentences[-1].strip()[-MAX_SNIPPET:] if sentences else None), False


def final_answer_text(text: str, truncated: bool = False) -> str | None:
    """The text that holds the completion's final answer (see the module doc), or None."""
    return locate_answer(text, truncated)[0]


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    return int(text) if re.fullmatch(r"\d+", text) else None


def tokens(text: str) -> list[_Tok]:
    """The answer as tokens; ``\\frac{a}{b}`` of integers in lowest terms is one value, any other
    ``\\frac`` becomes ``(a) / (b)`` so the operator checks see the division (``\\binom{a}{b}``
    likewise ``(a) \\binom (b)``: an operation left undone, never its last argument)."""
    text = _UNIT_POWER.sub("", _WRAPPERS.sub(" ", text))
    out: list[_Tok] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if m.group("frac") is not None:
            num, den = _int_or_none(m.group("fn")), _int_or_none(m.group("fd"))
            op = "/" if m.group("fop").endswith("frac") else "\\binom"
            if op == "/" and num is not None and den is not None and den > 1 and math.gcd(num, den) == 1:
                out.append(_Tok("frac", m.group(0), Fraction(num, den)))
            else:
                out += [_Tok("lp", "("), *tokens(m.group("fn")), _Tok("rp", ")"), _Tok("op", op),
                        _Tok("lp", "("), *tokens(m.group("fd")), _Tok("rp", ")")]
        elif kind == "num":
            out.append(_Tok("num", m.group(0), Fraction(Decimal(m.group(0)))))
        else:
            out.append(_Tok(kind, m.group(0).strip()))  # `` !``: a factorial after a space
    return out


def _is_binary(toks: list[_Tok], i: int) -> bool:
    """Whether the operator at ``i`` joins two things (a ``+``/``-`` after nothing, a bracket, a word
    or another operator is a sign; after a variable or a factorial it is not: ``x + 5``, ``5! - 1``)."""
    if toks[i].text not in "+-":
        return True
    return i > 0 and (toks[i - 1].kind in ("num", "frac", "sym", "unread", "rp") or _variable(toks, i - 1)
                      or _factorial(toks[i - 1]))


def _match(toks: list[_Tok], i: int, step: int) -> int:
    """The index of the bracket matching the one at ``i`` (``step`` -1: a closing one, +1: opening)."""
    depth = 0
    for j in range(i, len(toks) if step > 0 else -1, step):
        depth += {"lp": 1, "rp": -1}.get(toks[j].kind, 0) * step
        if depth == 0:
            return j
    return -1 if step < 0 else len(toks)


def _factorial(t: _Tok) -> bool:
    return t.kind == "op" and t.text == "!"


# The article and the pronoun, never a variable: ``So we get a -3.``, ``a +5``, ``42 - I'm sure``
_PROSE_LETTERS = ("a", "A", "I")


def _variable(toks: list[_Tok], j: int) -> bool:
    """Whether ``toks[j]`` is a single letter standing for a quantity (``5 + x``, ``2 + i``), not an
    article or a pronoun (``a -3``, ``I'm``) nor a letter before a word (``12 - b dozen``, ``4 i think``)."""
    t = toks[j]
    letter = t.kind == "word" and len(t.text) == 1 and t.text not in _PROSE_LETTERS
    if not (letter or (t.kind == "op" and t.text in ("x", "X"))):
        return False
    return j + 1 == len(toks) or toks[j + 1].kind != "word"


def _group_kind(toks: list[_Tok]) -> str | None:
    kinds = {t.kind for t in toks}
    if kinds & {"sym", "unread"}:
        return "sym"
    if kinds & {"num", "frac"}:
        return "num"
    return "var" if any(_variable(toks, j) for j in range(len(toks))) else None


def _operand(toks: list[_Tok], i: int, step: int) -> str | None:
    """What stands beside the operator at ``i`` (``step`` -1: left, +1: right): "num" for plain
    numbers (or a bracket of them), "sym" for a closed form or a number this grader does not read
    (``1e3``, ``2i``), "var" for a variable (``x``), else None."""
    j = i + step
    if step > 0:
        while j < len(toks) and toks[j].kind == "op" and toks[j].text in "+-":
            j += 1  # a sign
    if not 0 <= j < len(toks):
        return None
    t = toks[j]
    if _factorial(t) and step < 0:
        return _operand(toks, j, -1)  # ``5! * 2``: the factorial's operand stands on the left
    if t.kind == "num" or t.kind == "frac":
        return "num"
    if t.kind in ("sym", "unread"):
        return "sym"
    if _variable(toks, j):
        return "var"
    if (t.kind == "rp" and step < 0) or (t.kind == "lp" and step > 0):
        k = _match(toks, j, step)
        lo, hi = sorted((j, k))
        if step < 0 and k > 0 and toks[k - 1].kind == "sym":
            return "sym"  # \sqrt{3}
        return _group_kind(toks[max(lo, 0) + 1: hi])
    return None


def undone_ops(toks: list[_Tok]) -> list[int]:
    """Indices of operators with a plain number on each side (a factorial: on its left): arithmetic
    left for the reader."""
    return [i for i, t in enumerate(toks) if t.kind == "op" and _is_binary(toks, i)
            and _operand(toks, i, -1) == "num" and (t.text == "!" or _operand(toks, i, +1) == "num")]


def after_equals(text: str) -> str:
    parts = EQUALS.split(text)
    return parts[-1]


def _numeric_value(toks: list[_Tok]) -> tuple[str, Fraction] | None:
    """The last number of a symbol-free answer with its sign, when no arithmetic touches it."""
    idx = [i for i, t in enumerate(toks) if t.kind in ("num", "frac", "unread")]
    if not idx or toks[idx[-1]].kind == "unread":  # ``1e3``, ``2i``: not the value its digits spell
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
    return k < len(toks) and toks[k].kind == "op" and (toks[k].text == "!" or _operand(toks, k, +1) is not None)


@dataclass(frozen=True)
class Answer:
    """A completion's final answer as this grader reads it."""

    text: str | None  # the located answer text (None: no final answer with a digit)
    # "value" (a plain number), "closed_form", "expression" (arithmetic left undone), "unfinished"
    # (cut mid-expression: the text, or its answer, ends in an operator or an open bracket), "none"
    form: str
    canonical: str | None  # the stated value as text ("72", "-12.5", "3/4"); None unless a value


@lru_cache(maxsize=65536)
def read_answer(completion: str, truncated: bool = False) -> Answer:
    """Locate the final answer and decide whether it states a value (module doc); ``truncated``: the
    completion stopped at the token budget, not at its stop token."""
    text, cut = locate_answer(completion, truncated)
    if text is None:
        return Answer(None, "unfinished" if cut else "none", None)
    if dangling(text):  # ``Final Answer: 16 -``: the answer itself stops mid-expression
        return Answer(text, "unfinished", None)
    region = after_equals(text)
    if not any(c.isdigit() for c in region):
        return Answer(text, "expression" if EQUALS.search(text) else "none", None)
    toks = tokens(region)
    if any(t.kind == "sym" for t in toks):
        if undone_ops(toks):
            return Answer(text, "expression", None)
        value = first_number(parse_math("$" + _WRAPPERS.sub(" ", region).strip() + "$"))
        if value is None or not value.is_real:  # ``\sqrt{-4}`` is ``2i``: no real value stated
            return Answer(text, "none", None)
        return Answer(text, "closed_form", canonical_number(value))
    got = _numeric_value(toks)
    if got is None:
        return Answer(text, "expression" if undone_ops(toks) or any(t.kind == "op" for t in toks) else "none",
                      None)
    return Answer(text, "value", got[0])


def final_marker_text(text: str) -> str | None:
    """The raw text after the last ``####`` / ``The answer is`` / ``Final Answer`` marker, or None.

    Used by data preparation to read a reference out of a worked solution (GSM8K, MetaMathQA); the
    result is then checked with :func:`normalize_reference`.
    """
    matches = [m for m in MARKER.finditer(text or "") if not m.group(0).startswith("\\boxed")]
    if not matches:
        return None
    rest = text[matches[-1].end():].strip()
    return rest.split("\n")[0].strip() or None
