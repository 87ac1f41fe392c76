"""The shared prompt: messages, chat-template rendering and the plain-text fallback for base models."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from atlas_lib.core.sections import PromptConfig
from atlas_lib.data.answers import extract_answer, is_correct
from atlas_lib.data.prompts import (
    DEFAULT_SHOTS,
    build_messages,
    format_solution,
    has_chat_template,
    render_prompt,
)

Q = "Ben has 4 boxes of 6 pens. How many pens does he have?"


def test_build_messages_layout():
    cfg = PromptConfig(few_shot=2)
    msgs = build_messages(Q, cfg)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[0]["content"] == cfg.system
    assert msgs[-1]["content"] == f"{Q}\n{cfg.instruction}"
    for shot, reply in zip(DEFAULT_SHOTS, msgs[2::2], strict=False):
        assert reply["content"].endswith(f"Final Answer: {shot['answer']}")
        assert is_correct(reply["content"], shot["answer"])  # the default shots are self-consistent


def test_few_shot_zero_and_too_many_shots():
    assert [m["role"] for m in build_messages(Q, PromptConfig(few_shot=0))] == ["system", "user"]
    msgs = build_messages(Q, PromptConfig(few_shot=1))
    assert msgs[1]["content"].startswith(DEFAULT_SHOTS[0]["question"])
    too_many = len(DEFAULT_SHOTS) + 1
    with pytest.raises(ValueError, match=f"prompt.few_shot = {too_many}"):
        build_messages(Q, PromptConfig(few_shot=too_many))


@pytest.mark.parametrize(("solution", "answer", "expected"), [
    ("48/2 = <<48/2=24>>24 clips.\n#### 24", "24", "48/2 = 24 clips.\nFinal Answer: 24"),
    ("So 2 + 3 = 5.\nThe answer is: 5", "5", "So 2 + 3 = 5.\nFinal Answer: 5"),
    ("Add them.\nFinal Answer: 5\n", "5", "Add them.\nFinal Answer: 5"),
    (None, "5", "Final Answer: 5"),
])
def test_format_solution_ends_with_one_final_answer_line(solution, answer, expected):
    assert format_solution(solution, answer) == expected


def test_render_with_chat_template(tiny):
    tok = AutoTokenizer.from_pretrained(tiny["student"])
    assert has_chat_template(tok)
    msgs = build_messages(Q, PromptConfig(few_shot=1))
    text = render_prompt(tok, msgs)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert text.count("<|im_start|>user") == 2 and DEFAULT_SHOTS[0]["question"] in text


def test_render_without_chat_template_is_plain_text(tiny):
    tok = AutoTokenizer.from_pretrained(tiny["sp_student"])
    assert not has_chat_template(tok)
    cfg = PromptConfig(few_shot=1)
    text = render_prompt(tok, build_messages(Q, cfg))
    assert text.startswith(cfg.system + "\n\nQuestion: " + DEFAULT_SHOTS[0]["question"])
    assert text.endswith(f"Question: {Q}\n{cfg.instruction}\nAnswer:")
    assert text.count("Question:") == 2 and "Final Answer: 12\n\nQuestion:" in text
    assert "<|im_start|>" not in text
    # a base model running on into a new block is scored on its own answer only
    assert extract_answer(" 4 * 6 = 24.\nFinal Answer: 24\n\nQuestion: Tom has 3 cats.\nAnswer: 3") == "24"


def test_template_without_system_role_gets_it_merged(tiny):
    tok = AutoTokenizer.from_pretrained(tiny["student"])
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}"
                         "<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>")
    text = render_prompt(tok, build_messages(Q, PromptConfig(few_shot=0)))
    assert text.startswith("<user>" + PromptConfig().system) and text.endswith("<assistant>")


def test_the_few_shot_range_matches_the_worked_examples():
    from atlas_lib.core.sections import MAX_FEW_SHOT

    assert MAX_FEW_SHOT == len(DEFAULT_SHOTS)
