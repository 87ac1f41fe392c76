"""The evaluator's decode kernels (:mod:`atlas_lib.evaluation.decode_kernels`). The weight-major layout: same
logits and completions as ``nn.Linear``'s own, used only where it was measured to pay (fp32 CPU
products of 8-96 rows), scoped and restored. The in-place KV cache: the keys and values a plain
``DynamicLayer`` would hold, without a copy per token, through the batch surgery of the evaluator."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from atlas_lib.evaluation import decode_kernels, forward, generation

PROMPTS = [f"Tom has {i} apples and buys {2 * i + 1} more. How many apples{'?' * (i % 3 + 1)}" for i in range(12)]


@pytest.fixture(scope="module")
def student(tiny):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny["student"], dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny["student"])


def _count_weight_major(monkeypatch) -> list[int]:
    """Rows of every product that took the weight-major path (those that fall back call F.linear)."""
    rows: list[int] = []
    real_linear = decode_kernels.F.linear
    real = decode_kernels._weight_major_linear

    def linear(x, w, b=None):
        rows.append(-1)  # the fallback: nn.Linear's own layout
        return real_linear(x, w, b)

    def counted(module, x):
        n = len(rows)
        y = real(module, x)
        if len(rows) == n:
            rows.append(x.reshape(-1, x.shape[-1]).shape[0])
        return y

    monkeypatch.setattr(decode_kernels.F, "linear", linear)
    monkeypatch.setattr(decode_kernels, "_weight_major_linear", counted)
    return rows


@torch.inference_mode()
def test_weight_major_logits_equal_linear_layout_and_only_in_the_row_range(student, monkeypatch):
    model, _ = student
    rows = _count_weight_major(monkeypatch)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    for n in (2, 12, 97):  # below, inside and above DECODE_ROWS
        ids = torch.randint(5, 100, (n, 1))
        ref = model(input_ids=ids).logits
        rows.clear()
        with generation.weight_major_decode(model):
            assert all("forward" in vars(m) for m in linears)
            got = model(input_ids=ids).logits
        assert not any("forward" in vars(m) for m in linears)  # restored
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        assert len(rows) == len(linears)  # every Linear went through the replacement ...
        assert all(r == (n if n == 12 else -1) for r in rows)  # ... and took the swap only for 8-96 rows


@torch.inference_mode()
@pytest.mark.parametrize("chunk", [2048, 5])  # one block, or 5 blocks with a short last one
def test_weight_major_keeps_the_bias_and_leading_dims(chunk, monkeypatch):
    monkeypatch.setattr(decode_kernels, "OUT_CHUNK", chunk)
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 24)
    x = torch.randn(3, 4, 16)  # 12 rows
    ref = lin(x)
    with generation.weight_major_decode(lin):
        got = lin(x)
    assert got.shape == (3, 4, 24) and got.is_contiguous()
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_weight_major_leaves_bf16_subclasses_and_replaced_forwards_alone(student):
    model, _ = student

    class Lora(torch.nn.Linear):
        pass

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), Lora(4, 4), torch.nn.Linear(4, 4).to(torch.bfloat16),
                              torch.nn.Linear(4, 4))
    hooked = net[3].forward = lambda x: x  # e.g. accelerate's offload hook
    with generation.weight_major_decode(net):
        assert "forward" in vars(net[0])
        assert "forward" not in vars(net[1]) and "forward" not in vars(net[2])
        assert vars(net[3])["forward"] is hooked
    assert "forward" not in vars(net[0]) and vars(net[3])["forward"] is hooked


def test_evaluator_completions_same_with_either_layout(student, monkeypatch):
    model, tok = student
    rows = _count_weight_major(monkeypatch)
    fast = generation.generate_greedy(model, tok, PROMPTS, max_new_tokens=8, batch_size=12)
    assert max(rows) >= 8  # decode steps really used the weight-major layout
    monkeypatch.undo()
    monkeypatch.setattr(generation, "weight_major_decode", lambda m: contextlib.nullcontext())
    plain = generation.generate_greedy(model, tok, PROMPTS, max_new_tokens=8, batch_size=12)
    assert [o["completion_ids"] for o in fast] == [o["completion_ids"] for o in plain]
    assert not any("forward" in vars(m) for m in model.modules())


def _kv(b: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, n, 4, generator=g), torch.randn(b, 2, n, 4, generator=g)


def test_growing_layer_holds_what_a_dynamic_layer_holds_without_copying(monkeypatch):
    from transformers.cache_utils import DynamicLayer

    monkeypatch.setattr(decode_kernels, "SPARE_COLUMNS", 3)
    grow, plain = decode_kernels._GrowingLayer(), DynamicLayer()
    buffers, rows = [], 3
    for step, n in enumerate([5, 1, 1, 1, 1, 2, 1]):  # a prefill, then single tokens (and a pair)
        k, v = _kv(rows, n, step)
        got, ref = grow.update(k, v), plain.update(k, v)
        for a, b in zip(got, ref, strict=True):
            assert torch.equal(a, b)
        buffers.append(grow.keys.data_ptr())
        if step == 3:  # the batch surgery of continuous batching: rows leave ...
            idx = torch.tensor([0, 2])
            grow.batch_select_indices(idx)
            plain.batch_select_indices(idx)
            rows = 2
            assert torch.equal(grow.keys, plain.keys) and torch.equal(grow.values, plain.values)
        if step == 5:  # ... or the evaluator replaces the tensors itself (merging, trimming columns)
            grow.keys, grow.values = plain.keys[:, :, 1:].clone(), plain.values[:, :, 1:].clone()
            plain.keys, plain.values = plain.keys[:, :, 1:], plain.values[:, :, 1:]
    # a new buffer only when the spare columns ran out or the tensors were replaced:
    # 5 columns -> copy into 9 -> 7 -> 8, rows selected (new buffer, spare kept) -> 9 -> 11: copy -> replaced -> copy
    changed = [i for i in range(1, len(buffers)) if buffers[i] != buffers[i - 1]]
    assert changed == [1, 4, 5, 6]


def test_decode_cache_only_for_plain_dynamic_layers(student, tiny):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model, _ = student
    cache = decode_kernels.decode_cache(model)
    assert cache is not None and all(isinstance(x, decode_kernels._GrowingLayer) for x in cache.layers)
    cfg = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    assert decode_kernels.decode_cache(Qwen2ForCausalLM(cfg)) is None  # sliding layers: the model's own cache


def test_evaluator_completions_same_with_the_plain_cache(student, monkeypatch):
    model, tok = student
    used = []
    real = decode_kernels._GrowingLayer.update

    def update(self, *a, **kw):
        used.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(decode_kernels._GrowingLayer, "update", update)
    fast = generation.generate_greedy(model, tok, PROMPTS, max_new_tokens=8, batch_size=5)
    assert used  # the evaluator really decoded into the in-place cache
    for module in (generation, forward):  # both build decoding caches (prefill of the prefix, admission)
        monkeypatch.setattr(module, "decode_cache", lambda m: None)
    plain = generation.generate_greedy(model, tok, PROMPTS, max_new_tokens=8, batch_size=5)
    assert [o["completion_ids"] for o in fast] == [o["completion_ids"] for o in plain]
