"""TRL's GOLD as an arm of the registry, beside the kit's own cross-tokenizer alignment.

GOLD (``trl.experimental.gold.GOLDTrainer``, "Unlocking On-Policy Distillation for Any Model Family")
samples completions from the student (``lmbda`` of the steps), lets the teacher read the same prompt
and completion *text* through its own tokenizer, groups both token sequences into pieces that decode
to the same text (``use_extended_uld``), and minimises ULD: the L1 distance between the two models'
*sorted* next-token probabilities per group, or with ``hybrid`` a generalized JSD (``beta``) over the
tokens whose strings both vocabularies share plus ULD on the rest. The kit runs TRL's trainer as it is
(TRL's defaults except the knobs of the ``gold`` section); it adds only what every arm has: the
compute ledger, the run directory and evaluators, and the held-out objective, which is TRL's own
``compute_loss`` on the first :data:`OBJECTIVE_ANSWERS` test answers.

Two things a reader should know: TRL's teacher reads the *student's* chat rendering of the prompt
(``original_prompt_text``), not its own template; the kit replaces that text with the teacher's own
rendering of the same messages when ``models.teacher_prompt`` is ``own`` (the default; the completion
text is unchanged), and with ``student`` keeps TRL's behaviour unless it costs the teacher more than
``models.teacher_prompt_max_gap`` nats/token (:mod:`atlas_lib.evaluation.pair_check`). And GOLD refuses
tokenizers that are not ByteLevel BPE (Gemma's SentencePiece): the run stops at once with TRL's
reason, where the kit's alignment (``cross_tokenizer``) runs.
"""

from __future__ import annotations

import logging
import time

import torch
from datasets import Dataset

from atlas_lib.core import models
from atlas_lib.core.config import Params
from atlas_lib.data.prompts import build_messages, render_prompt
from atlas_lib.evaluation import pair_check
from atlas_lib.evaluation.forward import eos_token_ids
from atlas_lib.methods.cross_tokenizer import alignment, step
from atlas_lib.training import loop
from atlas_lib.training.common import Parts, TokenizerMismatchError, load_pair, run_method, with_lora

log = logging.getLogger(__name__)
# Test answers GOLD's own loss is evaluated on (the first N of the test split, the same ones before and
# after training). TRL's compute_loss runs the teacher over the whole prompt of every answer, 5-10 s an
# answer for the 1.5B teacher on a 2-core CPU (2026-12-07), so all 200 of the study would add ~50
# minutes; every answer still gets the kit's loss (``aligned_objective``), the aligned divergence and the
# log-ratio, and the validation points carry those.
OBJECTIVE_ANSWERS = 50


class GOLDRefusedError(TokenizerMismatchError):
    """GOLD does not accept this tokenizer pair; the message gives TRL's reason and the kit's arm."""


def _trainer_class():
    from trl.experimental.gold import GOLDTrainer  # imported when the arm runs (TRL experimental)

    class AtlasGOLDTrainer(GOLDTrainer):
        """GOLDTrainer that reports sampling, teacher and optimisation work to the compute ledger."""

        def __init__(self, *args, teacher_prompt_text=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher_prompt_text = teacher_prompt_text  # student's prompt text -> the teacher's (or None)
            self._teacher_t0, self._teacher_seconds = 0.0, 0.0
            self.teacher_model.register_forward_pre_hook(lambda *_: setattr(self, "_teacher_t0", time.monotonic()))
            self.teacher_model.register_forward_hook(lambda *_: setattr(
                self, "_teacher_seconds", self._teacher_seconds + time.monotonic() - self._teacher_t0))

        def generate_on_policy_outputs(self, model, inputs, *args, **kwargs):
            t0 = time.monotonic()
            out = super().generate_on_policy_outputs(model, inputs, *args, **kwargs)
            if (ledger := getattr(self, "atlas_ledger", None)) is not None:
                ledger.sampled(time.monotonic() - t0, float(out[1].sum()))
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            before = self._teacher_seconds
            if self.teacher_prompt_text is not None and "original_prompt_text" in inputs:
                inputs = {**inputs, "original_prompt_text": [self.teacher_prompt_text(t) for t in inputs["original_prompt_text"]]}
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if (ledger := getattr(self, "atlas_ledger", None)) is not None and model.training:
                tokens = float(inputs["attention_mask"].sum())
                ledger.scored(self._teacher_seconds - before, tokens)  # teacher tokens ~ the same text
                ledger.trained(tokens)
            return out

    return AtlasGOLDTrainer


class TeacherPromptText:
    """The student's rendered prompt text -> the teacher's rendering of the same messages (GOLD's
    teacher tokenizes it with ``add_special_tokens=True``, as TRL does with the student's text).
    Unknown texts (left padding decoded, truncation) keep the student's rendering and are counted."""

    def __init__(self, s_tok, t_tok):
        self.s_tok, self.t_tok, self.by_text, self.misses = s_tok, t_tok, {}, 0

    def add(self, messages: list[dict]) -> None:
        self.by_text.setdefault(render_prompt(self.s_tok, messages), render_prompt(self.t_tok, messages))

    def __call__(self, text: str) -> str:
        pad = self.s_tok.pad_token or ""
        key = text
        while pad and key.startswith(pad) and key not in self.by_text:
            key = key[len(pad):]
        if key in self.by_text:
            return self.by_text[key]
        if not self.misses:
            log.warning("models.teacher_prompt = own: a GOLD prompt not among the known rows is scored in the "
                        "student's template")
        self.misses += 1
        return text


def heldout_objective(trainer, model, tok, records: list[dict]) -> list[float | None]:
    """GOLD's training loss (TRL's ``compute_loss``) on each record's answer, one row at a time: the
    prompt as the student renders it, the answer's tokens and, when it stopped, the stop token."""
    eos = eos_token_ids(model, tok)[:1]
    out: list[float | None] = []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for r in records:
            p_ids = tok(r["prompt"], add_special_tokens=False)["input_ids"]
            c_ids = tok(r["completion"], add_special_tokens=False)["input_ids"] + (eos if r.get("truncated") is False else [])
            if not c_ids:
                out.append(None)
                continue
            ids = torch.tensor([p_ids + c_ids], device=device)
            labels = ids.clone()
            labels[0, :len(p_ids)] = -100
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                      "prompts": torch.tensor([p_ids], device=device),
                      "original_prompt_text": [r["prompt"]],
                      "original_completion_text": [tok.decode(c_ids, skip_special_tokens=False,
                                                              clean_up_tokenization_spaces=False)]}
            trainer._maybe_add_completion_byte_offsets(inputs)  # what TRL attaches to its on-policy batches
            with torch.no_grad():
                out.append(float(trainer.compute_loss(model, inputs)))
    finally:
        model.train(was_training)
    return out


