"""On-policy distillation: a thin runner over TRL, on one of two engines (``gkd.engine``).

* ``gkd`` (default): TRL's ``GKDTrainer`` (experimental in TRL 1.x). It is the only TRL trainer
  with GKD's ``lmbda`` (mixing on-policy and dataset batches) and ``seq_kd``, and it samples at
  the section's ``temperature`` (0.9 in the seed) while scoring the JSD at temperature 1. The
  off-policy arm (``lmbda 0, seq_kd``) always runs on it.
* ``distillation``: TRL's stable ``DistillationTrainer``, for the fully on-policy case only
  (``lmbda = 1``, no ``seq_kd``; the params refuse anything else). It adds vLLM generation
  (``gkd.use_vllm``, ``gkd.vllm_mode``) and a tiled loss that never materializes the logits. Its
  own temperature is the sampling *and* the loss temperature; the kit keeps the loss at
  temperature 1 and normalises per micro-batch as the gkd engine does, so both engines run the same
  experiment (:mod:`atlas_lib.methods.gkd.distillation` lists what is mapped and what still differs;
  ``tests/test_gkd_engines.py`` pins both to the same loss on the same batch).

Either engine runs inside the same runner (:func:`atlas_lib.training.common.run_method`): the same
run directory, evaluation points, checkpoints and resume, LoRA and report. On the gkd engine the kit
adds three things to ``GKDTrainer``:

* the loss is computed only at completion positions (``logits_to_keep``): the prompt's
  full-vocabulary logits are never materialized, for the student or the teacher;
* the generalized JSD can be chunked over positions (``loss_chunk_size``) to bound memory;
* a NaN/inf loss stops the run at that step, before the optimizer applies it (both engines).

The teacher scores exactly the student's sampled completion ids: ``GKDTrainer.training_step``
replaces ``input_ids`` with the generation, and ``compute_loss`` feeds those same ids to both models.
The prompt is the student's rendering unless ``models.teacher_prompt`` is ``own`` and the two chat
templates render it differently: then the gkd engine gives the teacher the same messages in its own
template (:class:`TeacherPrompts`) followed by the unchanged completion ids
(``DistillationTrainer`` feeds the student's prompt + sampled completion to both; with
``models.teacher_prompt_max_gap`` it is refused when that costs the teacher too much:
:func:`atlas_lib.evaluation.pair_check.require_teacher_prompt`).
"""

from __future__ import annotations

import logging
import time

import torch
from datasets import Dataset
from trl.experimental.gkd import GKDConfig as TRLGKDConfig
from trl.experimental.gkd import GKDTrainer

from atlas_lib.core.config import Params
from atlas_lib.data import splits
from atlas_lib.data.prompts import has_chat_template, render_prompt
from atlas_lib.evaluation import pair_check
from atlas_lib.evaluation.divergence import generalized_jsd
from atlas_lib.methods.gkd.guard import ScoredLoss
from atlas_lib.methods.gkd.objective import objective
from atlas_lib.training import loop
from atlas_lib.training.common import Parts, load_pair, run_method, with_lora

log = logging.getLogger(__name__)


