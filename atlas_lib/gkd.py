"""On-policy distillation: a thin runner over TRL's ``GKDTrainer``.

Why GKDTrainer and not TRL's newer ``DistillationTrainer``: the seed's method is GKD with
``lmbda`` (mixing on-policy and dataset batches), ``seq_kd`` and a sampling temperature that
differs from the loss temperature (0.9 vs 1.0); ``DistillationTrainer`` covers only the fully
on-policy, temperature-1 case. Both are TRL; the kit keeps GKD's semantics and adds three things:

* the loss is computed only at completion positions (``logits_to_keep``): the prompt's
  full-vocabulary logits are never materialized, for the student or the teacher;
* the generalized JSD can be chunked over positions (``loss_chunk_size``) to bound memory;
* a NaN/inf loss stops the run at that step, before the optimizer applies it.

The teacher scores exactly the student's sampled sequence: ``GKDTrainer.training_step`` replaces
``input_ids`` with the generation, and ``compute_loss`` feeds those same ids to both models.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from trl.experimental.gkd import GKDConfig as TRLGKDConfig
from trl.experimental.gkd import GKDTrainer

from atlas_lib.config import Params
from atlas_lib.tracking import NonFiniteError

log = logging.getLogger(__name__)


def generalized_jsd(student_logits_N_V: torch.Tensor, teacher_logits_N_V: torch.Tensor, beta: float,
                    temperature: float = 1.0, chunk_size: int = 0) -> torch.Tensor:
    """Sum over N positions of the generalized JSD_beta(teacher || student) (GKD paper, eq. 1).

    beta = 0 -> KL(teacher || student) (forward), beta = 1 -> KL(student || teacher) (reverse),
    otherwise beta * KL(teacher || m) + (1 - beta) * KL(student || m) with
    m = beta * teacher + (1 - beta) * student (TRL's convention). Computed in float32, optionally
    ``chunk_size`` positions at a time so only a chunk of [N, V] float32 tensors lives at once.
    """
    n = student_logits_N_V.shape[0]
    step = chunk_size if chunk_size and chunk_size > 0 else max(n, 1)
    total = student_logits_N_V.new_zeros((), dtype=torch.float32)
    for i in range(0, n, step):
        s = F.log_softmax(student_logits_N_V[i:i + step].float() / temperature, dim=-1)
        t = F.log_softmax(teacher_logits_N_V[i:i + step].float() / temperature, dim=-1)
        if beta == 0:
            div = F.kl_div(s, t, reduction="none", log_target=True)
        elif beta == 1:
            div = F.kl_div(t, s, reduction="none", log_target=True)
        else:
            m = torch.logsumexp(torch.stack([s + math.log1p(-beta), t + math.log(beta)]), dim=0)
            div = beta * F.kl_div(m, t, reduction="none", log_target=True) + (1 - beta) * F.kl_div(
                m, s, reduction="none", log_target=True)
        total = total + div.sum()
    return total


class AtlasGKDTrainer(GKDTrainer):
    """GKDTrainer with completion-only logits, chunked loss, per-token normalisation and a NaN guard.

    Normalisation: HF Trainer counts ``num_items_in_batch`` from the dataset's reference labels
    before ``GKDTrainer.training_step`` swaps in the student's samples, so dividing by it weights
    each step by the references' lengths, not by what was scored. The kit divides each micro-batch's
    summed JSD by the completion tokens it actually scored, and the Trainer averages micro-batches
    over gradient accumulation (``loss_is_scaled_for_ga = False``).
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, loss_chunk_size: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        # TRL samples with use_cache=False whenever gradient checkpointing is on, re-encoding the whole
        # sequence for every sampled token (222.7 of a 315.7 s step in bench/RESULTS.md). Generation
        # runs under no_grad, where transformers' checkpointed layers keep the cache, so keeping it
        # on is exact: checkpointing then costs a recomputed forward in backward, nothing more.
        self.generation_config.use_cache = True
        self.generation_kwargs["use_cache"] = True
        self.loss_chunk_size = loss_chunk_size
        self._completion_tokens = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        return super().training_step(model, inputs, None)  # the count of reference labels: not what is scored

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
        with torch.no_grad():
            t_out = self.teacher_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                       logits_to_keep=keep + 1)
        s_logits_B_K_V = s_out.logits[:, :-1]
        t_logits_B_K_V = t_out.logits[:, :-1]
        vocab = min(s_logits_B_K_V.shape[-1], t_logits_B_K_V.shape[-1], len(self.processing_class))
        mask_B_K = valid_B_T[:, first:]
        total = generalized_jsd(s_logits_B_K_V[..., :vocab][mask_B_K], t_logits_B_K_V[..., :vocab][mask_B_K],
                                self.beta, chunk_size=self.loss_chunk_size)
        loss = total / mask_B_K.sum().clamp_min(1).to(total.device)  # per scored completion token
        if not torch.isfinite(loss):
            raise NonFiniteError(f"GKD loss became {loss.item()} at step {self.state.global_step + 1}; the run "
                                 "stopped before applying it and kept its metrics and last checkpoint")
        self._completion_tokens += int(mask_B_K.sum())
        return (loss, s_out) if return_outputs else loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs and self._completion_tokens:
            logs["atlas/completion_tokens"] = self._completion_tokens / max(self.args.logging_steps, 1)
            self._completion_tokens = 0
        super().log(logs, start_time)


def trl_config(params: Params, common: dict) -> TRLGKDConfig:
    g = params.gkd
    return TRLGKDConfig(
        **common, lmbda=g.lmbda, beta=g.beta, temperature=g.temperature, max_new_tokens=g.max_new_tokens,
        seq_kd=g.seq_kd, max_length=None, remove_unused_columns=False,
    )


def run_gkd(params: Params) -> dict:
    """Train the student by GKD from the teacher on the prepared data; returns the run summary."""
    from atlas_lib import data as data_mod
    from atlas_lib import training
    from atlas_lib.stages import baseline_records, build_eval_fn, load_pair, seed_everything

    seed_everything(params)
    prepared = data_mod.load_prepared(params)
    device, student, tok, teacher, teacher_tok = load_pair(params, require_same_tokenizer=True,
                                                           student_dtype=training.student_dtype(params.gkd))
    train_rows = data_mod.distill_view(prepared.train, params.prompt, None)
    from datasets import Dataset

    train_ds = Dataset.from_list(train_rows)
    eval_fn = build_eval_fn(params, prepared, tok, teacher=teacher, teacher_tok=teacher_tok)

    def make(common: dict, callbacks: list):
        return AtlasGKDTrainer(model=student, teacher_model=teacher, args=trl_config(params, common),
                               train_dataset=train_ds, processing_class=tok, callbacks=callbacks,
                               loss_chunk_size=params.gkd.loss_chunk_size)

    final_fn = build_eval_fn(params, prepared, tok, teacher=teacher, teacher_tok=teacher_tok, during_training=False)
    return training.run(params, "gkd", make, eval_fn=eval_fn, device=device, final_eval_fn=final_fn,
                        initial_records=baseline_records(params), model=student,
                        dataset_sizes={"train": len(prepared.train), "eval": len(prepared.eval)},
                        extra_summary={"divergence_label": "mean reverse KL to the teacher (same tokenizer)"})
