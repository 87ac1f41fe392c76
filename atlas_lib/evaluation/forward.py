"""The forward-pass plumbing every batched scorer and decoder shares: prompts to ids, left padding
with positions taken from the mask, a shared-prefix KV cache repeated over a batch, and forwards that
materialise logits for the last positions only (``logits_to_keep``). Used by the evaluator's greedy
decoding (:mod:`atlas_lib.evaluation.generation`), its reverse-KL scoring and the cross-tokenizer
loss, so each of these is written once."""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from atlas_lib.data.prompts import has_chat_template
from atlas_lib.evaluation.decode_kernels import decode_cache, param_device

PREFIX_MIN_TOKENS = 16  # shorter shared prefixes are not worth a cache copy per batch


@contextmanager
def eval_mode(*models) -> Iterator[None]:
    """Eval mode inside, each model's own train/eval mode restored after (we run mid-training)."""
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


def eos_token_ids(model, tokenizer) -> list[int]:
    """The generation config's EOS ids (an int or a list) plus the tokenizer's EOS."""
    config = getattr(model, "generation_config", None)
    ids = config.eos_token_id if config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("no EOS token: set tokenizer.eos_token or model.generation_config.eos_token_id")
    return ids


def pad_token(tokenizer, eos: list[int]) -> int:
    """The tokenizer's pad id, else its first EOS id (padding is masked either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]


def left_pad(rows: list[list[int]], fill: int, width: int | None = None, device=None) -> torch.Tensor:
    """``[B, width]`` long tensor: each row right-aligned, ``fill`` before it."""
    width = max(map(len, rows)) if width is None else width
    return torch.tensor([[fill] * (width - len(r)) + list(r) for r in rows], dtype=torch.long, device=device)


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered prompts. Chat-template output already carries its special tokens;
    plain-text prompts (base models) get the tokenizer's own (e.g. BOS)."""
    ids = tokenizer(list(prompts), add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise ValueError(f"prompts {empty[:5]} encode to zero tokens; every prompt needs at least one token")
    return ids


def full_attention(model) -> bool:
    """Every layer attends to the whole context (no sliding window: its cache and masks depend on
    absolute lengths, so padding and row surgery are left to ``generate`` there)."""
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types:
        return all(t == "full_attention" for t in layer_types)
    return not getattr(model.config, "sliding_window", None)


def shared_prefix(models: Sequence, encoded: list[list[int]]) -> list[int]:
    """The token prefix all prompts share (system turn + few-shot examples: over half of each
    prompt here), so its keys/values are computed once, not once per prompt; ``[]`` when shorter
    than ``PREFIX_MIN_TOKENS`` or unsafe. Causal attention makes the prefix's keys/values
    independent of what follows, so reusing them is exact. Sliding-window layers are left out:
    padding placed after the prefix would count towards their window."""
    if not all(full_attention(m) for m in models):
        return []
    if len(encoded) < 2:
        return []
    prefix = os.path.commonprefix(encoded)[:min(map(len, encoded)) - 1]  # every prompt keeps >= 1 token
    return prefix if len(prefix) >= PREFIX_MIN_TOKENS else []


def prefill(model, prefix: list[int], decoding: bool = False):
    """The prefix's cache, or None (no prefix, or a cache type that cannot be repeated over a batch).
    ``decoding``: built from :func:`decode_cache`, for caches that will grow a token at a time."""
    if not prefix:
        return None
    given = decode_cache(model) if decoding else None
    out = model(input_ids=torch.tensor([prefix], device=param_device(model)), use_cache=True,
                **({cache_arg(model): given} if given is not None else {}))
    cache = out_cache(out)
    return cache if hasattr(cache, "batch_repeat_interleave") else None


def accepts(model, name: str) -> bool:
    """Whether the model's forward takes ``name`` (a peft wrapper's ``**kwargs`` forward passes it on
    to its base model, whose signature is the one that counts)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


def cache_arg(model) -> str:
    """The forward's cache argument (transformers 5 renamed ``past_key_values`` to ``cache``)."""
    return "cache" if accepts(model, "cache") else "past_key_values"


def out_cache(out):
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def batch_inputs(model, seqs: list[list[int]], pad_id: int, prefix: list[int], cache) -> dict:
    """``[prefix][left padding][rest]`` ids and mask (full width) plus a copy of the prefix cache
    repeated over the batch. Positions are taken from the mask (as ``generate`` does), so the
    padding shifts nothing and results equal unpadded one-at-a-time runs."""
    rest = [s[len(prefix):] for s in seqs]
    ids_B_T, attn_B_T = left_pad(rest, pad_id), left_pad([[1] * len(s) for s in rest], 0)
    extra = {}
    if prefix:
        b = len(seqs)
        ids_B_T = torch.cat([torch.tensor([prefix] * b), ids_B_T], 1)
        attn_B_T = torch.cat([torch.ones(b, len(prefix), dtype=torch.long), attn_B_T], 1)
        arg = cache_arg(model)
        extra[arg] = copy.deepcopy(cache)  # the model appends to the cache it is given
        extra[arg].batch_repeat_interleave(b)
    dev = param_device(model)
    return {"input_ids": ids_B_T.to(dev), "attention_mask": attn_B_T.to(dev), **extra}


def forward_batch(model, inputs: dict, n_prefix: int, keep: int, use_cache: bool):
    """One forward over a :func:`batch_inputs` batch: only the ids after the cached prefix are fed,
    positions come from the mask, and logits are materialised for the last ``keep`` positions
    only (``logits_to_keep``, when the model takes it)."""
    pos_B_T = (inputs["attention_mask"].cumsum(-1) - 1).clamp_min(0)  # as generate() does
    kw = {**inputs, "input_ids": inputs["input_ids"][:, n_prefix:], "position_ids": pos_B_T[:, n_prefix:],
          "use_cache": use_cache}
    if accepts(model, "logits_to_keep"):
        kw["logits_to_keep"] = keep
    return model(**kw)


def prefix_cache(model, prompts: list[list[int]]) -> tuple[list[int], object]:
    """``(prefix, cache)``: the prompts' :func:`shared_prefix` and its keys/values for ``model``
    (computed once, reused by every batch), or ``([], None)`` when there is none worth caching."""
    prefix = shared_prefix([model], prompts)
    cache = prefill(model, prefix)
    return (prefix, cache) if cache is not None else ([], None)


def completion_logits(model, seqs: list[list[int]], n_completion: list[int], pad: int,
                      prefix: tuple[list[int], object] = ([], None)) -> torch.Tensor:
    """Logits predicting each row's last ``n_completion`` tokens: ``[B, C, V]``, right-aligned.
    ``prefix``: a :func:`prefix_cache` of the rows' prompts (never for a model being trained: the
    cached prefix would carry no gradient)."""
    c = max(max(n_completion), 1)
    ids, cache = prefix
    out = forward_batch(model, batch_inputs(model, seqs, pad, ids, cache), len(ids), keep=c + 1, use_cache=bool(ids))
    return out.logits[:, -(c + 1):-1]  # the last c + 1 positions even if the model ignored logits_to_keep
