"""Math in a page's Markdown (``$...$``, ``$$...$$``) as MathML, built when the page is written:
every browser renders it, and the page loads no script from anywhere."""

from __future__ import annotations

import html
import re

_MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$\w])\$(?=[^\s$])([^$\n]+?)(?<=[^\s$])\$(?![\w$])", re.S)
_NO_MATH = re.compile(r"(<(pre|code|script|style|svg|textarea|table)\b.*?</\2>)", re.S | re.I)


def _mathml(tex: str, display: bool) -> str | None:
    from latex2mathml.converter import convert

    try:
        return convert(html.unescape(tex), display="block" if display else "inline")
    except Exception:  # noqa: BLE001 -- text that only looks like math stays as it was
        return None


def math_to_mathml(body: str) -> tuple[str, int]:
    """``$...$`` / ``$$...$$`` in text (not in code, tables or charts) -> MathML; returns the body and
    how many were converted. A single-dollar span must look like TeX (a backslash, ``_``, ``^`` or
    one letter), so prices such as "$12 and $15" are left alone."""
    count = 0

    def one(m: re.Match) -> str:
        nonlocal count
        display = m.group(1) is not None
        tex = m.group(1) if display else m.group(2)
        if not display and not (re.search(r"[\\_^]", tex) or re.fullmatch(r"[A-Za-z]", tex)):
            return m.group(0)
        out = _mathml(tex, display)
        if out is None:
            return m.group(0)
        count += 1
        return out

    parts = _NO_MATH.split(body)
    out = []
    for i, part in enumerate(parts):
        kind = i % 3  # re.split with two groups: text, the whole protected element, its tag name
        if kind == 0:
            out.append(_MATH.sub(one, part))
        elif kind == 1:
            out.append(part)
    return "".join(out), count
