"""On a CUDA device (`pytest -m gpu`; skipped elsewhere): the kit's GKD and GRPO stages in bf16.

Tiny random models and a local data file, so nothing is downloaded and nothing beyond the pinned
stack is needed (no reasoning-gym). What a CPU run cannot show: the models, the optimizer state
and the evaluator all land on the GPU, bf16 training moves the weights, and the run records the
device as a GPU and its peak GPU memory. The paper-scale shapes are measured by
``bench/gpu_probe.py`` (bench/RESULTS.md).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from atlas_lib.core import config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _params(env, **over):
    path = env / "problems.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                            for a in range(8) for b in range(6)))
    base = {"tracking.wandb": "disabled", "run.device": "cuda", "run.dtype": "bf16", "data.source": "local",
            "data.path": str(path), "gkd.max_steps": 2, "gkd.eval_steps": 2, "gkd.save_steps": 2,
            "grpo.max_steps": 2, "grpo.eval_steps": 2, "grpo.save_steps": 2}
    p = config.load("params/smoke.yaml", overrides={**base, **over})
    from atlas_lib.data import splits

    splits.prepare(p)
    return p


def _train_rows(env, method):
    rows = [json.loads(x) for x in (env / "runs" / "smoke" / method / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def test_gkd_trains_on_the_gpu_in_bf16(env):
    from atlas_lib.methods.gkd.trainer import run_gkd

    s = run_gkd(_params(env))
    assert s["training"]["device_kind"] == "GPU"
    assert s["training"]["weights_changed"] is True
    assert all(r["peak_gpu_mem_gb"] > 0 for r in _train_rows(env, "gkd"))
    assert math.isfinite(s["distilled"]["mean_reverse_kl"])


def test_grpo_trains_on_the_gpu_in_bf16(env):
    from atlas_lib.methods.grpo.trainer import run_grpo

    s = run_grpo(_params(env, **{"evaluation.reverse_kl": False}))
    rows = _train_rows(env, "grpo")
    assert s["training"]["device_kind"] == "GPU"
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["reward_mean"] <= 1.0 for r in rows)
    assert all(r["peak_gpu_mem_gb"] > 0 for r in rows)
