"""The arm's runner over transformers' Trainer: sample from the student, score the sample with the
teacher, step on :func:`objective.reverse_kl_advantage_loss`."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from atlas_lib.core import models
from atlas_lib.data.prompts import build_messages, render_prompt
from atlas_lib.training import loop
from atlas_lib.training.common import Parts, run_method

from .objective import reverse_kl_advantage_loss


class TinkerTrainer(Trainer):
    def __init__(self, *args, teacher, section, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.section = teacher, section

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids, att = inputs["input_ids"], inputs["attention_mask"]
        pad = self.processing_class.pad_token_id
        with torch.no_grad():
            seq = model.generate(input_ids=ids, attention_mask=att, do_sample=True, pad_token_id=pad,
                                 temperature=self.section.temperature,
                                 max_new_tokens=self.section.max_completion_length)
        p = ids.shape[1]
        mask = (seq[:, p:] != pad).long()
        full = torch.cat([att, mask], dim=1)
        target = seq[:, p:].unsqueeze(-1)
        lp_s = torch.log_softmax(model(seq, attention_mask=full).logits[:, p - 1:-1].float(), -1)
        with torch.no_grad():
            lp_t = torch.log_softmax(self.teacher(seq, attention_mask=full).logits[:, p - 1:-1].float(), -1)
        loss = reverse_kl_advantage_loss(lp_s.gather(-1, target).squeeze(-1), lp_t.gather(-1, target).squeeze(-1),
                                         mask.float(), self.section.beta, self.section.center)
        return (loss, None) if return_outputs else loss


def _build(params, prepared, device) -> Parts:
    g = params.tinker
    student, tok = models.load_model(params.models.student, dtype=loop.student_dtype(g), device=device,
                                     for_training=True)
    teacher, _ = models.load_model(params.models.teacher, device=device)
    teacher.eval()
    prompts = [tok(render_prompt(tok, build_messages(r["question"], params.prompt)))["input_ids"]
               for r in prepared.train]
    ds = Dataset.from_dict({"input_ids": prompts})

    def collate(rows):  # left padding: the student continues each prompt
        n = max(len(r["input_ids"]) for r in rows)
        ids = [[tok.pad_token_id] * (n - len(r["input_ids"])) + r["input_ids"] for r in rows]
        att = [[0] * (n - len(r["input_ids"])) + [1] * len(r["input_ids"]) for r in rows]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(att)}

    def make(common: dict, callbacks: list):
        return TinkerTrainer(model=student, args=TrainingArguments(**common, remove_unused_columns=False),
                             train_dataset=ds, processing_class=tok, data_collator=collate, callbacks=callbacks,
                             teacher=teacher, section=g)

    return Parts(student, tok, make, teacher=teacher)


def run_tinker(params) -> dict:
    return run_method(params, "tinker", _build)
