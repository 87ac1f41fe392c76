"""Memory plan: parameter counts against published sizes and real models; the fit verdict."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from atlas_lib.core import config
from atlas_lib.methods import memory


@pytest.mark.parametrize("name, published", [
    ("Qwen/Qwen2.5-7B-Instruct", 7.62e9), ("Qwen/Qwen2.5-14B-Instruct", 14.77e9),
    ("Qwen/Qwen2.5-0.5B-Instruct", 0.494e9), ("Qwen/Qwen2.5-1.5B-Instruct", 1.54e9),
    ("meta-llama/Llama-3.2-1B-Instruct", 1.24e9), ("qwen2.5-coder-0.5b-instruct", 0.630e9),
    ("qwen2.5-coder-1.5b-instruct", 1.777e9),
])
def test_parameter_counts_match_published_sizes(name, published):
    assert memory.n_params(memory.arch(name)) == pytest.approx(published, rel=0.01)


def test_parameter_count_matches_a_real_model(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["student"])
    assert memory.n_params(memory.arch(tiny["student"])) == sum(p.numel() for p in model.parameters())


def test_paper_profile_needs_more_than_one_80gb_gpu_and_says_how():
    plan = memory.estimate(config.load("params/paper.yaml"), gpu_gb=80)
    assert not plan.fits and plan.total_gib > 100
    assert any("ZeRO-3" in a for a in plan.advice) and any("gkd.lora" in a for a in plan.advice)
    text = memory.format_plan(plan)
    assert "does NOT fit" in text and "logits" in text


def test_embedded_profile_fits_a_small_device():
    plan = memory.estimate(config.load("params/embedded.yaml"), gpu_gb=24)
    assert plan.fits and plan.total_gib < 24


def test_chunking_and_checkpointing_reduce_the_estimate():
    p = config.load("params/paper.yaml", overrides={"gkd.loss_chunk_size": 0, "gkd.gradient_checkpointing": False})
    q = config.load("params/paper.yaml")
    assert memory.estimate(q).total_gib < memory.estimate(p).total_gib


def test_the_8bit_optimizer_cuts_the_students_state_to_six_bytes_per_parameter():
    p = config.load("params/paper.yaml")
    q = config.load("params/paper.yaml", overrides={"gkd.optimizer": "adamw_8bit_bf16"})
    ps = memory.n_params(memory.arch(p.models.student))

    def state(plan):
        return sum(gib for name, gib, _ in plan.rows if name.startswith(("student", "AdamW")))

    assert state(memory.estimate(p)) * memory.GiB == pytest.approx(16 * ps)
    assert state(memory.estimate(q)) * memory.GiB == pytest.approx(ps * (4 + 2 * (1 + 4 / 256)))
    assert any("adamw_8bit_bf16" in a for a in memory.estimate(p, gpu_gb=80).advice)
    assert not any("adamw_8bit_bf16" in a for a in memory.estimate(q, gpu_gb=80).advice)


def test_the_8bit_full_fine_tune_beside_the_teacher_is_not_promised_one_80gb_gpu():
    # measured on a GPU at the paper shapes (bench/RESULTS.md section 12): 74.7 GiB allocated and
    # 79.8 GiB reserved against an estimate of 71.6, more than an 80 GB card holds once reserved
    plan = memory.estimate(config.load("params/paper.yaml", overrides={"gkd.optimizer": "adamw_8bit_bf16"}),
                           gpu_gb=80)
    assert 70 < plan.total_gib < 74
    assert not plan.fits


def test_the_verdict_keeps_fifteen_percent_of_the_device_free():
    plan = memory.estimate(config.load("params/paper-1gpu.yaml"), gpu_gb=80)
    assert memory.estimate(config.load("params/paper-1gpu.yaml"), gpu_gb=plan.total_gib / 0.85 + 0.1).fits
    assert not memory.estimate(config.load("params/paper-1gpu.yaml"), gpu_gb=plan.total_gib / 0.85 - 0.1).fits
