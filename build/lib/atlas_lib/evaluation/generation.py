"""Batched greedy decoding for the evaluator: left padding, a shared-prefix KV cache,
continuous batching (a finished row leaves the batch and a waiting prompt takes its slot), and on
a CPU the faster of two matmul layouts for decode-sized fp32 products (:func:`weight_major_decode`).

Each row's math is that of one-at-a-time greedy ``generate`` (tests compare completions token for
token and logits to 1e-5 in fp32); only the schedule differs. In bf16, rounding depends on which
rows share a matmul, so a near-tie can flip, as with any batched decoding. Decoding one token for
a batch reads every weight once, so on a CPU (memory-bound) or a GPU (launch-bound) a step costs
nearly the same for 8 rows as for 48: keeping the batch full is what buys throughput.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from atlas_lib.core.runtime import heap_for_large_buffers
from atlas_lib.evaluation.decode_kernels import decode_cache, weight_major_decode
from atlas_lib.evaluation.forward import (
    accepts,
    batch_inputs,
    cache_arg,
    encode_prompts,
    eos_token_ids,
    eval_mode,
    forward_batch,
    full_attention,
    out_cache,
    prefill,
    shared_prefix,
)

REFILL_FRACTION = 4  # admit waiting prompts once a quarter of the batch's slots are free


def greedy_kwargs(model, tokenizer, max_new_tokens: int) -> dict:
    """``model.generate`` arguments for plain greedy decoding with the KV cache.

    Values left unset are filled from ``model.generation_config``; an instruct model's shipped
    ``repetition_penalty`` or ``no_repeat_ngram_size`` would silently change "greedy", so they are
    pinned to neutral values here (the bench's one-at-a-time loop uses the same arguments).
    """
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    return dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True, eos_token_id=eos,
                pad_token_id=pad, repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0,
                temperature=1.0, top_p=1.0, top_k=50)


@dataclass
class _Active:
    """Rows being decoded. Invariant: ``attn_B_L`` is as wide as the cache, ``last_pos_B`` is each
    row's position of its last cached token, ``next_B`` the generated token not yet fed back."""

    rows: list[int]
    cache: object
    attn_B_L: torch.Tensor
    last_pos_B: torch.Tensor
    next_B: torch.Tensor


def _admit(model, rows: list[int], encoded: list[list[int]], pad_id: int, prefix: list[int],
           prefix_cache) -> tuple[_Active, torch.Tensor]:
    """Prefill ``rows`` (ids after the cached prefix only); their first generated token is ``next_B``.
    Also returns ``logits_B_V`` (float32) of each row's last position."""
    inputs = batch_inputs(model, [encoded[i] for i in rows], pad_id, prefix, prefix_cache)
    arg = cache_arg(model)
    if arg not in inputs and (fresh := decode_cache(model)) is not None:
        inputs[arg] = fresh
    out = forward_batch(model, inputs, len(prefix), keep=1, use_cache=True)
    logits_B_V = out.logits[:, -1].float()
    attn = inputs["attention_mask"]
    last_pos_B = attn.sum(-1) - 1  # the mask-derived position of each row's last token
    return _Active(rows, out_cache(out), attn, last_pos_B, logits_B_V.argmax(-1)), logits_B_V


def _step(model, state: _Active) -> tuple[_Active, torch.Tensor]:
    """Feed every active row its pending token: one new cache column, the next token chosen."""
    attn = torch.cat([state.attn_B_L, state.attn_B_L.new_ones(len(state.rows), 1)], 1)
    out = model(input_ids=state.next_B[:, None], attention_mask=attn, position_ids=(state.last_pos_B + 1)[:, None],
                use_cache=True, **{cache_arg(model): state.cache},
                **({"logits_to_keep": 1} if accepts(model, "logits_to_keep") else {}))
    logits_B_V = out.logits[:, -1].float()
    return _Active(state.rows, out_cache(out), attn, state.last_pos_B + 1, logits_B_V.argmax(-1)), logits_B_V


def _left_pad_to(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [width - x.shape[dim], 0]
    return F.pad(x, pad) if width > x.shape[dim] else x


def _merge(a: _Active, b: _Active) -> _Active:
    """One batch of both: the shorter cache is left-padded (masked) to the longer one's length.
    Positions are explicit and keys carry their rotary positions, so the padding changes nothing."""
    width = max(a.attn_B_L.shape[1], b.attn_B_L.shape[1])
    for la, lb in zip(a.cache.layers, b.cache.layers, strict=True):
        la.keys, la.values = (torch.cat([_left_pad_to(x, width, -2), _left_pad_to(y, width, -2)], 0)
                              for x, y in ((la.keys, lb.keys), (la.values, lb.values)))
    attn = torch.cat([_left_pad_to(a.attn_B_L, width, 1), _left_pad_to(b.attn_B_L, width, 1)], 0)
    return _Active(a.rows + b.rows, a.cache, attn, torch.cat([a.last_pos_B, b.last_pos_B]),
                   torch.cat([a.next_B, b.next_B]))


def _keep(state: _Active, keep: list[int]) -> _Active:
    """Only rows ``keep`` (indices into ``state.rows``). Cache columns now masked for every row
    left (padding that only departed rows needed) are cut, so merged batches do not keep growing."""
    sel = torch.tensor(keep, device=state.next_B.device)
    state.cache.batch_select_indices(sel)
    attn = state.attn_B_L[sel]
    used = attn.any(0)
    if not bool(used.all()):
        cols = used.nonzero().squeeze(1)
        for layer in state.cache.layers:
            layer.keys, layer.values = layer.keys.index_select(-2, cols), layer.values.index_select(-2, cols)
        attn = attn[:, cols]
    return _Active([state.rows[j] for j in keep], state.cache, attn, state.last_pos_B[sel], state.next_B[sel])


def _continuous_greedy(model, encoded: list[list[int]], order: list[int], *, batch_size: int, max_new_tokens: int,
                       eos: set[int], pad_id: int, prefix: list[int], prefix_cache, on_done) -> dict[int, list[int]]:
    """Greedy completions of ``encoded[i]`` for ``i`` in ``order``, at most ``batch_size`` rows at a
    time; ``on_done(n)`` after each step that finished ``n`` rows."""
    pending, comps, state = deque(order), {i: [] for i in order}, None
    while pending or state is not None:
        free = batch_size - (len(state.rows) if state else 0)
        if pending and (state is None or free >= min(max(1, batch_size // REFILL_FRACTION), len(pending))):
            new, _ = _admit(model, [pending.popleft() for _ in range(min(free, len(pending)))], encoded, pad_id,
                            prefix, prefix_cache)
            stepped = new.rows
            state = new if state is None else _merge(state, new)
        else:  # one token for every active row
            state, _ = _step(model, state)
            stepped = state.rows
        fed = set(stepped)
        keep = []
        for j, (r, t) in enumerate(zip(state.rows, state.next_B.tolist(), strict=True)):
            if r in fed:
                comps[r].append(t)
            if not (comps[r][-1] in eos or len(comps[r]) == max_new_tokens):
                keep.append(j)
        if len(keep) < len(state.rows):
            on_done(len(state.rows) - len(keep))
            state = _keep(state, keep) if keep else None
    return comps


@torch.inference_mode()
def generate_greedy(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                    desc: str = "eval", prefix_cache: bool = True) -> list[dict]:
    """Greedy completions: left padding, length-sorted admission, KV cache, stop at EOS, and
    continuous batching (up to ``batch_size`` rows decode together; a finished row's slot is
    refilled from the waiting prompts). Models with sliding-window layers use ``generate`` on
    fixed batches instead (their caches cannot be padded or merged safely).

    Returns, in the input order, dicts with ``prompt_ids`` and ``completion_ids`` (unpadded; the
    completion up to and including EOS when one was produced), ``text`` (decoded without special
    tokens), ``n_tokens`` (generated, EOS included), ``truncated`` (hit ``max_new_tokens`` with no
    EOS) and ``prompt_tokens``. ``prefix_cache``: encode the prompts' :func:`shared_prefix` once.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"generate_greedy: batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) "
                         "must be >= 1")
    encoded = encode_prompts(tokenizer, prompts) if prompts else []
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths -> little padding
    kwargs = greedy_kwargs(model, tokenizer, max_new_tokens)
    eos = set(kwargs["eos_token_id"])
    out: list[dict] = [{}] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, unit="ex", leave=False)
    with eval_mode(model), weight_major_decode(model), heap_for_large_buffers():
        prefix = shared_prefix([model], encoded) if prefix_cache else []
        cache = prefill(model, prefix, decoding=True)
        prefix = prefix if cache is not None else []
        if full_attention(model):
            comps = _continuous_greedy(model, encoded, order, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                       eos=eos, pad_id=kwargs["pad_token_id"], prefix=prefix, prefix_cache=cache,
                                       on_done=bar.update)
        else:
            comps = {}
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                inputs = batch_inputs(model, [encoded[i] for i in idx], kwargs["pad_token_id"], prefix, cache)
                gen_B_T = model.generate(**inputs, **kwargs)
                comps.update((i, gen_B_T[r, inputs["input_ids"].shape[1]:].tolist()) for r, i in enumerate(idx))
                bar.update(len(idx))
        for i, comp in comps.items():
            stop = next((j for j, t in enumerate(comp) if t in eos), None)
            comp = comp[:stop + 1] if stop is not None else comp  # generate() pads rows that ended early
            out[i] = {"prompt_ids": encoded[i], "completion_ids": comp, "prompt_tokens": len(encoded[i]),
                      "text": tokenizer.decode(comp, skip_special_tokens=True), "n_tokens": len(comp),
                      "truncated": stop is None}
    bar.close()
    return out
