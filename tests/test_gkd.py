"""GKD: the loss against an independent float64 formula, and the teacher scoring the student's sample."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.experimental.gkd import GKDConfig, GKDTrainer

from atlas_lib.methods.gkd.trainer import AtlasGKDTrainer, generalized_jsd


def jsd_float64(s_logits, t_logits, beta):
    """Independent closed form, float64, probabilities (not logs), TRL's mixture convention."""
    p_s = torch.softmax(s_logits.double(), -1)
    p_t = torch.softmax(t_logits.double(), -1)
    if beta == 0:
        return (p_t * (p_t.log() - p_s.log())).sum()
    if beta == 1:
        return (p_s * (p_s.log() - p_t.log())).sum()
    m = beta * p_t + (1 - beta) * p_s
    kl_t = (p_t * (p_t.log() - m.log())).sum()
    kl_s = (p_s * (p_s.log() - m.log())).sum()
    return beta * kl_t + (1 - beta) * kl_s


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_generalized_jsd_matches_float64_formula(beta):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 50, generator=g) * 3, torch.randn(7, 50, generator=g) * 3
    got = generalized_jsd(s, t, beta)
    assert torch.allclose(got.double(), jsd_float64(s, t, beta), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_generalized_jsd_zero_for_identical_and_positive_otherwise(beta):
    s = torch.randn(5, 30)
    assert generalized_jsd(s, s.clone(), beta).abs() < 1e-5
    assert generalized_jsd(s, torch.randn(5, 30), beta) > 1e-3


def test_beta_endpoints_match_kl_div():
    s, t = torch.randn(6, 40), torch.randn(6, 40)
    ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    fwd = F.kl_div(ls, lt, reduction="sum", log_target=True)  # KL(teacher || student)
    rev = F.kl_div(lt, ls, reduction="sum", log_target=True)  # KL(student || teacher)
    assert torch.allclose(generalized_jsd(s, t, 0.0), fwd, atol=1e-5)
    assert torch.allclose(generalized_jsd(s, t, 1.0), rev, atol=1e-5)


def test_chunking_does_not_change_the_value():
    s, t = torch.randn(33, 64), torch.randn(33, 64)
    assert torch.allclose(generalized_jsd(s, t, 0.5), generalized_jsd(s, t, 0.5, chunk_size=5), atol=1e-5)


def _trainer(tiny, tmp_path, cls=AtlasGKDTrainer, n=4, gradient_checkpointing=False, **kw):
    tok = AutoTokenizer.from_pretrained(tiny["student"])
    student = AutoModelForCausalLM.from_pretrained(tiny["student"])
    teacher = AutoModelForCausalLM.from_pretrained(tiny["teacher"])
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + 3?"},
                          {"role": "assistant", "content": f"REFERENCE ANSWER {i + 3}. Final Answer: {i + 3}"}]}
            for i in range(n)]
    args = GKDConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                     learning_rate=1e-4, lmbda=kw.pop("lmbda", 1.0), beta=0.5, max_new_tokens=6,
                     report_to="none", use_cpu=True, save_strategy="no", logging_steps=1, seed=0,
                     gradient_checkpointing=gradient_checkpointing)
    return cls(model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows),
               processing_class=tok, **kw)


def test_kit_loss_equals_stock_trl_loss(tiny, tmp_path):
    """Pins the math: completion-only logits and chunking must not change the GKD loss."""
    kit = _trainer(tiny, tmp_path, loss_chunk_size=3)
    stock = _trainer(tiny, tmp_path, cls=GKDTrainer)
    batch = next(iter(kit.get_train_dataloader()))
    batch = {k: v for k, v in batch.items()}
    with torch.no_grad():
        a = kit.compute_loss(kit.model, dict(batch))
        b = stock.compute_loss(stock.model, dict(batch))
    assert torch.isfinite(a) and a > 0
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a, b)


