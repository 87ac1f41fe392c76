"""Issue 18's evidence machinery: paired statistics, independent held-out splits, the GKD loss's
normalisation, every stop id honoured, and runs that did not train flagged as such."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from atlas_lib.core import config
from atlas_lib.evaluation import stats
from atlas_lib.training import outcome


# -- paired statistics ---------------------------------------------------------------------------
@pytest.mark.parametrize(("a_only", "b_only", "expected"), [
    (0, 5, 2 * 0.5 ** 5),  # all five discordant pairs one way: 2 * (1/2)^5
    (1, 9, 2 * (1 + 10) / 1024),  # 2 * P(X <= 1), X ~ Binomial(10, 1/2)
    (3, 3, 1.0),
    (0, 0, 1.0),
])
def test_exact_mcnemar_matches_the_binomial_closed_form(a_only, b_only, expected):
    assert stats.mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-12)


def test_paired_counts_discordant_problems_on_shared_ids_only():
    a = {"p1": True, "p2": True, "p3": False, "p4": False, "only-a": True}
    b = {"p1": True, "p2": False, "p3": False, "p4": True, "only-b": False}
    pr = stats.paired(a, b)
    assert (pr.n, pr.a_only, pr.b_only) == (4, 1, 1)
    assert pr.diff == pytest.approx(0.0)
    assert pr.acc_a == pytest.approx(0.5)


def test_paired_bootstrap_interval_brackets_the_difference_and_is_degenerate_without_discordance():
    a = {f"p{i}": i < 30 for i in range(100)}
    b = {f"p{i}": i < 10 for i in range(100)}
    pr = stats.paired(a, b)
    assert pr.diff == pytest.approx(0.2)
    assert pr.ci_low < 0.2 < pr.ci_high
    # the bootstrap sd of a mean of 20 ones in 100 is sqrt(0.2 * 0.8 / 100) = 0.04: interval ~ +-0.078
    assert pr.ci_high - pr.ci_low == pytest.approx(2 * 1.96 * 0.04, rel=0.1)
    same = stats.paired(a, a)
    assert (same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 1.0)


def test_min_detectable_difference_closed_form():
    # (z_0.975 + z_0.8) * sqrt(q / n) with q = 0.2, n = 100
    assert stats.min_detectable_difference(100, 0.2) == pytest.approx((1.959964 + 0.841621) * math.sqrt(0.002),
                                                                      rel=1e-5)


def test_min_detectable_difference_of_one_problem_is_defined_and_of_none_is_not():
    assert stats.min_detectable_difference(1, 0.25) == pytest.approx((1.959964 + 0.841621) * 0.5, rel=1e-5)
    assert math.isnan(stats.min_detectable_difference(0, 0.25))


def test_a_negative_count_is_refused_naming_the_counts():
    with pytest.raises(ValueError, match="counts must be >= 0, got -1, 1"):
        stats.mcnemar_exact(-1, 1)


# -- splits --------------------------------------------------------------------------------------
def _grouped(n_groups: int, per: int) -> list[dict]:
    return [{"id": f"g{g}-{i}", "question": f"q {g} {i}", "answer": "1", "group": f"g{g}"}
            for g in range(n_groups) for i in range(per)]


def test_held_out_splits_take_one_problem_per_group():
    from atlas_lib.data.splits import split_by_group

    train, val, test = split_by_group(_grouped(40, 3), seed=1, eval_limit=10, val_limit=6)
    assert len(test) == 10 and len({r["group"] for r in test}) == 10
    assert len(val) == 6 and len({r["group"] for r in val}) == 6


def test_validation_test_and_train_groups_are_disjoint():
    from atlas_lib.data.splits import split_by_group

    train, val, test = split_by_group(_grouped(40, 3), seed=1, eval_limit=10, val_limit=6)
    g = [{r["group"] for r in part} for part in (train, val, test)]
    assert not (g[0] & g[1]) and not (g[0] & g[2]) and not (g[1] & g[2])
    assert len(train) == (40 - 16) * 3  # the rest of a held-out group is dropped, never trained on


def test_eval_points_use_validation_and_the_reported_rows_use_test(tmp_path, monkeypatch):
    from atlas_lib.data import splits as data
    from atlas_lib.training import common as stages

    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path / "runs"))
    p = config.load("params/smoke.yaml")
    prep = data.prepare(p)
    during = {r["id"] for r in stages.eval_examples(p, prep, during_training=True)}
    final = {r["id"] for r in stages.eval_examples(p, prep, during_training=False)}
    assert during and final and not during & final
    assert during <= {r["id"] for r in prep.val}


def test_peak_on_step_zero_reads_as_no_improvement():
    pts = [{"step": 0, "accuracy": 0.5, "device_hours": 0.0}, {"step": 2, "accuracy": 0.4, "device_hours": 0.1}]
    pk = outcome.peak(pts)
    assert pk["improved"] is False and pk["device_hours_to_peak"] is None
    pts[1]["accuracy"] = 0.6
    assert outcome.peak(pts)["device_hours_to_peak"] == pytest.approx(0.1)


# -- did not train ------------------------------------------------------------------------------
def test_equal_rewards_in_every_group_mean_did_not_train():
    pts = [{"step": 1, "loss": 0.0, "frac_zero_std": 1.0}, {"step": 2, "loss": 0.0, "frac_zero_std": 1.0}]
    assert "zero reward variance" in outcome.did_not_train(pts, weights_changed=True)


def test_identical_weights_mean_did_not_train():
    assert "bit-identical" in outcome.did_not_train([{"step": 1, "loss": 0.3}], weights_changed=False)


def test_zero_loss_means_did_not_train_and_signal_means_it_did():
    assert "identically 0" in outcome.did_not_train([{"step": 1, "loss": 0.0}], weights_changed=True)
    assert outcome.did_not_train([{"step": 1, "loss": 0.1, "frac_zero_std": 0.5}], weights_changed=True) is None


def test_a_grpo_loss_of_zero_with_signal_and_a_gradient_is_training():
    """GRPO's logged loss is exactly 0 when a group's answers are equally long (its advantages sum to
    zero), while the gradient is not: the study's seed 43 logged loss 0.0 at all four steps with reward
    variance and gradient norm 2.87 on two of them."""
    points = [{"step": 1, "loss": 0.0, "frac_zero_std": 1.0, "grad_norm": 0.0},
              {"step": 3, "loss": 0.0, "frac_zero_std": 0.5, "grad_norm": 2.87}]
    assert outcome.did_not_train(points, weights_changed=True) is None
    dead = [{"step": 1, "loss": 0.0, "grad_norm": 0.0}, {"step": 2, "loss": 0.0, "grad_norm": 0.0}]
    assert outcome.did_not_train(dead, weights_changed=True).startswith("no gradient")


def test_weights_digest_sees_one_changed_bit():
    m = torch.nn.Linear(4, 4)
    before = outcome.weights_digest(m)
    with torch.no_grad():
        w = m.weight.view(-1)
        w[3] = torch.nextafter(w[3], torch.tensor(float("inf")))
    assert outcome.weights_digest(m) != before


def test_gkd_moving_away_from_the_teacher_is_flagged():
    s = {"method": "gkd", "initial": {"mean_reverse_kl": 0.31}, "distilled": {"mean_reverse_kl": 0.48}}
    assert outcome.flags(s) and "moved away from the teacher" in outcome.flags(s)[0]
    s["distilled"]["mean_reverse_kl"] = 0.2
    assert outcome.flags(s) == []


def test_cross_tokenizer_moving_away_from_the_teacher_is_flagged_on_its_own_divergence():
    s = {"method": "cross_tokenizer", "initial": {"aligned_divergence": 0.470, "mean_reverse_kl": None},
         "distilled": {"aligned_divergence": 0.499, "mean_reverse_kl": None}}
    assert outcome.flags(s) == ["moved away from the teacher: aligned divergence 0.470 -> 0.499"]
    s["distilled"]["aligned_divergence"] = 0.41
    assert outcome.flags(s) == []


def test_a_method_that_does_not_distil_is_never_flagged_for_divergence():
    s = {"method": "grpo", "initial": {"mean_reverse_kl": 0.31}, "distilled": {"mean_reverse_kl": 0.9}}
    assert outcome.flags(s) == []


def _smoke(**over):
    base = {"tracking.wandb": "disabled", "gkd.max_steps": 1, "gkd.eval_steps": 1, "gkd.save_steps": 5,
            "grpo.max_steps": 1, "grpo.eval_steps": 1, "grpo.save_steps": 5, "evaluation.reverse_kl": False}
    return config.load("params/smoke.yaml", overrides={**base, **over})


def test_a_run_whose_weights_never_move_is_recorded_as_did_not_train(env):
    from atlas_lib.data import splits as data
    from atlas_lib.methods.gkd.trainer import run_gkd

    p = _smoke()
    p.gkd.learning_rate = 0.0  # below the params' range (lr > 0): what a run that cannot move looks like
    data.prepare(p)
    s = run_gkd(p)
    assert s["did_not_train"] == "weights bit-identical to the start"
    on_disk = json.loads(Path(env / "runs/smoke/gkd/summary.json").read_text())
    assert on_disk["did_not_train"] == s["did_not_train"]


def test_a_grpo_run_with_equal_rewards_everywhere_is_flagged(env, monkeypatch):
    from atlas_lib.data import splits as data
    from atlas_lib.methods.grpo import rewards
    from atlas_lib.methods.grpo import trainer as grpo

    monkeypatch.setitem(rewards.REWARDS, "exact_match", lambda completions, **kw: [0.0] * len(completions))
    p = _smoke()
    data.prepare(p)
    s = grpo.run_grpo(p)
    assert s["did_not_train"] is not None
    assert "zero reward variance" in s["did_not_train"] or "bit-identical" in s["did_not_train"]


# -- GKD loss normalisation ----------------------------------------------------------------------
def test_gkd_loss_is_the_sum_over_scored_positions_over_their_count(tiny, tmp_path):
    """Independent of the dataset's reference lengths (HF's num_items_in_batch counts those)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig

    from atlas_lib.methods.gkd.trainer import AtlasGKDTrainer, generalized_jsd

    tok = AutoTokenizer.from_pretrained(tiny["student"])
    student = AutoModelForCausalLM.from_pretrained(tiny["student"])
    teacher = AutoModelForCausalLM.from_pretrained(tiny["teacher"])
    rows = [{"messages": [{"role": "user", "content": "What is 1 + 3?"},
                          {"role": "assistant", "content": "Final Answer: 4"}]}] * 2
    args = GKDConfig(output_dir=str(tmp_path / "o"), max_steps=1, per_device_train_batch_size=2, lmbda=1.0,
                     beta=0.5, max_new_tokens=6, report_to="none", use_cpu=True, save_strategy="no")
    tr = AtlasGKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    ids = torch.randint(5, 100, (2, 12))
    labels = ids.clone()
    labels[:, :8] = -100
    labels[1, 10:] = -100  # row 1 scores fewer positions
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        got = tr.compute_loss(student, dict(inputs), num_items_in_batch=torch.tensor(464))
        s_logits, t_logits = student(ids).logits[:, :-1], teacher(ids).logits[:, :-1]
        mask = labels[:, 1:] != -100
        v = min(s_logits.shape[-1], t_logits.shape[-1], len(tok))
        want = generalized_jsd(s_logits[..., :v][mask], t_logits[..., :v][mask], 0.5) / mask.sum()
    assert torch.allclose(got, want, rtol=1e-4), (got, want)