class TeacherPrompts:
    """The student's rendered prompt ids -> the teacher's rendering of the same messages (same
    tokenizer, so the ids are the teacher's too). Looked up by the decoded prompt text; a prompt it
    does not know (one the collator truncated) keeps the student's rendering and is counted."""

    def __init__(self, tok, teacher_tok, message_lists: list[list[dict]]):
        self.tok, self.misses = tok, 0
        add = not has_chat_template(teacher_tok)
        self.by_text = {render_prompt(tok, m): teacher_tok(render_prompt(teacher_tok, m), add_special_tokens=add)["input_ids"]
                        for m in message_lists}

    def __call__(self, prompt_ids: list[int]) -> list[int]:
        text = self.tok.decode(prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        got = self.by_text.get(text)
        if got is None:
            if not self.misses:
                log.warning("models.teacher_prompt = own: a prompt not among the training rows (truncated?) is "
                            "scored in the student's template (logged once; TeacherPrompts.misses counts them)")
            self.misses += 1
            return prompt_ids
        return got


def teacher_inputs(input_ids, attention_mask, valid_B_T, prompts: TeacherPrompts, pad_id: int):
    """Each row's prompt replaced by the teacher's rendering, the completion block (everything from the
    first label on, padding included) unchanged, left-padded so the rows end where the student's do:
    the last K positions of both batches hold the same completion tokens."""
    rows, masks = [], []
    for b in range(input_ids.shape[0]):
        c = int(valid_B_T[b].float().argmax()) + 1  # the first completion column (labels are shifted by one)
        prompt = input_ids[b, :c][attention_mask[b, :c].bool()].tolist()
        t_prompt = prompts(prompt)
        rows.append(t_prompt + input_ids[b, c:].tolist())
        masks.append([1] * len(t_prompt) + attention_mask[b, c:].tolist())
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=input_ids.device)
    mask = torch.tensor([[0] * (width - len(m)) + m for m in masks], device=attention_mask.device)
    return ids, mask


class AtlasGKDTrainer(ScoredLoss, GKDTrainer):
    """GKDTrainer with completion-only logits, chunked loss, per-token normalisation and a NaN guard.

    Normalisation: HF Trainer counts ``num_items_in_batch`` from the dataset's reference labels
    before ``GKDTrainer.training_step`` swaps in the student's samples, so dividing by it weights
    each step by the references' lengths, not by what was scored. The kit divides each micro-batch's
    summed JSD by the completion tokens it actually scored, and the Trainer averages micro-batches
    over gradient accumulation (``loss_is_scaled_for_ga = False``).
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, loss_chunk_size: int = 0, teacher_prompts: TeacherPrompts | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher_prompts = teacher_prompts  # None: the teacher reads the student's prompt ids
        # TRL samples with use_cache=False whenever gradient checkpointing is on, re-encoding the whole
        # sequence for every sampled token (most of a step's time; bench/RESULTS.md). Generation
        # runs under no_grad, where transformers' checkpointed layers keep the cache, so keeping it
        # on is exact: checkpointing then costs a recomputed forward in backward, nothing more.
        self.generation_config.use_cache = True
        self.generation_kwargs["use_cache"] = True
        self.loss_chunk_size = loss_chunk_size

    def training_step(self, model, inputs, num_items_in_batch=None):
        return super().training_step(model, inputs, None)  # the count of reference labels: not what is scored

    def generate_on_policy_outputs(self, model, inputs, generation_config):
        """TRL's sampling (the student's, or with ``seq_kd`` the teacher's), timed for the compute ledger."""
        t0 = time.monotonic()
        out = GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)
        if (ledger := getattr(self, "atlas_ledger", None)) is not None:
            by = "teacher" if model is self.teacher_model else "student"
            ledger.sampled(time.monotonic() - t0, float(out[1].sum()), by=by)
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels_B_T = inputs["labels"]
        target_B_T = labels_B_T[:, 1:]  # logits at i predict token i+1
        valid_B_T = target_B_T != -100
        if not bool(valid_B_T.any()):
            raise ValueError("a batch has no completion tokens to distill; check data.max_length / prompts")
        # Only positions from the first completion token onwards need logits (left-padded prompts
        # end at the same column, so this is the completion block for every row).
        first = int(valid_B_T.float().argmax(dim=1).min())
        keep = target_B_T.shape[1] - first
        s_out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                      logits_to_keep=keep + 1)
        self.teacher_model.eval()
        t0 = time.monotonic()
        t_ids, t_mask = inputs["input_ids"], inputs["attention_mask"]
        if self.teacher_prompts is not None:
            t_ids, t_mask = teacher_inputs(t_ids, t_mask, valid_B_T, self.teacher_prompts,
                                           self.processing_class.pad_token_id)
        with torch.no_grad():
            t_out = self.teacher_model(input_ids=t_ids, attention_mask=t_mask, logits_to_keep=keep + 1)
        if (ledger := getattr(self, "atlas_ledger", None)) is not None and model.training:
            tokens = float(inputs["attention_mask"].sum())
            ledger.scored(time.monotonic() - t0, tokens)
            ledger.trained(tokens)
        s_logits_B_K_V = s_out.logits[:, :-1]
        t_logits_B_K_V = t_out.logits[:, :-1]
        vocab = min(s_logits_B_K_V.shape[-1], t_logits_B_K_V.shape[-1], len(self.processing_class))
        mask_B_K = valid_B_T[:, first:]
        total = generalized_jsd(s_logits_B_K_V[..., :vocab][mask_B_K], t_logits_B_K_V[..., :vocab][mask_B_K],
                                self.beta, chunk_size=self.loss_chunk_size)
        loss = total / mask_B_K.sum().clamp_min(1).to(total.device)  # per scored completion token
        loss = self.checked(loss, int(mask_B_K.sum()))
        return (loss, s_out) if return_outputs else loss


