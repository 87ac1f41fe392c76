"""Each distilling method reports, on held-out answers, the quantity its loss minimises: the number
in the report is the training loss itself on those answers, not a neighbouring divergence."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from atlas_lib.core import config, registry
from atlas_lib.core.sections import TrainSection
from atlas_lib.core.validate import fld
from atlas_lib.data.prompts import render_prompt
from atlas_lib.evaluation import evaluate as ev
from atlas_lib.evaluation.baselines import objectives
from atlas_lib.evaluation.divergence import Objective, gjsd_objective
from atlas_lib.methods.cross_tokenizer import step
from atlas_lib.methods.cross_tokenizer.config import CrossTokenizerConfig
from atlas_lib.training import outcome

MSGS = [[{"role": "user", "content": q}] for q in ("Tom has 3 apples and buys 5 more. How many?",
                                                  "What is 12 times 4?", "Add 7 and 9.")]
ANSWERS = ["3 + 5 = 8. Final Answer: 8", "12 * 4 = 48\nFinal Answer: 48", "Final Answer: 16"]


@pytest.fixture(scope="module")
def pair(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s_tok, t_tok = AutoTokenizer.from_pretrained(tiny["cross_student"]), AutoTokenizer.from_pretrained(tiny["teacher"])
    student = AutoModelForCausalLM.from_pretrained(tiny["cross_student"]).eval()  # eval: no dropout in either pass
    teacher = AutoModelForCausalLM.from_pretrained(tiny["teacher"]).eval()
    return student, s_tok, teacher, t_tok


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_the_heldout_objective_is_the_training_loss_on_a_fixed_batch(pair, beta):
    """One batch of three stopped answers, scored by the training step (references, lmbda 0) and by the
    evaluator's divergence function: the span-weighted held-out objective is the step's loss."""
    student, s_tok, teacher, t_tok = pair
    s_prompts = [render_prompt(s_tok, m) for m in MSGS]
    t_prompts = [render_prompt(t_tok, m) for m in MSGS]
    cfg = CrossTokenizerConfig(lmbda=0.0, beta=beta, max_completion_length=32)
    loss, metrics = step.cross_tokenizer_step(student, s_tok, teacher, t_tok, s_prompts, cfg=cfg,
                                              teacher_prompts=t_prompts, references=ANSWERS)
    records = [{"prompt": p, "teacher_prompt": tp, "completion": a, "truncated": False}
               for p, tp, a in zip(s_prompts, t_prompts, ANSWERS, strict=True)]
    rows = step.aligned_divergence_fn(student, s_tok, teacher, t_tok, beta=beta)(records)
    for r, row in zip(records, rows, strict=True):
        r.update(row)
    assert sum(r["objective_units"] for r in records) == metrics["spans"]
    assert ev.heldout_objective(records) == pytest.approx(loss.item(), rel=1e-5, abs=1e-7)
    assert loss.item() > 0


def test_one_answer_alone_is_the_loss_of_a_batch_of_one(pair):
    student, s_tok, teacher, t_tok = pair
    p, tp = render_prompt(s_tok, MSGS[1]), render_prompt(t_tok, MSGS[1])
    cfg = CrossTokenizerConfig(lmbda=0.0, beta=0.5, max_completion_length=32)
    loss, _ = step.cross_tokenizer_step(student, s_tok, teacher, t_tok, [p], cfg=cfg, teacher_prompts=[tp],
                                        references=[ANSWERS[1]])
    row = step.aligned_divergence_fn(student, s_tok, teacher, t_tok, beta=0.5)(
        [{"prompt": p, "teacher_prompt": tp, "completion": ANSWERS[1], "truncated": False}])[0]
    assert row["objective"] == pytest.approx(loss.item(), rel=1e-5)


def test_a_cut_answer_has_no_stop_pair_and_a_stopped_one_has(pair):
    """The stop event is trained whenever the student stopped; an answer cut at the budget has none."""
    student, s_tok, teacher, t_tok = pair
    rec = {"prompt": render_prompt(s_tok, MSGS[0]), "teacher_prompt": render_prompt(t_tok, MSGS[0]),
           "completion": ANSWERS[0]}
    fn = step.aligned_divergence_fn(student, s_tok, teacher, t_tok, beta=0.5)
    stopped, cut = fn([{**rec, "truncated": False}])[0], fn([{**rec, "truncated": True}])[0]
    assert stopped["objective_units"] == cut["objective_units"] + 1
    # the aligned divergence is over text only: the stop pair does not change it
    assert stopped["aligned_divergence"] == pytest.approx(cut["aligned_divergence"], abs=1e-6)


def test_the_log_ratio_counts_the_stop_pair_of_a_finished_answer(pair):
    """logratio.VERSION 2: a finished answer adds each model's stop token, so an answer cut at the
    budget no longer scores like one that stopped."""
    student, s_tok, teacher, t_tok = pair
    rec = {"prompt": render_prompt(s_tok, MSGS[0]), "teacher_prompt": render_prompt(t_tok, MSGS[0]),
           "completion": ANSWERS[0]}
    fn = step.aligned_divergence_fn(student, s_tok, teacher, t_tok, beta=0.5)
    stopped, cut = fn([{**rec, "truncated": False}])[0], fn([{**rec, "truncated": True}])[0]
    assert stopped["logratio_per_char"] != pytest.approx(cut["logratio_per_char"], abs=1e-6)
    assert stopped["logratio_version"] == cut["logratio_version"] == 2


def test_the_teacher_against_itself_has_zero_objective(pair):
    _, _, teacher, t_tok = pair
    p = render_prompt(t_tok, MSGS[2])
    row = step.aligned_divergence_fn(teacher, t_tok, teacher, t_tok, beta=0.5)(
        [{"prompt": p, "teacher_prompt": p, "completion": ANSWERS[2], "truncated": False}])[0]
    assert abs(row["objective"]) < 1e-6


def test_heldout_objective_weights_rows_by_their_units_and_skips_missing():
    recs = [{"objective": 1.0, "objective_units": 1}, {"objective": 4.0, "objective_units": 3},
            {"objective": None}, {}]
    assert ev.heldout_objective(recs) == pytest.approx((1.0 + 12.0) / 4)
    assert ev.heldout_objective([{}]) is None
    assert ev.aggregate([{"correct": True, "generated_tokens": 3, "prompt_tokens": 5, "truncated": False,
                          "extracted": "1", "objective": 0.25, "objective_units": 2}])["heldout_objective"] == 0.25


def test_a_run_whose_own_objective_rose_is_flagged():
    base = {"method": "cross_tokenizer", "initial": {"aligned_divergence": 0.5, "heldout_objective": 0.20},
            "distilled": {"aligned_divergence": 0.4, "heldout_objective": 0.25}}
    flags = outcome.flags(base)
    assert flags == ["its own objective rose on held-out answers: 0.200 -> 0.250"]


def test_a_run_whose_objective_and_divergence_fell_is_not_flagged():
    base = {"method": "gold", "initial": {"aligned_divergence": 0.5, "heldout_objective": 0.30},
            "distilled": {"aligned_divergence": 0.4, "heldout_objective": 0.25}}
    assert outcome.flags(base) == []


def test_a_gold_run_whose_aligned_divergence_rose_is_flagged():
    base = {"method": "gold", "initial": {"aligned_divergence": 0.4}, "distilled": {"aligned_divergence": 0.5}}
    assert outcome.flags(base) == ["moved away from the teacher: aligned divergence 0.400 -> 0.500"]


def test_grpo_is_not_flagged_for_its_divergence():
    base = {"method": "grpo", "initial": {"mean_reverse_kl": 0.1, "heldout_objective": 0.1},
            "distilled": {"mean_reverse_kl": 0.3, "heldout_objective": 0.2}}
    assert outcome.flags(base) == []


# ---- same tokenizer (GKD): the evaluator's objective is the GKD trainer's loss ----------------------

@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_gkd_heldout_objective_is_the_trainers_loss_on_a_fixed_batch(tiny, tmp_path, beta):
    """Two answers of different lengths (one stopped, one cut), each scored by the evaluator at the
    trainer's beta; their token-weighted objective is the GKD trainer's loss on the batch of both."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig

    from atlas_lib.methods.gkd.config import GKDConfig as GKDSection
    from atlas_lib.methods.gkd.objective import objective
    from atlas_lib.methods.gkd.trainer import AtlasGKDTrainer

    tok = AutoTokenizer.from_pretrained(tiny["student"])
    student = AutoModelForCausalLM.from_pretrained(tiny["student"]).eval()
    teacher = AutoModelForCausalLM.from_pretrained(tiny["teacher"]).eval()
    rows = [{"messages": [{"role": "user", "content": "What is 1 + 3?"},
                          {"role": "assistant", "content": "Final Answer: 4"}]}] * 2
    args = GKDConfig(output_dir=str(tmp_path / "o"), max_steps=1, per_device_train_batch_size=2, lmbda=1.0,
                     beta=beta, max_new_tokens=6, report_to="none", use_cpu=True, save_strategy="no")
    tr = AtlasGKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    prompt = tok(render_prompt(tok, MSGS[1]), add_special_tokens=False)["input_ids"]
    answers = [tok("12 * 4 = 48\nFinal Answer: 48", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
               tok("Final Answer: 4", add_special_tokens=False)["input_ids"]]
    width = len(prompt) + max(map(len, answers))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids, labels, mask = [], [], []
    for a in answers:  # left-padded prompts ending in one column, as TRL lays out a sampled batch
        row = prompt + a + [pad] * (width - len(prompt) - len(a))
        ids.append(row)
        labels.append([-100] * len(prompt) + a + [-100] * (width - len(prompt) - len(a)))
        mask.append([1] * (len(prompt) + len(a)) + [0] * (width - len(prompt) - len(a)))
    inputs = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}
    with torch.no_grad():
        loss = float(tr.compute_loss(student, dict(inputs)))
    gens = [{"prompt_ids": prompt, "completion_ids": a, "truncated": i == 1} for i, a in enumerate(answers)]
    obj = objective(GKDSection(beta=beta))  # the gkd section's own objective, at the trainer's beta
    scored = ev.score_completions(student, teacher, gens, batch_size=2, vocab_size=len(tok), objectives=(obj,))
    recs = [{"objective": sc["objective_by_beta"][obj.key], "objective_units": len(sc["kl"])}
            for sc in scored]
    assert [r["objective_units"] for r in recs] == [len(a) for a in answers]
    assert ev.heldout_objective(recs) == pytest.approx(loss, rel=1e-4)
    if beta == 1.0:  # at beta 1 the objective is the reverse KL the table already shows
        assert recs[1]["objective"] == pytest.approx(sum(scored[1]["kl"]) / len(scored[1]["kl"]), rel=1e-4)


