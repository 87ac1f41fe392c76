"""Prompt + generation budget must fit each model's context, checked before any weights load."""

from __future__ import annotations

import pytest

from atlas_lib.core import config, models
from atlas_lib.core.validate import ParamsError
from atlas_lib.data import splits
from atlas_lib.data.prompts import build_messages, render_prompt
from atlas_lib.evaluation import context

TINY_CONTEXT = 1024  # the tiny test models' max_position_embeddings (atlas_lib/core/tiny.py)


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


def _longest_prompt(params, prep, name: str) -> int:
    """By hand: the longest rendered prompt, in ``name``'s tokens, over every split."""
    tok = models.load_tokenizer(name)
    return max(len(tok(render_prompt(tok, build_messages(r["question"], params.prompt)), add_special_tokens=False)
                   ["input_ids"]) for split in (prep.train, prep.val, prep.eval) for r in split)


def test_a_budget_inside_the_context_passes_and_reports_the_positions_it_needs(prepared):
    params, prep = prepared
    student, teacher = params.models.student, params.models.teacher
    needs = context.check_context(params, prep, [student, teacher], 8, "evaluation.max_new_tokens")
    assert needs == {student: _longest_prompt(params, prep, student) + 8,
                     teacher: _longest_prompt(params, prep, teacher) + 8}


def test_a_budget_that_fills_the_context_exactly_passes_and_one_more_token_fails(prepared):
    params, prep = prepared
    student = params.models.student
    room = TINY_CONTEXT - _longest_prompt(params, prep, student)
    assert context.check_context(params, prep, [student], room, "gkd.max_completion_length") == {student: TINY_CONTEXT}
    with pytest.raises(ParamsError, match=rf"it needs {TINY_CONTEXT + 1} positions, and {student} has {TINY_CONTEXT}\."):
        context.check_context(params, prep, [student], room + 1, "gkd.max_completion_length")


def test_the_context_comes_from_the_model_config(prepared):
    params, _ = prepared
    assert context.context_length(params.models.student) == TINY_CONTEXT  # tiny.py's max_position_embeddings


def test_a_gpt2_style_config_gives_its_n_positions(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_positions=321, n_embd=8, n_layer=1, n_head=1).save_pretrained(tmp_path)
    assert context.context_length(str(tmp_path)) == 321