def _build(params: Params, prepared, device) -> Parts:
    from trl.experimental.gold import GOLDConfig as TRLGOLDConfig

    g = params.gold
    trc = params.models.trust_remote_code
    ok, reason = step.gold_supported(models.load_tokenizer(g.student, trc), models.load_tokenizer(g.teacher, trc))
    if not ok:  # refused before any weights load
        raise GOLDRefusedError(f"gold: TRL's GOLD refuses {g.student!r} -> {g.teacher!r}: {reason}. The kit's own "
                               "alignment runs on any pair: use the cross_tokenizer section (notebook 04) instead")
    _, student, s_tok, teacher, t_tok = load_pair(params, student=g.student, teacher=g.teacher,
                                                  student_dtype=loop.student_dtype(g, params, device))
    student = with_lora(student, g, "gold")
    rows = [{"prompt": render_prompt(s_tok, build_messages(r["question"], params.prompt)),
             "completion": r.get("solution") or f"Final Answer: {r['answer']}"} for r in prepared.train]
    gap = pair_check.require_teacher_prompt(params, "gold", s_tok, t_tok, teacher, list(prepared.val))
    to_teacher = _teacher_prompt_text(params, prepared, s_tok, t_tok)
    train_ds = Dataset.from_list(rows)
    teacher_dir = str(teacher.config._name_or_path or g.teacher)
    holder: list = []

    def make(common: dict, callbacks: list):
        args = TRLGOLDConfig(**common, lmbda=g.lmbda, beta=g.beta, temperature=g.temperature, top_k=0, top_p=1.0,
                          max_completion_length=g.max_completion_length, use_uld_loss=True, use_extended_uld=True,
                          uld_use_hybrid_loss=g.hybrid, uld_crossentropy_weight=g.crossentropy_weight,
                          teacher_tokenizer_name_or_path=teacher_dir, remove_unused_columns=False,
                          log_completions=False)
        trainer = _trainer_class()(model=student, teacher_model=teacher, args=args, train_dataset=train_ds,
                                   processing_class=s_tok, callbacks=callbacks, teacher_prompt_text=to_teacher)
        holder[:] = [trainer]
        return trainer

    scored_ids = {r["id"] for r in list(prepared.eval)[:OBJECTIVE_ANSWERS]}

    def divergence_fn(model):
        return _divergence(model, g.beta, s_tok, teacher, t_tok, holder, scored_ids)

    return Parts(student, s_tok, make, divergence_fn=divergence_fn,
                 extra_summary={"student_model": g.student, "teacher_model": g.teacher,
                                "tokenizers": {"student": alignment.tokenizer_kind(s_tok),
                                               "teacher": alignment.tokenizer_kind(t_tok)},
                                "gold_supported": ok, "gold_reason": reason,
                                "teacher_prompt": "own" if to_teacher is not None else
                                "student" if gap is not None else "same rendering",
                                "teacher_prompt_gap": gap and gap["gap"]})


def _teacher_prompt_text(params: Params, prepared, s_tok, t_tok) -> TeacherPromptText | None:
    """The teacher's own rendering of every prompt (training rows and every evaluated answer) when
    models.teacher_prompt is own and the templates differ; None otherwise."""
    if pair_check.teacher_view(params, "gold") != "own":
        return None
    to_teacher = TeacherPromptText(s_tok, t_tok)
    for split in (prepared.train, prepared.val, prepared.eval):
        for r in split:
            to_teacher.add(build_messages(r["question"], params.prompt))
    if all(k == v for k, v in to_teacher.by_text.items()):
        return None  # the templates agree: nothing to replace
    return to_teacher


def _divergence(model, beta: float, s_tok, teacher, t_tok, holder: list, scored_ids: set):
    """The evaluation's per-record divergence: the kit's aligned span divergence, with GOLD's own loss
    (TRL's compute_loss, once the trainer exists) as the ``objective`` of the scored answers."""
    kit = step.aligned_divergence_fn(model, s_tok, teacher, t_tok, beta=beta)

    def fn(records: list[dict]) -> list[dict]:
        rows = kit(records)
        for r in rows:
            r["aligned_objective"] = r.pop("objective", None)  # the kit's loss on the same answer, for comparison
            r.pop("objective_units", None)
        todo = [i for i, r in enumerate(records) if r["id"] in scored_ids]
        if holder and todo:
            for i, x in zip(todo, heldout_objective(holder[0], model, s_tok, [records[i] for i in todo]), strict=True):
                rows[i]["objective"] = x
        return rows

    return fn


def run_gold(params: Params) -> dict:
    """Distil ``gold.teacher`` into ``gold.student`` with TRL's GOLDTrainer (ByteLevel BPE pairs only)."""
    return run_method(params, "gold", _build)