def test_the_baseline_scores_the_objectives_of_the_enabled_same_tokenizer_distillers():
    p = config.load("params/smoke.yaml", overrides={"gkd.beta": 0.25, "off_policy.enabled": True,
                                                     "off_policy.beta": 0.75})
    # not GRPO's KL coefficient, not the cross-tokenizer arms' betas
    assert objectives(p) == (gjsd_objective(0.25), gjsd_objective(0.75))


def test_the_baseline_scores_nothing_without_a_same_tokenizer_distiller():
    off = {"gkd.enabled": False, "off_policy.enabled": False}
    assert objectives(config.load("params/smoke.yaml", overrides=off)) == ()


def test_two_methods_at_one_beta_are_scored_once():
    p = config.load("params/smoke.yaml", overrides={"gkd.beta": 0.5, "off_policy.enabled": True,
                                                     "off_policy.beta": 0.5})
    assert [o.key for o in objectives(p)] == ["0.5"]


@dataclass
class DPOLikeConfig(TrainSection):
    """A section with a ``beta`` that is a preference temperature, not a generalized-JSD beta."""

    beta: float = fld(0.1, "DPO's preference temperature (not a JSD beta).", gt=0.0)


def _kl_objective(section) -> Objective:
    """A method's own same-tokenizer objective that is not a generalized JSD: a scaled reverse KL."""
    def terms(s_B_T_V, t_B_T_V, mask_B_T):
        return section.beta * (s_B_T_V.exp() * (s_B_T_V - t_B_T_V)).sum(-1) * mask_B_T
    return Objective("scaled reverse KL", f"rkl x {section.beta:g}", terms)


@pytest.fixture
def dpo_like():
    def register(objective=None):
        return registry.register(registry.Method("dpo_like", DPOLikeConfig, lambda params: {}, "02_gkd", "DPO-like",
                                                 "DPO-like", "C7", "DPO-like: preference loss", objective=objective))
    yield register
    registry.unregister("dpo_like")


def _smoke_with(**overrides):
    return config.load("params/smoke.yaml", overrides={"dpo_like.beta": 0.25, "gkd.beta": 0.5, **overrides})


def test_a_method_with_a_beta_that_declares_no_objective_is_not_scored_at_it(dpo_like):
    """Its beta (0.25) is no JSD beta: the baseline scores only gkd's declared objective (beta 0.5)."""
    dpo_like()
    p = _smoke_with()
    assert "dpo_like" in p.enabled()
    assert [o.key for o in objectives(p)] == ["0.5"]


def test_a_method_that_declares_its_own_objective_is_scored_under_it(dpo_like):
    dpo_like(objective=_kl_objective)
    p = _smoke_with(**{"gkd.enabled": False, "off_policy.enabled": False})
    assert [o.key for o in objectives(p)] == ["rkl x 0.25"]
