"""A new arm is its folder, its tests and its params, plus one registry line (and the notebook that
runs it): ``tests/arms/tinker_rkl`` is a realistic arm (tinker-style distillation, a per-token
reverse-KL advantage) with its own section (a ``beta`` that is no JSD beta), objective and memory
plan, registered here by one ``register`` call and nothing else, then trained on the tiny models and
rendered in the report's table, findings and table files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from atlas_lib.core import config, registry
from atlas_lib.data import splits
from atlas_lib.evaluation.baselines import evaluate_baselines, objectives
from atlas_lib.report import collect, findings, site, table
from atlas_lib.training import memory

ARMS = Path(__file__).resolve().parent / "arms"
PARAMS = """
tinker:
  enabled: true
  beta: 0.25
  max_steps: 2
  eval_steps: 1
"""


@pytest.fixture
def tinker(monkeypatch):
    monkeypatch.syspath_prepend(str(ARMS))
    # The arm's one registry line.
    method = registry.register(registry.Method(
        "tinker", "tinker_rkl.config:TinkerConfig", "tinker_rkl.trainer:run_tinker", "02_gkd",
        "Tinker-style distilled student (reverse-KL advantage)", "Tinker RKL", "C6",
        "Tinker: per-token reverse-KL advantage", memory="tinker_rkl.memory:plan_tinker"))
    yield method
    registry.unregister("tinker")


def _params(tmp_path, **overrides):
    """The smoke profile with the arm's own params section, from a file as a user would write it."""
    f = tmp_path / "tinker.yaml"
    f.write_text((Path("params/smoke.yaml").read_text() + PARAMS).replace("name: smoke\n", "name: tinker\n"))
    return config.load(f, overrides=overrides)


def test_the_arms_section_is_read_from_its_params_with_its_own_fields(tinker, tmp_path):
    p = _params(tmp_path)
    assert p.tinker.beta == 0.25
    assert p.tinker.center is False
    assert "tinker" in p.enabled()


def test_the_arms_fields_are_range_checked_by_name(tinker, tmp_path):
    with pytest.raises(config.ParamsError, match=r"tinker\.beta"):
        _params(tmp_path, **{"tinker.beta": -1.0})


def test_the_arms_beta_is_not_scored_as_a_jsd_beta(tinker, tmp_path):
    """Its beta (0.25) is a KL coefficient and it declares no objective: only the methods declaring one
    are scored under theirs (gkd's generalized JSD at 0.5 in the smoke profile)."""
    p = _params(tmp_path)
    assert "tinker" in p.enabled()
    assert [o.key for o in objectives(p)] == ["0.5"]


def test_the_arms_objective_pushes_down_tokens_the_student_overrates(tinker):
    from tinker_rkl.objective import reverse_kl_advantage_loss

    lp_s = torch.tensor([[-0.5, -2.0]], requires_grad=True)
    lp_t = torch.tensor([[-1.5, -1.0]])
    reverse_kl_advantage_loss(lp_s, lp_t, torch.ones(1, 2), beta=1.0).backward()
    # token 0: student above teacher -> negative advantage -> the step lowers it (positive gradient)
    assert lp_s.grad[0, 0] > 0
    assert lp_s.grad[0, 1] < 0


def test_the_arm_trains_on_the_tiny_models_and_shows_in_the_report(tinker, env, tmp_path):
    p = _params(tmp_path, **{"tracking.wandb": "disabled", "gkd.enabled": False, "off_policy.enabled": False,
                             "grpo.enabled": False, "cross_tokenizer.enabled": False})
    splits.prepare(p)
    evaluate_baselines(p)
    summary = tinker.run(p)
    assert summary["method"] == "tinker"
    assert summary["training"]["weights_changed"] is True
    losses = [r["loss"] for r in _train_points(p) if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)

    plan = memory.estimate_stages(p, gpu_gb=80)["tinker"]  # the arm's own plan, through the registry
    logits = next(v for c, v, _ in plan.rows if c == "logits (completion only)")
    s, t = memory.arch(p.models.student), memory.arch(p.models.teacher)
    positions = (p.tinker.max_completion_length + 1) * p.tinker.per_device_train_batch_size  # fp32: 4 + 4 bytes
    assert logits * memory.GiB == pytest.approx(positions * (s["vocab"] + t["vocab"]) * (4 + 4))

    col = collect.collect(p)
    t = table.results_table(col)
    assert t.loc["tinker", "Model / Method"] == "Tinker-style distilled student (reverse-KL advantage)"
    assert not t.loc[["tinker"], "Accuracy"].isna().any()
    assert "Tinker RKL" in findings.findings(col)
    out = tmp_path / "report"
    site.write_table_files(p, out, col)
    assert "Tinker-style distilled student" in (out / "table.json").read_text()
    assert json.loads((out / "table.json").read_text())


def _train_points(p):
    from atlas_lib.core.preflight import stage_dir

    path = stage_dir(p, "tinker") / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