def test_gradient_checkpointing_keeps_the_sampling_cache_and_the_samples(tiny, tmp_path):
    """Stock TRL samples cache-less under gradient checkpointing (one full-sequence forward per
    token); the kit keeps the cache. With the same seed it samples the same completions as
    without checkpointing, and the training forward is checkpointed."""
    widths, samples = {}, {}
    for ckpt in (False, True):
        trainer = _trainer(tiny, tmp_path, gradient_checkpointing=ckpt)
        stock = _trainer(tiny, tmp_path, cls=GKDTrainer, gradient_checkpointing=ckpt)
        assert stock.generation_config.use_cache is (not ckpt) and trainer.generation_config.use_cache is True
        seen = widths.setdefault(ckpt, [])
        orig = trainer.generate_on_policy_outputs

        def spy(model, inputs, generation_config, orig=orig, out_list=samples.setdefault(ckpt, []), seen=seen):
            hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[1]),
                                                   with_kwargs=True)
            try:
                out = orig(model, inputs, generation_config)
            finally:
                hook.remove()
            out_list.append(out[0].clone())
            return out

        trainer.generate_on_policy_outputs = spy
        trainer.train()
        assert trainer.model.is_activation_checkpointing is ckpt
    assert widths[True] and set(widths[True][1:]) == {1}  # after the prompt, one new position per forward
    assert widths[True] == widths[False]
    assert all(torch.equal(a, b) for a, b in zip(samples[True], samples[False], strict=True))


def test_teacher_scores_the_students_sample_not_the_reference(tiny, tmp_path):
    trainer = _trainer(tiny, tmp_path)
    generated, seen_by_teacher = [], []
    orig_gen = trainer.generate_on_policy_outputs

    def spy_gen(model, inputs, generation_config):
        out = orig_gen(model, inputs, generation_config)
        generated.append(out[0].clone())
        return out

    trainer.generate_on_policy_outputs = spy_gen
    hook = trainer.teacher_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen_by_teacher.append(kwargs["input_ids"].clone()), with_kwargs=True)
    trainer.train()
    hook.remove()
    assert generated and seen_by_teacher
    assert torch.equal(seen_by_teacher[0], generated[0])
    ref_ids = trainer.processing_class("REFERENCE ANSWER", add_special_tokens=False)["input_ids"]
    rows = seen_by_teacher[0].tolist()
    assert not any(ref_ids == r[i:i + len(ref_ids)] for r in rows for i in range(len(r)))


def test_nan_loss_stops_with_the_step(tiny, tmp_path):
    from atlas_lib.training.finite import NonFiniteError

    trainer = _trainer(tiny, tmp_path)
    with torch.no_grad():  # the teacher's logits become NaN; student sampling still works
        trainer.teacher_model.get_output_embeddings().weight.fill_(float("nan"))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(NonFiniteError, match="step 1"):
        trainer.train()
    # stopped before the optimizer applied it: the student's weights are untouched
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_training_moves_the_student_towards_the_teacher(tiny, tmp_path):
    """The sign and wiring of the whole step: a few on-policy GKD steps lower the student's
    reverse KL to the teacher at the completion positions of its training prompts, measured on
    fixed sequences (prompt + the student's greedy completion before training) outside the trainer."""
    from atlas_lib.evaluation.evaluate import reverse_kl_per_token

    trainer = _trainer(tiny, tmp_path, n=8)
    trainer.args.max_steps, trainer.args.learning_rate = 16, 3e-3
    tok = trainer.processing_class
    texts = [tok.apply_chat_template([{"role": "user", "content": f"What is {i} + 3?"}], tokenize=False,
                                     add_generation_prompt=True) for i in range(8)]  # the training prompts
    prompts = torch.tensor([tok(t, add_special_tokens=False)["input_ids"] for t in texts])
    with torch.no_grad():
        ids = trainer.model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=8,
                                     min_new_tokens=8, do_sample=False)
    n_prompt = prompts.shape[1]

    def kl() -> float:
        with torch.no_grad():
            s, t = trainer.model(ids).logits, trainer.teacher_model(ids).logits
        sl = slice(n_prompt - 1, ids.shape[1] - 1)  # the positions that predict completion tokens
        return float(reverse_kl_per_token(s[:, sl], t[:, sl], torch.ones(ids.shape[0], sl.stop - sl.start)).mean())

    before = kl()
    trainer.train()
    after = kl()
    assert after < 0.7 * before, (before, after)
