"""Does every prompt plus its generation budget fit each model's context window? Checked from the
tokenizer and the model's config before any weights load, so an oversized row or budget is one
message naming the row, not an index error deep inside a forward pass an hour into a run."""

from __future__ import annotations

import logging

from atlas_lib.core import models
from atlas_lib.core.config import Params
from atlas_lib.core.validate import ParamsError
from atlas_lib.data.prompts import build_messages, render_prompt

log = logging.getLogger(__name__)


def context_length(name: str, trust_remote_code: bool = False) -> int | None:
    """The model's maximum positions from its config (no weights loaded); None when it has none."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(models.resolve_path(name), trust_remote_code=trust_remote_code)
    cfg = getattr(cfg, "text_config", None) or cfg  # multimodal configs keep the language model's inside
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(params: Params, prepared, names: list[str], budget: int, budget_field: str) -> dict[str, int]:
    """Raise :class:`ParamsError` when the longest prompt of ``prepared`` (every split) plus ``budget``
    new tokens exceeds the context of a model in ``names``, naming the row and what to change.

    Returns the positions each checked model needs (longest prompt + budget); a model whose config
    gives no context length is not checked and not listed."""
    rows = [(split, r) for split in ("train", "val", "eval") for r in (getattr(prepared, split, None) or [])]
    needs: dict[str, int] = {}
    if not rows:
        return needs
    trc = params.models.trust_remote_code
    for name in dict.fromkeys(names):
        ctx = context_length(name, trc)
        if ctx is None:
            continue
        tok = models.load_tokenizer(name, trc)
        prompts = [render_prompt(tok, build_messages(r["question"], params.prompt)) for _, r in rows]
        lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
        longest = max(range(len(rows)), key=lengths.__getitem__)
        need = lengths[longest] + budget
        log.info("context: the longest prompt has %d tokens for %s; with %s = %d it needs %d of %d positions",
                 lengths[longest], name, budget_field, budget, need, ctx)
        if need > ctx:
            split, row = rows[longest]
            raise ParamsError(
                f"row {row.get('id')!r} of the prepared {split} split has a {lengths[longest]}-token prompt: with "
                f"{budget_field} = {budget} new tokens it needs {need} positions, and {name} has {ctx}. Lower "
                f"{budget_field} or prompt.few_shot, or remove the longest rows from data.path")
        needs[name] = need
    return needs
