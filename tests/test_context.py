"""Prompt + generation budget must fit each model's context, checked before any weights load."""

from __future__ import annotations

import pytest

from atlas_lib.core import config
from atlas_lib.core.validate import ParamsError
from atlas_lib.data import splits
from atlas_lib.evaluation import context


@pytest.fixture
def prepared(env):
    params = config.load("params/smoke.yaml", overrides={"tracking.wandb": "disabled"})
    return params, splits.prepare(params)


def test_a_budget_past_the_context_names_the_row_and_the_fix(prepared):
    params, prep = prepared
    ctx = context.context_length(params.models.student)
    with pytest.raises(ParamsError, match=rf"row '.+' of the prepared \w+ split has a \d+-token prompt: with "
                                          rf"gkd.max_completion_length = {ctx} new tokens .* has {ctx}\. Lower"):
        context.check_context(params, prep, [params.models.student], ctx, "gkd.max_completion_length")


def test_a_budget_inside_the_context_passes(prepared):
    params, prep = prepared
    context.check_context(params, prep, [params.models.student, params.models.teacher], 8, "evaluation.max_new_tokens")


def test_the_context_comes_from_the_model_config(prepared):
    params, _ = prepared
    assert context.context_length(params.models.student) > 0
