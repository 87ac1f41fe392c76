"""Aligning two tokenizations of one text by character offsets (any tokenizer pair).

Each token is reduced to the character position where its text *ends* in the shared string.
Ends are all the walk needs: token ``i`` covers ``[end(i-1), end(i))``, so the whitespace
conventions (ByteLevel ``Ġ``, SentencePiece ``▁`` / Metaspace prefix space, trimmed offsets) stop
mattering once both sides refer to the same Python string. Tokens that end inside the same
character (ByteLevel or ``<0xE2>`` byte-fallback pieces of one multibyte char) share that char's
end and merge into one unit. Tokens with no text (special tokens) get ``None``; they are paired
with the other side's special tokens at the same text position (the final EOS pair) or left as
one-sided spans, which the loss skips.

Ends come from the fast tokenizer's ``offset_mapping`` when the text is tokenized here, or, for ids
that already exist (the student's samples), from incremental decoding: a token's end is fixed once
the decoded text stops ending in an incomplete character (``\\ufffd``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from atlas_lib.data.prompts import has_chat_template

_DECODE_WINDOW = 8  # tokens of left context when decoding incrementally (O(n) instead of O(n^2))


@dataclass
class Alignment:
    """Aligned spans of one text: per span the student and teacher token indices and its chars.

    A span is *two-sided* when both index lists are non-empty; only those enter the loss. A span
    with ``start == end`` holds special tokens (no text), e.g. the paired end-of-sequence tokens.
    """

    text: str
    student: list[list[int]] = field(default_factory=list)
    teacher: list[list[int]] = field(default_factory=list)
    chars: list[tuple[int, int]] = field(default_factory=list)

    def two_sided(self) -> list[int]:
        return [k for k, (s, t) in enumerate(zip(self.student, self.teacher, strict=True)) if s and t]

    def span_index(self, side: str, n_tokens: int) -> list[int]:
        """Per token of ``side`` ("student"/"teacher"): its two-sided span number, or -1."""
        groups = self.student if side == "student" else self.teacher
        out = [-1] * n_tokens
        for n, k in enumerate(self.two_sided()):
            for i in groups[k]:
                out[i] = n
        return out

    def stats(self) -> dict:
        both = self.two_sided()
        one = sum(len(self.student[k]) == 1 and len(self.teacher[k]) == 1 for k in both)
        return {"spans": len(both), "one_to_one": one / max(len(both), 1),
                "student_tokens_per_span": sum(len(self.student[k]) for k in both) / max(len(both), 1),
                "teacher_tokens_per_span": sum(len(self.teacher[k]) for k in both) / max(len(both), 1)}


def tokenizer_kind(tok) -> str:
    """``bytelevel`` | ``sentencepiece`` | ``other``, from the fast tokenizer's pipeline
    (TRL GOLD's ``is_byte_level_tokenizer`` rule for ByteLevel; ``▁`` handling for SentencePiece)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return "sentencepiece" if hasattr(tok, "sp_model") else "other"
    parts = " ".join(repr(x) for x in (backend.pre_tokenizer, backend.decoder, backend.normalizer))
    if "ByteLevel" in repr(backend.pre_tokenizer) or "ByteLevel" in repr(backend.decoder):
        return "bytelevel"
    if "Metaspace" in parts or "▁" in parts or getattr(backend.model, "byte_fallback", False):
        return "sentencepiece"
    return "other"


def special_ids(tok) -> set[int]:
    """Ids that carry no text: special tokens (decode skips them)."""
    ids = set(tok.all_special_ids)
    ids.update(i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if t.special)
    return ids


def ends_from_offsets(ids: list[int], offsets: list[tuple[int, int]], no_text: set[int],
                      shift: int = 0) -> list[int | None]:
    """Character end of each token (minus ``shift``), ``None`` for tokens without text."""
    return [None if (i in no_text or s == e) else e - shift for i, (s, e) in zip(ids, offsets, strict=True)]


def ends_from_ids(ids: list[int], tok, context: list[int] = ()) -> tuple[list[int | None], str]:
    """Character ends of existing token ids and the text they decode to (specials skipped).

    ``context`` (the last prompt tokens) is decoded first, so the text is what the ids mean *after*
    it: a SentencePiece ``▁8`` after ``Answer:`` is " 8", where decoding it alone gives "8".
    """
    context = list(context)
    if context:
        ends, text = ends_from_ids(context + list(ids), tok)
        ctx_len = max((e for e in ends[:len(context)] if e is not None), default=0)
        if all(e is None or e > ctx_len for e in ends[len(context):]):
            return [None if e is None else e - ctx_len for e in ends[len(context):]], text[ctx_len:]
        # a token straddles the context (it merged with the prompt's last char): decode the ids alone
    text = tok.decode(ids, skip_special_tokens=True)
    for window in (_DECODE_WINDOW, None):  # None: full-prefix decoding, exact but quadratic
        ends, built = _incremental_ends(ids, tok, window)
        if built == text:
            return ends, text
    raise ValueError(f"{type(tok).__name__}: decoding the ids token by token does not reproduce their full "
                     f"decode ({built[:40]!r}... vs {text[:40]!r}...); use a fast tokenizer without "
                     "clean_up_tokenization_spaces")


def _incremental_ends(ids: list[int], tok, window: int | None) -> tuple[list[int | None], str]:
    no_text = special_ids(tok)
    ends: list[int | None] = [None] * len(ids)
    text, first_open, unit_starts = "", 0, [0]  # first_open: first token whose end is not yet known

    def dec(a: int, b: int) -> str:
        return tok.decode(ids[a:b], skip_special_tokens=True)

    ref_key, ref = None, ""
    for i, tid in enumerate(ids):
        if tid in no_text:
            continue
        p = _window_start(unit_starts, first_open, window)
        if ref_key != (p, first_open):
            ref_key, ref = (p, first_open), dec(p, first_open)
        cur = dec(p, i + 1)
        if cur.endswith("\ufffd") or not cur.startswith(ref):
            continue  # an incomplete character: its end is the end of the token that completes it
        text += cur[len(ref):]
        _mark_ends(ends, ids, no_text, first_open, i + 1, len(text))
        first_open = i + 1
        unit_starts.append(first_open)
    tail = dec(unit_starts[-1], len(ids)) if first_open < len(ids) else ""
    if tail:  # the text ends inside a character: it decodes with replacement chars
        text += tail
        _mark_ends(ends, ids, no_text, first_open, len(ids), len(text))
    return ends, text


def _window_start(unit_starts: list[int], first_open: int, window: int | None) -> int:
    """Where the decoded window starts: a unit boundary (never inside a multibyte char) at least
    ``window`` tokens before the first open token; 0 without a window."""
    if window is None:
        return 0
    return unit_starts[max(bisect.bisect_right(unit_starts, first_open - window) - 1, 0)]


def _mark_ends(ends: list[int | None], ids: list[int], no_text: set, lo: int, hi: int, end: int) -> None:
    """Tokens ``lo``..``hi - 1`` end at text position ``end`` (tokens without text keep None)."""
    for j in range(lo, hi):
        if ids[j] not in no_text:
            ends[j] = end


def align_ends(student_ends: list[int | None], teacher_ends: list[int | None], text: str) -> Alignment:
    """The merge-until-both-boundaries-coincide walk over two lists of token end positions."""
    su, tu = _units(student_ends), _units(teacher_ends)
    al = Alignment(text=text)
    i = j = start = 0
    cur_s: list[int] = []
    cur_t: list[int] = []
    while i < len(su) or j < len(tu):
        a = su[i] if i < len(su) else None
        b = tu[j] if j < len(tu) else None
        step = _special_step(al, a, b, bool(cur_s or cur_t), start)
        if step is None:
            *step, start = _text_step(al, a, b, cur_s, cur_t, start)
        i, j = i + step[0], j + step[1]
    if cur_s or cur_t:
        _emit(al, cur_s, cur_t, start, len(text))
    return al


def _emit(al: Alignment, s: list[int], t: list[int], a: int, b: int) -> None:
    al.student.append(s)
    al.teacher.append(t)
    al.chars.append((a, b))


def _special_step(al: Alignment, a, b, pending: bool, start: int) -> tuple[int, int] | None:
    """A special token at the head of either side: emitted at ``start``; returns how far each side
    advanced, or None when neither head is special."""
    a_special, b_special = a is not None and a[1] is None, b is not None and b[1] is None
    if a_special and b_special and not pending:
        _emit(al, a[0], b[0], start, start)  # specials at the same text position (the EOS pair)
        return 1, 1
    if a_special:  # a special alone, or inside the other side's token: skipped
        _emit(al, a[0], [], start, start)
        return 1, 0
    if b_special:
        _emit(al, [], b[0], start, start)
        return 0, 1
    return None


def _text_step(al: Alignment, a, b, cur_s: list[int], cur_t: list[int], start: int) -> tuple[int, int, int]:
    """Merge the head unit(s) with text into the open span (``cur_s``/``cur_t``, extended in place),
    emitting it when both sides end at the same character; returns (student step, teacher step, start)."""
    if a is None or b is None:  # one side ran out of text: the rest joins the last span
        (cur_t if a is None else cur_s).extend((b or a)[0])
        return (0, 1, start) if a is None else (1, 0, start)
    di = dj = 0
    if a[1] <= b[1]:
        cur_s.extend(a[0])
        di = 1
    if b[1] <= a[1]:
        cur_t.extend(b[0])
        dj = 1
    if a[1] == b[1]:
        _emit(al, list(cur_s), list(cur_t), start, a[1])
        cur_s.clear()
        cur_t.clear()
        start = a[1]
    return di, dj, start


def align_one_to_one(ends: list[int | None], text: str) -> Alignment:
    """Identical token sequences on both sides: every token is its own span (the GKD case)."""
    al, prev = Alignment(text=text), 0
    for i, e in enumerate(ends):
        al.student.append([i])
        al.teacher.append([i])
        al.chars.append((prev, prev) if e is None else (min(prev, e), e))
        prev = prev if e is None else max(prev, e)
    return al


def _units(ends: list[int | None]) -> list[tuple[list[int], int | None]]:
    """Group tokens: runs of text tokens ending at the same char (partial chars) are one unit."""
    units: list[tuple[list[int], int | None]] = []
    last = None  # index of the last text unit
    for i, e in enumerate(ends):
        if e is None:
            units.append(([i], None))
        elif last is not None and e <= units[last][1]:
            units[last][0].append(i)  # ends inside (or before) the previous unit's last char
        else:
            units.append(([i], e))
            last = len(units) - 1
    return units


def align_by_offsets(text: str, student_tokenizer, teacher_tokenizer, *, student_ids: list[int] | None = None,
                     teacher_ids: list[int] | None = None) -> Alignment:
    """Align the student's and the teacher's tokens of ``text`` into spans of identical characters.

    Without ids each tokenizer tokenizes ``text`` (``return_offsets_mapping``, no special tokens);
    with ids (e.g. the student's samples) their spans come from incremental decoding and the ids must
    decode to ``text``.
    """
    sides = []
    for name, tok, ids in (("student", student_tokenizer, student_ids),
                           ("teacher", teacher_tokenizer, teacher_ids)):
        if ids is None:
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            sides.append(ends_from_offsets(enc["input_ids"], enc["offset_mapping"], special_ids(tok)))
        else:
            ends, decoded = ends_from_ids(list(ids), tok)
            if decoded != text:
                raise ValueError(f"{name}_ids decode to {decoded[:60]!r}, not to the text {text[:60]!r}; "
                                 "pass the text those ids decode to (skip_special_tokens=True)")
            sides.append(ends)
    return align_ends(sides[0], sides[1], text)


def encode_with_completion(tok, prompt: str, completion: str) -> tuple[list[int], int, list[int | None]]:
    """Tokenize ``prompt + completion`` as one string (the model's own rendering).

    Returns all ids, the index of the first completion token (the first token ending past the
    prompt) and the completion tokens' char ends relative to the completion.
    """
    enc = tok(prompt + completion, add_special_tokens=not has_chat_template(tok), return_offsets_mapping=True)
    ids, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    n = len(prompt)
    first = next((k for k, (_, e) in enumerate(offs) if e > n), len(ids))
    ends = ends_from_offsets(ids[first:], offs[first:], special_ids(tok), shift=n)
    return ids, first, ends
