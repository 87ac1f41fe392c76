"""math-verify, guarded: parsing an answer into a number without letting any input stall the caller.

math_verify guards each call with ``signal.alarm``, which only works on the main thread; we pass its
timeout only there (``parsing_timeout``/``timeout_seconds`` = None elsewhere, e.g. in a reward worker
thread). What could hang without it -- power towers such as ``9^9^9`` or huge factorials that sympy
would try to evaluate -- is rejected by :func:`too_big` before any comparison, and snippets are
capped in length (:data:`MAX_SNIPPET`), so no input can stall a GRPO rollout on any thread.
"""

from __future__ import annotations

import logging
import threading
from decimal import Decimal

import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse


class _KnownNoTimeout(logging.Filter):
    """math_verify warns once that its timeout is off; here that is deliberate (see module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_KnownNoTimeout())

_CONFIGS = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_TIMEOUT_S = 2  # signal.alarm granularity is 1 s; only used on the main thread
MAX_SNIPPET = 200  # characters handed to sympy per answer (bounds parsing time)

def timeout() -> int | None:
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def parse_math(snippet: str) -> list:
    parsed = parse(snippet[:MAX_SNIPPET], list(_CONFIGS), parsing_timeout=timeout())
    return [v for v in parsed if not (isinstance(v, sympy.Basic) and too_big(v))]


def too_big(expr: sympy.Basic) -> bool:
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


def first_number(parsed: list) -> sympy.Basic | None:
    """The first parsed value that is a plain, safely evaluable number."""
    for value in parsed:
        if isinstance(value, sympy.Basic) and not too_big(value) and value.is_number:
            return value
    return None


def canonical_number(value: sympy.Basic) -> str:
    """A number as text: ``72``, ``-12.5``, ``3/4`` (floats keep decimals, rationals stay exact)."""
    value = sympy.sympify(value).doit()
    if isinstance(value, sympy.Float):
        d = Decimal(str(value)).normalize()
        return format(d, "f") if d != 0 else "0"
    if isinstance(value, sympy.Rational):
        return str(value.p) if value.q == 1 else f"{value.p}/{value.q}"
    return str(value)
