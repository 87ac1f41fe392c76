"""The training optimizer choice: what the kit builds for it, and whether low memory still trains.

``optimizer: adamw_8bit_bf16`` keeps the student's weights in bf16. Plain AdamW on bf16 weights
loses every update below |w|/256; stochastic rounding must keep them on average. These tests
drive the optimizer HF Trainer builds from the kit's arguments, so a change in the mapping (or
torchao dropping the rounding) fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from atlas_lib.core import config
from atlas_lib.core.config import ParamsError
from atlas_lib.methods.gkd.config import GKDConfig
from atlas_lib.methods.grpo.config import GRPOConfig
from atlas_lib.training.loop import optimizer_args, student_dtype

pytest.importorskip("torchao")


def _built(choice: str, params, lr: float):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir="unused", learning_rate=lr, use_cpu=True, report_to="none",
                             **optimizer_args(GKDConfig(optimizer=choice)))
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    return cls(params, **kwargs), cls, kwargs


def test_each_choice_maps_to_its_optimizer():
    from torchao.optim import AdamW8bit

    p = torch.nn.Parameter(torch.zeros(8))
    _, cls, _ = _built("adamw", [p], 1e-5)
    assert cls is torch.optim.AdamW
    _, cls, kw = _built("adamw_8bit_bf16", [p], 1e-5)
    assert cls is AdamW8bit and kw["bf16_stochastic_round"]  # strtobool: 1
    assert student_dtype(GKDConfig()) == torch.float32
    assert student_dtype(GKDConfig(optimizer="adamw_8bit_bf16")) == torch.bfloat16
    assert student_dtype(GRPOConfig(optimizer="adamw_8bit_bf16")) == torch.bfloat16


def _share_of_reference_update(choice: str, dtype: torch.dtype, lr: float = 1e-5, steps: int = 4) -> float:
    """<dw, dw_ref> / |dw_ref|^2 after ``steps`` steps on fixed gradients (dw_ref: fp32 AdamW)."""
    torch.manual_seed(0)
    w0 = (torch.randn(64, 4096) * 0.05).bfloat16().float()  # representable in bf16: same start for all
    grads = [torch.randn_like(w0) for _ in range(steps)]
    ref = torch.nn.Parameter(w0.clone())
    ref_opt = torch.optim.AdamW([ref], lr=lr)
    p = torch.nn.Parameter(w0.clone().to(dtype))
    opt, _, _ = _built(choice, [p], lr)
    for g in grads:
        for param, o in ((ref, ref_opt), (p, opt)):
            param.grad = g.to(param.dtype)
            o.step()
    dw_ref, dw = ref.detach() - w0, p.detach().float() - w0
    return float((dw * dw_ref).sum() / (dw_ref * dw_ref).sum())


def test_stochastic_rounding_keeps_updates_below_bf16_resolution():
    # |w| ~ 0.05 -> bf16 spacing ~2e-4 >> lr 1e-5: round-to-nearest drops the updates entirely
    assert _share_of_reference_update("adamw", torch.float32) == pytest.approx(1.0, abs=1e-6)
    assert abs(_share_of_reference_update("adamw", torch.bfloat16)) < 0.2  # 0.07: weights near 0 keep theirs
    assert _share_of_reference_update("adamw_8bit_bf16", torch.bfloat16) == pytest.approx(1.0, abs=0.1)


def test_missing_torchao_names_the_field_and_the_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "torchao" else real(n, *a))
    with pytest.raises(ParamsError, match=r"grpo\.optimizer = 'adamw_8bit_bf16' needs torchao: pip install"):
        config.load("params/smoke.yaml", overrides={"grpo.optimizer": "adamw_8bit_bf16"})
    assert student_dtype(GRPOConfig()) == torch.float32  # the default needs nothing extra


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ParamsError, match="allowed values are adamw, adamw_8bit_bf16"):
        config.load("params/smoke.yaml", overrides={"gkd.optimizer": "sgd"})


def test_lowmem_gkd_trains_bf16_and_resumes(tmp_path, monkeypatch):
    """A GKD run with the 8-bit optimizer: bf16 student and checkpoint, resumable optimizer state."""
    import contextlib

    from safetensors import safe_open

    from atlas_lib.core import runtime
    from atlas_lib.data import splits as data
    from atlas_lib.methods.gkd.trainer import run_gkd

    entered = []
    real = runtime.return_freed_memory

    @contextlib.contextmanager
    def spy():
        with real() as state:
            entered.append(state)
            yield state

    monkeypatch.setattr(runtime, "return_freed_memory", spy)
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path / "cache"))
    base = {"tracking.wandb": "disabled", "gkd.max_steps": 2, "gkd.eval_steps": 2, "gkd.save_steps": 2,
            "gkd.optimizer": "adamw_8bit_bf16", "gkd.learning_rate": 1e-3}
    p = config.load("params/smoke.yaml", overrides=base)
    data.prepare(p)
    run = Path(tmp_path / "runs" / "smoke" / "gkd")
    first = run_gkd(p)
    assert first["training"]["global_step"] == 2
    assert len(entered) == 1  # the training loop returned freed memory while it trained
    with safe_open(run / "checkpoints" / "checkpoint-2" / "model.safetensors", "pt") as f:
        name = next(k for k in f.keys() if "mlp" in k)
        assert f.get_tensor(name).dtype == torch.bfloat16
    state = torch.load(run / "checkpoints" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in state["state"].values()} == {2}
    (run / "summary.json").unlink()  # as if killed after its last checkpoint: a finished run is never resumed
    resumed = run_gkd(config.load("params/smoke.yaml", overrides={**base, "gkd.max_steps": 3, "gkd.resume": True,
                                                                   "gkd.resume_changed": True}))
    assert resumed["training"]["global_step"] == 3
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in rows if r["kind"] == "train") == [1, 2, 3]
    state = torch.load(run / "checkpoints" / "checkpoint-3" / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in state["state"].values()} == {3}  # continued, not restarted