def test_gkd_training_step_ignores_the_reference_label_count(tiny, tmp_path, monkeypatch):
    from trl.experimental.gkd import GKDTrainer

    from atlas_lib.methods.gkd.trainer import AtlasGKDTrainer

    seen = []
    monkeypatch.setattr(GKDTrainer, "training_step", lambda self, model, inputs, n=None: seen.append(n) or 0)
    AtlasGKDTrainer.training_step(object.__new__(AtlasGKDTrainer), None, {}, torch.tensor(464))
    assert seen == [None] and AtlasGKDTrainer.loss_is_scaled_for_ga is False


# -- stop ids ------------------------------------------------------------------------------------
def test_every_generation_config_stop_id_stops_the_evaluator(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from atlas_lib.core.models import add_stop_ids
    from atlas_lib.evaluation.generation import generate_greedy

    tok = AutoTokenizer.from_pretrained(tiny["student"])
    model = AutoModelForCausalLM.from_pretrained(tiny["student"]).eval()
    free = generate_greedy(model, tok, ["What is 2 + 2?"], max_new_tokens=6, batch_size=1)[0]
    first = free["completion_ids"][0]
    assert first != tok.eos_token_id and free["n_tokens"] > 1
    add_stop_ids(model, [first])  # a second stop id besides the tokenizer's EOS
    assert tok.eos_token_id in [*([model.generation_config.eos_token_id] if isinstance(
        model.generation_config.eos_token_id, int) else model.generation_config.eos_token_id), tok.eos_token_id]
    stopped = generate_greedy(model, tok, ["What is 2 + 2?"], max_new_tokens=6, batch_size=1)[0]
    assert stopped["n_tokens"] <= 1 and not stopped["truncated"]


def test_embedded_qwen_pins_both_stop_ids():
    from atlas_lib.core.models import EMBEDDED

    for name in ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"):
        assert set(EMBEDDED[name].stop_ids) == {151645, 151643}
