"""Memory plan: parameter counts against published sizes and real models; the fit verdict."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from atlas_lib import cli
from atlas_lib.core import config
from atlas_lib.training import memory


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


# ---------------------------------------------------------------- a plan per enabled stage


def _study(**over):
    """The study's models and shapes with every stage on and full fine-tunes (it runs two of them, LoRA)."""
    return config.load("params/study.yaml", overrides={"off_policy.enabled": True, "cross_tokenizer.enabled": True,
                                                       **over})


def _row(plan, component):
    return next(gib for name, gib, _ in plan.rows if name == component)


def test_every_enabled_stage_gets_a_plan():
    params = _study()
    assert list(memory.estimate_stages(params, gpu_gb=80)) == params.enabled()


def test_a_disabled_stage_gets_no_plan():
    params = _study(**{"off_policy.enabled": False})
    assert "off_policy" not in memory.estimate_stages(params, gpu_gb=80)


@pytest.mark.parametrize("stage, student, teacher", [
    ("gkd", "qwen2.5-coder-0.5b-instruct", "teacher qwen2.5-coder-1.5b-instruct"),
    ("off_policy", "qwen2.5-coder-0.5b-instruct", "teacher qwen2.5-coder-1.5b-instruct"),
    ("grpo", "qwen2.5-coder-0.5b-instruct", "no teacher"),
    ("cross_tokenizer", "smollm2-135m-instruct", "teacher qwen2.5-coder-1.5b-instruct"),
])
def test_each_plan_is_headed_with_its_stage_models_profile_and_device(stage, student, teacher):
    text = memory.format_plans(memory.estimate_stages(_study(), gpu_gb=80))
    assert f"### {stage} — student {student}, {teacher} (profile study, device 80 GiB)" in text


def test_the_command_prints_every_stage_and_which_fit(capsys):
    assert cli.main(["memory", "--params", "params/embedded.yaml", "--gpu-gb", "80"]) == 0
    out = capsys.readouterr().out
    assert out.count("### ") == 3  # the embedded tier's enabled stages
    assert "Fit on one 80 GiB device: gkd, grpo, cross_tokenizer; do NOT fit: none." in out


def test_the_verdict_line_names_the_stages_that_do_not_fit():
    text = memory.format_plans(memory.estimate_stages(config.load("params/paper.yaml"), gpu_gb=80))
    assert text.endswith("Fit on one 80 GiB device: cross_tokenizer; do NOT fit: gkd, grpo.")


def test_grpo_has_no_teacher_row():
    plan = memory.estimate_stages(_study())["grpo"]
    assert not any("teacher" in name for name, _, _ in plan.rows)


def test_grpo_without_kl_has_no_reference_row():
    plan = memory.estimate_stages(_study())["grpo"]
    assert not any("reference" in name for name, _, _ in plan.rows)


def test_grpo_with_kl_adds_a_frozen_copy_of_the_student():
    params = _study(**{"grpo.beta": 0.04, "grpo.lora": {}})
    ps = memory.n_params(memory.arch(params.models.student))
    assert _row(memory.estimate_stages(params)["grpo"], "reference model (frozen)") * memory.GiB == ps * 4


def test_grpo_with_kl_and_lora_needs_no_copy():
    plan = memory.estimate_stages(config.load("params/embedded.yaml", overrides={"grpo.beta": 0.04}))["grpo"]
    assert _row(plan, "reference model (frozen)") == 0


def test_grpo_caches_the_whole_generation_batch():
    params = _study()
    g, a = params.grpo, memory.arch(params.models.student)
    seq = 256 + g.max_completion_length
    kv = 2 * a["layers"] * a["kv"] * (a["hidden"] // a["heads"]) * seq * g.sequences_per_step() * 2
    assert _row(memory.estimate_stages(params)["grpo"], "generation KV cache") * memory.GiB == kv


def test_the_cross_tokenizer_plan_trains_its_sections_student():
    params = config.load("params/embedded.yaml")
    ps = memory.n_params(memory.arch(params.cross_tokenizer.student))
    plan = memory.estimate_stages(params)["cross_tokenizer"]
    assert _row(plan, "student weights (fp32 master)") * memory.GiB == ps * 4


def test_the_cross_tokenizer_plan_uses_its_students_vocabulary():
    plan = memory.estimate_stages(config.load("params/embedded.yaml"))["cross_tokenizer"]
    assert any(note.startswith("V=49152/151936") for name, _, note in plan.rows if name.startswith("logits"))


def test_off_policy_caches_the_teachers_generation():
    params = _study()
    gkd, off = memory.estimate_stages(params)["gkd"], memory.estimate_stages(params)["off_policy"]
    assert _row(off, "generation KV cache") > _row(gkd, "generation KV cache")


def test_the_teacher_is_counted_in_models_teacher_dtype():
    params = config.load("params/embedded.yaml")  # teacher_dtype: fp32
    pt = memory.n_params(memory.arch(params.models.teacher))
    assert _row(memory.estimate(params), "teacher weights (frozen)") * memory.GiB == pt * 4


def test_the_readme_shows_the_zero3_advice_the_command_prints():
    plan = memory.estimate(config.load("params/paper.yaml"), gpu_gb=80)
    zero3 = next(a for a in plan.advice if a.startswith("ZeRO-3"))
    assert f"- {zero3}\n" in (Path(__file__).resolve().parent.parent / "README.md").read_text()
