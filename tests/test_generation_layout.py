"""The evaluator's weight-major decode layout: same logits and completions as ``nn.Linear``'s own,
used only where it was measured to pay (fp32 CPU products of 8-96 rows), scoped and restored."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from atlas_lib import generation

PROMPTS = [f"Tom has {i} apples and buys {2 * i + 1} more. How many apples{'?' * (i % 3 + 1)}" for i in range(12)]


@pytest.fixture(scope="module")
def student(tiny):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny["student"], dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny["student"])


def _count_weight_major(monkeypatch) -> list[int]:
    """Rows of every product that took the weight-major path (those that fall back call F.linear)."""
    rows: list[int] = []
    real_linear = generation.F.linear
    real = generation._weight_major_linear

    def linear(x, w, b=None):
        rows.append(-1)  # the fallback: nn.Linear's own layout
        return real_linear(x, w, b)

    def counted(module, x):
        n = len(rows)
        y = real(module, x)
        if len(rows) == n:
            rows.append(x.reshape(-1, x.shape[-1]).shape[0])
        return y

    monkeypatch.setattr(generation.F, "linear", linear)
    monkeypatch.setattr(generation, "_weight_major_linear", counted)
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
def test_weight_major_keeps_the_bias_and_leading_dims():
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
