"""Cross-tokenizer distillation run: the kit's aligned-span loss for any tokenizer pair.

The math is in ``atlas_lib.methods.cross_tokenizer.step`` (its tests check that the kit's loss and TRL GOLD's
ULD loss move in the same direction on a ByteLevel pair). TRL's GOLD trainer refuses
SentencePiece tokenizers; the summary records whether GOLD would have accepted the pair and why.
The run goes through the same run loop, evaluator and run directory as GKD and GRPO.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from datasets import Dataset
from transformers import Trainer, TrainingArguments

from atlas_lib.core.config import Params
from atlas_lib.data.prompts import build_messages, render_prompt
from atlas_lib.methods.cross_tokenizer import alignment, step
from atlas_lib.methods.cross_tokenizer.config import CrossTokenizerConfig
from atlas_lib.training import loop
from atlas_lib.training.common import Parts, load_pair, run_method, with_lora

log = logging.getLogger(__name__)


class CrossTokenizerTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss is one on-policy aligned-span distillation micro-batch."""

    def __init__(self, *args, teacher, teacher_tokenizer, cross_cfg: CrossTokenizerConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.teacher_tokenizer, self.cross_cfg = teacher, teacher_tokenizer, cross_cfg
        self._extra: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = step.cross_tokenizer_step(
            model, self.processing_class, self.teacher, self.teacher_tokenizer, inputs["student_prompt"],
            cfg=self.cross_cfg, teacher_prompts=inputs["teacher_prompt"],
            references=inputs.get("reference"))
        if (ledger := getattr(self, "atlas_ledger", None)) is not None and model.training:
            ledger.sampled(metrics["generation_seconds"], metrics["student_sequence_tokens"])
            ledger.scored(metrics["teacher_forward_seconds"], metrics["teacher_sequence_tokens"])
            ledger.trained(metrics["student_sequence_tokens"])
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self._extra[k].append(float(v))
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs and self._extra:
            for k, vals in self._extra.items():
                logs[f"atlas/{k}"] = sum(vals) / len(vals)
            self._extra.clear()
        super().log(logs, start_time)


def _collate(rows: list[dict]) -> dict:
    return {k: [r[k] for r in rows] for k in rows[0]}


def _build(params: Params, prepared, device) -> Parts:
    c = params.cross_tokenizer
    _, student, s_tok, teacher, t_tok = load_pair(params, student=c.student, teacher=c.teacher,
                                                  student_dtype=loop.student_dtype(c, params, device))
    student = with_lora(student, c, "cross_tokenizer")
    ok, reason = step.gold_supported(s_tok, t_tok)  # recorded: would TRL's GOLD accept this pair?
    rows = []
    for r in prepared.train:
        msgs = build_messages(r["question"], params.prompt)
        rows.append({"student_prompt": render_prompt(s_tok, msgs), "teacher_prompt": render_prompt(t_tok, msgs),
                     "reference": r.get("solution") or f"Final Answer: {r['answer']}"})
    train_ds = Dataset.from_list(rows)

    def make(common: dict, callbacks: list):
        common = {**common, "remove_unused_columns": False}
        return CrossTokenizerTrainer(model=student, args=TrainingArguments(**common), train_dataset=train_ds,
                                     data_collator=_collate, processing_class=s_tok, callbacks=callbacks,
                                     teacher=teacher, teacher_tokenizer=t_tok, cross_cfg=c)

    return Parts(student, s_tok, make,
                 divergence_fn=lambda model: step.aligned_divergence_fn(model, s_tok, teacher, t_tok, beta=c.beta),
                 extra_summary={"student_model": c.student, "teacher_model": c.teacher,
                                "tokenizers": {"student": alignment.tokenizer_kind(s_tok), "teacher": alignment.tokenizer_kind(t_tok)},
                                "gold_supported": ok, "gold_reason": reason})


def run_cross_tokenizer(params: Params) -> dict:
    """Distil ``cross_tokenizer.teacher`` into ``cross_tokenizer.student`` (different tokenizers)."""
    return run_method(params, "cross_tokenizer", _build)
