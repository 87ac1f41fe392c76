"""Cross-tokenizer distillation run: the kit's aligned-span loss for any tokenizer pair.

The math is in ``atlas_lib.cross_tokenizer`` (its tests check that the kit's loss and TRL GOLD's
ULD loss move in the same direction on a ByteLevel pair). TRL's GOLD trainer refuses
SentencePiece tokenizers; the summary records whether GOLD would have accepted the pair and why.
The run goes through the same run loop, evaluator and run directory as GKD and GRPO.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from transformers import Trainer, TrainingArguments

from atlas_lib import cross_tokenizer as xt
from atlas_lib.config import CrossTokenizerConfig, Params

log = logging.getLogger(__name__)
DIVERGENCE_LABEL = ("aligned span divergence to the teacher (cross-tokenizer; not comparable with "
                    "same-tokenizer reverse KL)")


class CrossTokenizerTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss is one on-policy aligned-span distillation micro-batch."""

    def __init__(self, *args, teacher, teacher_tokenizer, cross_cfg: CrossTokenizerConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.teacher_tokenizer, self.cross_cfg = teacher, teacher_tokenizer, cross_cfg
        self._extra: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = xt.cross_tokenizer_step(
            model, self.processing_class, self.teacher, self.teacher_tokenizer, inputs["student_prompt"],
            cfg=self.cross_cfg, teacher_prompts=inputs["teacher_prompt"],
            references=inputs.get("reference"))
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


def run_cross_tokenizer(params: Params) -> dict:
    """Distil ``cross_tokenizer.teacher`` into ``cross_tokenizer.student`` (different tokenizers)."""
    from datasets import Dataset

    from atlas_lib import data as data_mod
    from atlas_lib import models, training
    from atlas_lib.prompts import build_messages, render_prompt
    from atlas_lib.stages import build_eval_fn, seed_everything, teacher_dtype

    c = params.cross_tokenizer
    seed_everything(params)
    prepared = data_mod.load_prepared(params)
    device = models.resolve_device(params.run.device)
    trc = params.models.trust_remote_code
    student, s_tok = models.load_model(c.student, dtype=torch.float32, device=device, trust_remote_code=trc,
                                       for_training=True)
    teacher, t_tok = models.load_model(c.teacher, dtype=teacher_dtype(params, device), device=device,
                                       trust_remote_code=trc)
    ok, reason = xt.gold_supported(s_tok, t_tok)  # recorded: would TRL's GOLD accept this pair?
    shots = None
    rows = []
    for r in prepared.train:
        msgs = build_messages(r["question"], params.prompt, shots or ())
        rows.append({"student_prompt": render_prompt(s_tok, msgs), "teacher_prompt": render_prompt(t_tok, msgs),
                     "reference": r.get("solution") or f"Final Answer: {r['answer']}"})
    train_ds = Dataset.from_list(rows)
    div_fn = lambda model: xt.aligned_divergence_fn(model, s_tok, teacher, t_tok)  # noqa: E731
    eval_fn = build_eval_fn(params, prepared, s_tok, divergence_fn=div_fn)

    def make(common: dict, callbacks: list):
        common = {**common, "remove_unused_columns": False}
        return CrossTokenizerTrainer(model=student, args=TrainingArguments(**common), train_dataset=train_ds,
                                     data_collator=_collate, processing_class=s_tok, callbacks=callbacks,
                                     teacher=teacher, teacher_tokenizer=t_tok, cross_cfg=c)

    s_kind, t_kind = xt.tokenizer_kind(s_tok), xt.tokenizer_kind(t_tok)
    final_fn = build_eval_fn(params, prepared, s_tok, divergence_fn=div_fn, during_training=False)
    return training.run(params, "cross_tokenizer", make, eval_fn=eval_fn, device=device,
                        final_eval_fn=final_fn, initial_full_eval=True, model=student,
                        dataset_sizes={"train": len(prepared.train), "eval": len(prepared.eval)},
                        extra_summary={"student_model": c.student, "teacher_model": c.teacher,
                                       "tokenizers": {"student": s_kind, "teacher": t_kind},
                                       "gold_supported": ok, "gold_reason": reason,
                                       "divergence_label": DIVERGENCE_LABEL})
