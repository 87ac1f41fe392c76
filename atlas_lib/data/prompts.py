"""One prompt template, shared by every training method and by evaluation.

:func:`build_messages` builds the chat (system, few-shot user/assistant pairs, the question with
``prompt.instruction`` appended); :func:`render_prompt` turns it into the exact string a model sees.
Every assistant turn written by the kit ends with ``Final Answer: <answer>``, the line the
instruction asks for and :mod:`atlas_lib.data.answers` reads first.
"""

from __future__ import annotations

import logging
import re

from atlas_lib.core.sections import PromptConfig

log = logging.getLogger(__name__)

DEFAULT_SHOTS: tuple[dict, ...] = (
    {
        "question": "A baker makes 24 muffins in the morning and 18 in the afternoon. He sells 30 of them. "
                    "How many muffins are left?",
        "solution": "He makes 24 + 18 = 42 muffins.\nAfter selling 30, he has 42 - 30 = 12 muffins left.",
        "answer": "12",
    },
    {
        "question": "Maria buys 3 notebooks at $4 each and a pen for $2. She pays with a $20 bill. "
                    "How much change does she get?",
        "solution": "The notebooks cost 3 * 4 = $12.\nWith the pen she spends 12 + 2 = $14.\n"
                    "Her change is 20 - 14 = $6.",
        "answer": "6",
    },
)

# Prompt controls (evaluation.controls): the untrained student under another prompt, no training, evaluated by
# notebook 01 on the same test problems with the same grader and decoding as every row. Each is a change to
# the prompt section alone (control_prompt), so a control row differs from the student's row only there.
CONTROLS: dict[str, dict] = {
    # Does a prompt alone elicit the worked arithmetic a distilled student writes (its teacher's format)?
    "step_by_step": {
        "label": "Student, step-by-step prompt",
        "instruction": "Work it out step by step: write each arithmetic operation on its own line, as in "
                       "'24 + 18 = 42', then end with a line of the form 'Final Answer: <number>'.",
    },
}


def control_prompt(prompt_cfg: PromptConfig, name: str) -> PromptConfig:
    """The prompt of control ``name``: ``prompt_cfg`` with the control's instruction; system message and
    worked examples unchanged (the examples' user turns carry the same instruction, as every prompt's do)."""
    import dataclasses

    return dataclasses.replace(prompt_cfg, instruction=CONTROLS[name]["instruction"])


_CALC = re.compile(r"<<[^<>]*>>")  # GSM8K calculator annotations: 48/2 = <<48/2=24>>24
_ANSWER_LINE = re.compile(r"(?:\n|^)[ \t]*(?:####|the answer is\b|final answer\b)[^\n]*\s*$", re.IGNORECASE)


def format_solution(solution: str | None, answer: str) -> str:
    """An assistant turn: the worked solution (calculator notes and its own answer line removed),
    then ``Final Answer: <answer>``. Without a solution it is the answer line alone."""
    body = _CALC.sub("", solution or "").strip()
    while True:  # drop trailing "#### 72" / "The answer is: 72" / "Final Answer: 72" lines
        stripped = _ANSWER_LINE.sub("", body).rstrip()
        if stripped == body:
            break
        body = stripped
    return f"{body}\nFinal Answer: {answer}" if body else f"Final Answer: {answer}"


def user_text(question: str, prompt_cfg: PromptConfig) -> str:
    """The user turn: the question, then the instruction asking for the final-answer line."""
    instruction = (prompt_cfg.instruction or "").strip()
    return f"{question.strip()}\n{instruction}" if instruction else question.strip()


def build_messages(question: str, prompt_cfg: PromptConfig) -> list[dict]:
    """System message, the first ``prompt_cfg.few_shot`` of :data:`DEFAULT_SHOTS`, then the question."""
    pool = list(DEFAULT_SHOTS)
    k = prompt_cfg.few_shot
    if k > len(pool):
        raise ValueError(f"prompt.few_shot = {k} but only {len(pool)} worked examples are available; "
                         "lower prompt.few_shot")
    messages = [{"role": "system", "content": prompt_cfg.system}] if prompt_cfg.system else []
    for shot in pool[:k]:
        messages.append({"role": "user", "content": user_text(shot["question"], prompt_cfg)})
        messages.append({"role": "assistant", "content": format_solution(shot.get("solution"), shot["answer"])})
    messages.append({"role": "user", "content": user_text(question, prompt_cfg)})
    return messages


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer ships a chat template (instruct models) or not (base models)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _plain_text(messages: list[dict]) -> str:
    parts = []
    for msg in messages:
        if msg["role"] == "system":
            parts.append(msg["content"].strip() + "\n\n")
        elif msg["role"] == "user":
            parts.append(f"Question: {msg['content'].strip()}\nAnswer:")
        else:  # assistant turn of a few-shot example
            parts.append(f" {msg['content'].strip()}\n\n")
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("render_prompt: the last message must be the user's question")
    return "".join(parts)


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt string a model is given, ending where its answer should start.

    With a chat template: ``apply_chat_template(..., add_generation_prompt=True)``; the string
    already carries the template's special tokens, so tokenize it with ``add_special_tokens=False``.
    A template that rejects the system role gets the system text prepended to the first user turn.

    Without one (base models such as gemma-3-270m) the same content is plain text::

        <system>

        Question: <shot question>
        <instruction>
        Answer: <shot solution>
        Final Answer: <shot answer>

        Question: <question>
        <instruction>
        Answer:

    Tokenize that with ``add_special_tokens=True`` (the tokenizer adds its BOS). A base model tends
    to continue with a new ``Question:`` block; :func:`atlas_lib.data.answers.extract_answer` ignores
    everything from there on, and generation may use ``"\\nQuestion:"`` as a stop string.
    """
    if not has_chat_template(tokenizer):
        return _plain_text(messages)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja2 TemplateError: e.g. "System role not supported"
        if not messages or messages[0]["role"] != "system":
            raise
        log.info("chat template rejected the system role (%s); merging it into the first user turn", e)
        merged = [dict(m) for m in messages[1:]]
        merged[0]["content"] = f"{messages[0]['content']}\n\n{merged[0]['content']}"
        return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
