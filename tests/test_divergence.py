"""The one generalized JSD as an evaluator objective: its per-token terms against an independent
float64 closed form, and the per-answer score against the GKD trainer's call."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_gkd import jsd_float64  # the independent closed form (probabilities, float64, TRL's mixture)

from atlas_lib.evaluation.divergence import Objective, generalized_jsd, gjsd_objective


def _logits(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 11, generator=g) * 3, torch.randn(2, 3, 11, generator=g) * 3  # [B, T, V]


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_per_token_terms_are_the_closed_form_generalized_jsd(beta):
    s_B_T_V, t_B_T_V = _logits()
    got_B_T = gjsd_objective(beta).terms(F.log_softmax(s_B_T_V, -1), F.log_softmax(t_B_T_V, -1),
                                         torch.ones(2, 3, dtype=torch.bool))
    want_B_T = torch.tensor([[float(jsd_float64(s_B_T_V[b, t], t_B_T_V[b, t], beta)) for t in range(3)]
                             for b in range(2)], dtype=torch.float64)
    assert torch.allclose(got_B_T.double(), want_B_T, rtol=1e-4, atol=1e-6)


def test_masked_positions_score_zero_even_when_their_logits_are_not_finite():
    s_B_T_V, t_B_T_V = _logits()
    s_B_T_V[1, 2] = float("nan")  # a padded column
    mask_B_T = torch.tensor([[True, True, True], [True, True, False]])
    got_B_T = gjsd_objective(0.5).terms(F.log_softmax(s_B_T_V, -1), F.log_softmax(t_B_T_V, -1), mask_B_T)
    assert got_B_T[1, 2] == 0
    assert torch.isfinite(got_B_T).all()


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_the_per_answer_score_is_the_trainers_loss_per_token(beta):
    s_B_T_V, t_B_T_V = _logits(1)
    want = float(generalized_jsd(s_B_T_V[0], t_B_T_V[0], beta)) / 3  # the GKD trainer's call, per token
    assert gjsd_objective(beta).per_answer(s_B_T_V[0], t_B_T_V[0]) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_the_temperature_divides_both_models_logits(beta):
    s_B_T_V, t_B_T_V = _logits(2)
    got = generalized_jsd(s_B_T_V[0], t_B_T_V[0], beta, temperature=2.0)
    want = sum(float(jsd_float64(s_B_T_V[0, t] / 2, t_B_T_V[0, t] / 2, beta)) for t in range(3))
    assert float(got) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("chunk_size", [0, 3])
def test_every_position_is_summed_when_there_are_more_positions_than_vocabulary_entries(chunk_size):
    g = torch.Generator().manual_seed(3)
    s_N_V, t_N_V = torch.randn(20, 5, generator=g) * 3, torch.randn(20, 5, generator=g) * 3
    got = generalized_jsd(s_N_V, t_N_V, 0.5, chunk_size=chunk_size)
    assert float(got) == pytest.approx(float(jsd_float64(s_N_V, t_N_V, 0.5)), rel=1e-4)


def test_a_one_token_answer_scores_its_one_position():
    s_B_T_V, t_B_T_V = _logits(4)
    want = float(generalized_jsd(s_B_T_V[0, :1], t_B_T_V[0, :1], 0.5))
    assert gjsd_objective(0.5).per_answer(s_B_T_V[0, :1], t_B_T_V[0, :1]) == pytest.approx(want, rel=1e-6)


def test_the_objective_names_its_beta_in_words():
    assert gjsd_objective(0.25).name == "generalized JSD (beta 0.25)"


def test_the_key_is_the_stored_beta_string():
    """Committed records keep their scores under ``objective_by_beta["0.5"]``: the key must not change."""
    assert [gjsd_objective(b).key for b in (0, 0.5, 1.0, 0.25)] == ["0", "0.5", "1", "0.25"]


def test_objectives_with_one_key_are_one_objective():
    assert gjsd_objective(0.5) == gjsd_objective(0.5)
    assert gjsd_objective(0.5) != gjsd_objective(0.25)
    assert Objective("a", "k", lambda *a: None) == Objective("a", "k", lambda *a: None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_per_answer_score_on_cuda_logits_is_the_cpu_score():
    """The evaluator scores answers on the GPU: a mask or buffer made on the CPU would fail there, and
    only there (a CPU run of the other tests cannot see the device)."""
    s_B_T_V, t_B_T_V = _logits(5)
    want = gjsd_objective(0.5).per_answer(s_B_T_V[0], t_B_T_V[0])
    got = gjsd_objective(0.5).per_answer(s_B_T_V[0].cuda(), t_B_T_V[0].cuda())
    assert got == pytest.approx(want, rel=1e-5)
