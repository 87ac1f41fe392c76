"""Outcome partitions of the next-token distribution that two tokenizers share (the token term).

The cross-tokenizer loss compares, at each aligned span start, the two models' next-token
distributions after grouping tokens into outcomes that mean the same thing under both tokenizers:

* ``identity``: same vocabulary, each token is its own outcome (the loss is then GKD's GJSD);
* ``first_byte``: "the continuation starts with byte x" (256 outcomes) - exact for any pair;
* ``shared_string``: tokens with the same normalised string are one outcome (TRL GOLD's hybrid
  idea) - finer, but only approximate across tokenizers.

Every mode adds "stop" (the end-of-sequence ids) and "other" (tokens without text, padded rows).
Token strings are normalised to the UTF-8 bytes they stand for mid-text: ByteLevel pieces map
char -> byte, SentencePiece ``▁`` is a space and ``<0xNN>`` one byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

from atlas_lib.methods.cross_tokenizer.alignment import special_ids, tokenizer_kind

_BYTE_OF_CHAR = {c: b for b, c in bytes_to_unicode().items()}
_FALLBACK_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_byte_keys(tok) -> list[bytes | None]:
    """Per token id, the UTF-8 bytes its piece stands for mid-text (``None``: special / no text).

    ByteLevel pieces map char -> byte; SentencePiece ``▁`` is a space and ``<0xNN>`` one byte.
    """
    kind = tokenizer_kind(tok)
    no_text = special_ids(tok)
    keys: list[bytes | None] = [None] * len(tok)
    for piece, i in tok.get_vocab().items():
        if i in no_text or i >= len(keys):
            continue
        if kind == "bytelevel" and all(c in _BYTE_OF_CHAR for c in piece):
            keys[i] = bytes(_BYTE_OF_CHAR[c] for c in piece)
        elif kind == "sentencepiece" and (m := _FALLBACK_BYTE.fullmatch(piece)):
            keys[i] = bytes([int(m.group(1), 16)])
        else:
            keys[i] = piece.replace("▁", " ").encode("utf-8")
    return keys


@dataclass
class VocabMap:
    """Outcome buckets of the token term; ``identity`` uses the tokens themselves."""

    mode: str
    student_bucket_V: torch.Tensor | None = None  # token id -> bucket; rows past the tokenizer: "other"
    teacher_bucket_V: torch.Tensor | None = None
    student_exact_V: torch.Tensor | None = None  # the bucket is exactly this token's event
    teacher_exact_V: torch.Tensor | None = None
    num_buckets: int = 0


_MAPS: dict[tuple, tuple] = {}


def build_vocab_map(student_tok, teacher_tok, *, mode: str = "auto", student_eos: tuple[int, ...] = (),
                    teacher_eos: tuple[int, ...] = ()) -> VocabMap:
    """``auto``: ``identity`` for identical vocabularies, else ``first_byte``; cached per pair."""
    key = (id(student_tok), id(teacher_tok), mode, tuple(student_eos), tuple(teacher_eos))
    if key in _MAPS:
        return _MAPS[key][2]
    if mode == "auto":
        mode = "identity" if student_tok.get_vocab() == teacher_tok.get_vocab() else "first_byte"
    if mode == "identity":
        vm = VocabMap("identity")
    elif mode in ("first_byte", "shared_string"):
        ks, kt = token_byte_keys(student_tok), token_byte_keys(teacher_tok)
        if mode == "first_byte":
            ks, kt = [k[:1] or None if k else None for k in ks], [k[:1] or None if k else None for k in kt]
            index = {bytes([b]): b for b in range(256)}
        else:
            shared = sorted(set(ks) & set(kt) - {None})
            index = {k: n for n, k in enumerate(shared)}
        stop, other = len(index), len(index) + 1

        def side(keys, eos):
            bucket = torch.tensor([stop if i in eos else index.get(k, other) for i, k in enumerate(keys)])
            exact = torch.tensor([i in eos or (mode == "shared_string" and k in index)
                                  for i, k in enumerate(keys)])
            return bucket, exact

        (sb, se), (tb, te) = side(ks, set(student_eos)), side(kt, set(teacher_eos))
        vm = VocabMap(mode, sb, tb, se, te, len(index) + 2)
    else:
        raise ValueError(f"vocab map mode {mode!r}: use auto, identity, first_byte or shared_string")
    _MAPS[key] = (student_tok, teacher_tok, vm)  # holding the tokenizers keeps their ids unique
    return vm
