"""The one answer checker, shared by the evaluator and the GRPO reward: it credits a *stated value*.

An RL policy optimises the grader it is given, so this grader pays for a value the completion states
and for nothing it could compute on the completion's behalf (the study's GRPO once learned to answer
``Calculate 26 * 96.`` with ``Final Answer: 26 * 96`` while an evaluating grader paid for it).

**Where the final answer is.** Normalise ``$12`` -> ``12``, ``1,000`` -> ``1000``, ``50%`` -> ``50``,
unicode minus -> ``-``; cut a run-on at a new ``Question:`` block (models continue the plain-text
prompt). The final answer is the text after the *last* final-answer marker (``Final Answer:``,
``####``, ``The answer is``, ``Answer:``, ``\\boxed{...}``) that has a digit after it: its line, to
the end of its first sentence. With no such marker, in a completion that finished, the last
sentence holding a digit on the last line holding one (only a stated number there counts, never an
expression; a completion cut at the budget gets no such reading, below). If the answer holds ``=`` (or ``\\approx``), only what follows the last
one counts: ``26 * 96 = 2496`` states 2496; ``= -(-23 - -65 / 65) = ...`` states nothing.

**A completion cut mid-expression states nothing.** When the completion's last line ends in an
operator (``+ - * / ^ =``, ``\\times`` ...) or an open bracket or brace (``(``, ``\\boxed{``,
``\\(``), no earlier line speaks for it: ``... Subtract the result from 0: 16 -`` and
``Therefore, the final answer is \\(\\boxed{`` are credited nothing, whatever an earlier line held
(form ``unfinished``); so is an answer that itself ends so (``Final Answer: 16 -``, or ``16 + ...``:
an ellipsis or a period after the operator changes nothing).

**A completion that stopped at the token budget** (``truncated``: it never emitted its stop token)
is credited only from a complete final-answer marker: its *last* marker, holding a digit, with the
box closed (``\\boxed{16}``) or the marker's line or sentence ended before the cut
(``Final Answer: 16`` then a new line); a cut ``Final Answer: 1`` may have been ``16``. Without
one it states nothing: the last-line reading above is for completions that finished. The
evaluator passes each record's ``truncated``; the GRPO reward reads it from the sampled ids (no
stop token at the end), so the two still share this one function.

**What counts as a value** (the last number of that text, wrappers stripped):

- an integer or decimal with a sign: ``72``, ``-5``, ``3.75``, ``(-5)``, ``.5``;
- a simple fraction in lowest terms: ``3/4``, ``-1/2``, ``\\frac{3}{4}``, ``\\dfrac{1}{2}``;
- tolerated around it: ``\\boxed{}``, ``$...$``, ``\\(...\\)``, ``\\text{}``, markdown ``**``,
  currency (``$12.50``), thousands separators, ``%``, units and words (``12 apples``, ``5 cm^2``),
  a trailing period;
- for symbolic answers, a closed form math_verify parses to a real number, with no operator between
  two plain numbers: ``2\\sqrt{3}``, ``\\pi/2``, ``3\\sqrt{2}/2``.

**What does not:** a number that is an operand of arithmetic left undone -- ``+ - * / x × · ÷ ^``,
``\\times \\cdot \\div``, the words ``plus minus times``, Python's ``**`` and ``%``, ``mod``, a
factorial ``!``, a binomial ``\\binom{5}{2}`` or ``{5 \\choose 2}`` -- whatever it evaluates to:
``26 * 96``, ``-87 + 59 - 82``, ``6 + (-5 * 6)``, ``2^10``, ``2**3``, ``$5!$`` (not 5, nor 120),
``5! + 1``, ``\\frac{26}{1} \\times 3``, ``2496 (26 * 96)``; a number beside an operator with a
variable across it (``5 + x``, ``\\frac{x}{5}``, ``2^n``); an unreduced fraction (``84/7``, ``6/8``: a
division left undone); a number in a notation this grader does not read -- scientific ``1e3``
(math_verify reads ``1 e 3``, Euler's e: neither 3 nor 1000) or imaginary ``2i``, ``3 + 4i``,
``\\sqrt{-4}`` (no real value); an answer with no number after its last ``=``.

**Prose is not math:** ``!`` is a factorial only where arithmetic goes on after it (``5! + 1``,
``5! = 120``) or inside a math span (``$5!$``, ``\\boxed{5!}``); elsewhere it is an exclamation mark
(``Final Answer: 5!``, ``The answer is 7!``, ``$7$!`` state 5 and 7). The article ``a``/``A`` and the
pronoun ``I`` are never variables (``So we get a -3.`` states -3, ``42 - I'm sure`` states 42), nor is
a letter before a word (``12 - a dozen``); a spaced ``i``/``j`` is prose (``4 i think``, ``7 j`` state
4 and 7), only a glued ``2i`` or a braced ``2\\mathrm{i}`` is the imaginary unit.

The rules carry a version, :data:`atlas_lib.core.versions.GRADER_VERSION` (bump it with any change
here or in ``answer_text``), hashed into every stage's parameters.

The value is then compared with the reference by ``math_verify.verify`` (numeric tolerance: ``0.5``
equals ``1/2``), both sides parsed the same way.

Parsing is math-verify's, guarded so that no input can stall a GRPO rollout on any thread
(:mod:`atlas_lib.data.answer_math`); locating the answer and reading its form is
:mod:`atlas_lib.data.answer_text`.

:func:`answer_form` and :func:`restates_question` describe an answer's form for the report's audit,
which reads the completions independently of this grader's verdict.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache

import sympy
from math_verify import verify

from atlas_lib.data.answer_math import canonical_number, first_number, parse_math, timeout
from atlas_lib.data.answer_text import (
    after_equals,
    clean,
    read_answer,
    tokens,
)

_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")


def extract_answer(text: str, truncated: bool = False) -> str | None:
    """The completion's stated final value as canonical text (``"1000"``, ``"0.5"``, ``"3/4"``), or None;
    ``truncated``: it stopped at the token budget (module doc)."""
    if not text or not isinstance(text, str):
        return None
    return read_answer(text, bool(truncated)).canonical


@lru_cache(maxsize=65536)
def normalize_reference(ref: str) -> str:
    """Canonical text of a numeric reference answer; ``ValueError`` when it is not one number.

    Accepts ``72``, ``-3``, ``12.50``, ``1,000``, ``$4``, ``50%``, ``3/4``, ``\\frac{3}{4}`` (plus a
    trailing period); rejects empty strings, words, several numbers and division by zero.
    """
    raw = "" if ref is None else str(ref)
    text = clean(raw.strip()).strip().rstrip(".").strip("$").replace(" ", "")  # "$\\frac{1}{2}$" is LaTeX math
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
        value = first_number(parse_math("\\boxed{" + text + "}"))
        if value is not None and value.doit().is_rational:
            return canonical_number(value)
    raise ValueError(f"reference answer {raw!r} is not a single number "
                     "(expected e.g. 42, -3.5, 1/2 or \\frac{1}{2})")


@lru_cache(maxsize=65536)
def _gold(reference: str) -> tuple:
    return tuple(parse_math(normalize_reference(reference)))


def is_correct(completion: str, reference: str, truncated: bool = False) -> bool:
    """Whether the completion *states* a final value equal to the numeric reference (module doc);
    ``truncated``: it stopped at the token budget, so only a complete final-answer marker counts.
    Never raises on the completion."""
    if not completion or not isinstance(completion, str):
        return False
    stated = read_answer(completion, bool(truncated)).canonical
    if stated is None:
        return False
    pred = parse_math(stated)
    if not pred:
        return False
    gold = list(_gold(str(reference)))
    return bool(verify(gold, pred, timeout_seconds=timeout()))


# -- the answer-form audit (read by the report, independent of is_correct's verdict) ---------------
_QUESTION_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def answer_form(completion: str, truncated: bool = False) -> str:
    """``value``, ``closed_form``, ``expression`` (arithmetic left undone), ``unfinished`` (cut
    mid-expression) or ``none``."""
    if not completion or not isinstance(completion, str):
        return "none"
    return read_answer(completion, bool(truncated)).form


def restates_question(completion: str, question: str) -> bool:
    """Whether the final answer is arithmetic left undone on the question's own numbers
    (``Calculate 26 * 96.`` -> ``26 * 96``; ``( 8 / 1 ) * 3`` -> ``8 * 3``): every number in the
    answer's undone arithmetic occurs in the question."""
    if not completion or not isinstance(completion, str):
        return False
    ans = read_answer(completion)
    if ans.form != "expression":
        return False
    region = after_equals(ans.text)
    toks = tokens(region if any(c.isdigit() for c in region) else ans.text)
    asked = {Fraction(Decimal(n)) for n in _QUESTION_NUMBER.findall(clean(question or ""))}
    used = {t.value for t in toks if t.kind == "num"}
    return bool(used) and used <= asked