def trl_config(params: Params, common: dict, key: str = "gkd") -> TRLGKDConfig:
    """TRL's GKD arguments for section ``key``: ``gkd`` as written; ``off_policy`` is GKD with the
    teacher's samples only (lmbda 0, seq_kd)."""
    g = params.section(key)
    lmbda, seq_kd = (g.lmbda, g.seq_kd) if key == "gkd" else (0.0, True)
    return TRLGKDConfig(
        **common, lmbda=lmbda, beta=g.beta, temperature=g.temperature, max_new_tokens=g.max_completion_length,
        seq_kd=seq_kd, max_length=None, remove_unused_columns=False,
    )


def _build(key: str):
    def build(params: Params, prepared, device) -> Parts:
        section = params.section(key)
        _, student, tok, teacher, teacher_tok = load_pair(params, require_same_tokenizer=True,
                                                          student_dtype=loop.student_dtype(section, params, device))
        student = with_lora(student, section, key)
        rows = splits.distill_view(prepared.train, params.prompt)
        engine = getattr(section, "engine", "gkd")  # off_policy: always GKDTrainer
        gap = pair_check.require_teacher_prompt(params, key, tok, teacher_tok, teacher, list(prepared.val))
        prompts = None
        if pair_check.teacher_view(params, key) == "own":
            prompts = TeacherPrompts(tok, teacher_tok, [r["messages"][:-1] for r in rows])
            if all(prompts.by_text.get(render_prompt(tok, r["messages"][:-1])) ==
                   tok(render_prompt(tok, r["messages"][:-1]), add_special_tokens=False)["input_ids"] for r in rows[:8]):
                prompts = None  # the templates agree: the teacher's ids are the student's, nothing to re-render
        if engine == "distillation":
            from atlas_lib.methods.gkd import distillation  # imports trl.DistillationTrainer only when used

            make = distillation.make_trainer(params, student, teacher, tok, rows)
        else:
            train_ds = Dataset.from_list(rows)

            def make(common: dict, callbacks: list):
                return AtlasGKDTrainer(model=student, teacher_model=teacher, args=trl_config(params, common, key),
                                       train_dataset=train_ds, processing_class=tok, callbacks=callbacks,
                                       loss_chunk_size=section.loss_chunk_size, teacher_prompts=prompts)

        return Parts(student, tok, make, teacher=teacher, teacher_tokenizer=teacher_tok,
                     objective=objective(section),
                     extra_summary={"engine": engine, "teacher_prompt": pair_check.teacher_view(params, key)
                                    if prompts is not None or gap is not None else "same rendering",
                                    "teacher_prompt_gap": gap and gap["gap"]})

    return build


def run_gkd(params: Params) -> dict:
    """Train the student by on-policy GKD from the teacher on the prepared data; returns the run summary."""
    return run_method(params, "gkd", _build("gkd"))


def run_off_policy(params: Params) -> dict:
    """Train the student on the teacher's own samples (off-policy distillation, the same loss)."""
    return run_method(params, "off_policy", _build("off_policy"))
