"""LoRA (peft) for every training method: only adapter weights move, checkpoints and the final model
hold the adapters, and the memory plan counts what peft counts (an interrupted LoRA run resuming to the
same metrics: tests/test_training.py::test_sigkill_then_resume_matches_uninterrupted[lora])."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atlas_lib.core import config, models
from atlas_lib.core.rundir import RunDir
from atlas_lib.data import splits
from atlas_lib.methods.gkd import trainer as gkd
from atlas_lib.training import loop, memory
from atlas_lib.training.common import with_lora

ROOT = Path(__file__).resolve().parent.parent
LORA = {"r": 4, "alpha": 8}


def _params(**over):
    base = {"tracking.wandb": "disabled", "evaluation.reverse_kl": False}
    for key in ("gkd", "grpo", "cross_tokenizer"):
        base.update({f"{key}.max_steps": 1, f"{key}.eval_steps": 1, f"{key}.save_steps": 1, f"{key}.lora": LORA})
    return config.load("params/smoke.yaml", overrides={**base, **over})


def test_lora_trains_only_the_adapters(env):
    p = _params(**{"gkd.max_steps": 2})
    prepared = splits.prepare(p)
    parts = gkd._build("gkd")(p, prepared, torch.device("cpu"))
    named = dict(parts.student.named_parameters())
    base = {n: w.detach().clone() for n, w in named.items() if "lora_" not in n}
    adapters = {n: w.detach().clone() for n, w in named.items() if "lora_B" in n}
    assert adapters and all(not w.requires_grad for n, w in named.items() if "lora_" not in n)
    rd = RunDir.open(p, "gkd")
    try:
        parts.make_trainer(loop.trainer_args(p, "gkd", rd, ["none"], torch.device("cpu")), []).train()
    finally:
        rd.release()
    after = dict(parts.student.named_parameters())
    assert all(torch.equal(after[n], w) for n, w in base.items())  # the base model is untouched
    assert any(not torch.equal(after[n], w) for n, w in adapters.items())  # the adapters learned


@pytest.mark.parametrize("key", ["gkd", "grpo", "cross_tokenizer"])
def test_every_method_trains_with_lora_and_saves_adapters(env, key):
    from atlas_lib.core import registry

    p = _params()
    splits.prepare(p)
    summary = registry.get(key).run(p)
    assert summary["status"] == "complete"
    if key != "grpo":  # the tiny random student never earns a reward, so GRPO's adapters cannot move
        assert summary["did_not_train"] is None
    run = env / "runs" / "smoke" / key
    assert (run / "final" / "adapter_model.safetensors").exists()
    assert (run / "final" / "adapter_config.json").exists()
    assert not (run / "final" / "model.safetensors").exists()  # the adapters, not a copy of the base
    ckpt = next((run / "checkpoints").glob("checkpoint-*"))
    assert (ckpt / "adapter_model.safetensors").exists()


def test_the_memory_plan_counts_what_peft_counts(tiny):
    model, _ = models.load_model(tiny["student"], dtype=torch.float32, device="cpu", for_training=True)
    p = _params()
    wrapped = with_lora(model, p.gkd, "gkd")
    trainable, _ = wrapped.get_nb_trainable_parameters()
    assert memory.lora_params(memory.arch(tiny["student"]), LORA["r"]) == trainable


def test_the_seed_gkd_stage_fits_one_80_gb_gpu_with_the_one_gpu_profile():
    plan = memory.estimate(config.load("params/paper-1gpu.yaml"), gpu_gb=80)
    assert plan.fits, memory.format_plan(plan)
    assert not memory.estimate(config.load("params/paper.yaml"), gpu_gb=80).fits


@pytest.mark.parametrize("bad, msg", [({"rank": 4}, "unknown key 'rank'"), ({"r": 0}, "integer >= 1"),
                                      ({"dropout": 1.5}, r"\[0, 1\)"), ({"target_modules": []}, "all-linear")])
def test_bad_lora_settings_name_the_field(bad, msg):
    with pytest.raises(config.ParamsError, match=msg):
        config.load("params/smoke.yaml", overrides={"gkd.lora": bad})
