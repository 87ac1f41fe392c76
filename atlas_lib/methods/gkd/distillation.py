"""The ``distillation`` engine of the gkd section: TRL's stable ``DistillationTrainer`` run as the
same experiment as the ``gkd`` engine (fully on-policy GKD: ``lmbda = 1``, no ``seq_kd``).

What is mapped, and how (TRL 1.16):

* ``beta``, ``max_completion_length`` and the sampling ``temperature`` map onto
  ``DistillationConfig``'s fields of the same meaning; ``top_k = 0``, ``top_p = 1`` and
  ``disable_dropout = True`` are passed explicitly because they are GKDTrainer's settings.
* Temperature: ``DistillationConfig.temperature`` is both the sampling temperature and the
  temperature of the divergence. The gkd engine samples at ``temperature`` and scores the JSD at
  temperature 1, so :class:`AtlasDistillationTrainer` keeps TRL's sampling settings (the
  transformers ``GenerationConfig`` and vLLM's sampling parameters are built from it in
  ``__init__``) and then sets the loss temperature to 1.
* Normalisation: TRL divides each micro-batch's summed JSD by the scored tokens of the whole
  generation batch (all gradient-accumulation micro-batches; ``num_items_in_batch``), weighting a
  step's micro-batches by their lengths. The kit's gkd engine divides by each micro-batch's own
  scored tokens and averages micro-batches; this engine does the same, so both log and optimise the
  same quantity (they agree anyway when ``gradient_accumulation_steps`` is 1).
* The NaN/inf guard and the ``completion_tokens`` metric are the gkd engine's.

What stays different: TRL generates once per optimizer step for all its micro-batches (one
``generate`` over ``per_device_train_batch_size x gradient_accumulation_steps`` prompts, then
shuffled and split; same policy, so the same on-policy samples in distribution), orders the data
with its own seeded sampler, computes the logits in float32 tiles from the hidden states (the gkd
engine takes the models' logits in the compute dtype), softmaxes over the models' whole
``vocab_size`` (the gkd engine over ``len(tokenizer)``, leaving out padding rows of the embedding
matrix), and does not truncate prompts (the gkd engine's collator keeps the last 1,024 tokens of
prompt + reference). ``loss_chunk_size`` does not apply: TRL always works in tiles.

vLLM is imported only by TRL when ``use_vllm`` is set (``trl.generation.vllm_generation`` guards
its import with ``is_vllm_available``); nothing here imports it.
"""

from __future__ import annotations

from datasets import Dataset
from trl import DistillationConfig, DistillationTrainer

from atlas_lib.core.config import Params
from atlas_lib.methods.gkd.guard import ScoredLoss

# GKDTrainer's fixed sampling and dropout settings, given to DistillationConfig explicitly.
GKD_SAMPLING = {"top_k": 0, "top_p": 1.0, "disable_dropout": True}


class AtlasDistillationTrainer(ScoredLoss, DistillationTrainer):
    """DistillationTrainer scoring at temperature 1, normalised per micro-batch, with the NaN guard."""

    loss_is_scaled_for_ga = False  # a per-micro-batch mean: HF Trainer averages over accumulation

    def __init__(self, *args, loss_temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        # TRL reads self.temperature for the loss only after __init__ (sampling settings are built)
        self.temperature = loss_temperature

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # without the generation batch's token count TRL divides by this micro-batch's scored tokens
        inputs = {k: v for k, v in inputs.items() if k != "num_items_in_batch"}
        loss = super().compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None)
        mask = inputs["completion_mask"]
        scored = int((mask * inputs["tool_mask"] if "tool_mask" in inputs else mask).sum()) if self.model.training else 0
        loss = self.checked(loss, scored)
        return (loss, None) if return_outputs else loss


def trl_config(params: Params, common: dict) -> DistillationConfig:
    """TRL's DistillationConfig for the gkd section (engine distillation; ``common``: the kit's
    TrainingArguments fields, all of which DistillationConfig accepts)."""
    g = params.gkd
    return DistillationConfig(
        **common, beta=g.beta, temperature=g.temperature, max_completion_length=g.max_completion_length,
        use_vllm=g.use_vllm, vllm_mode=g.vllm_mode, remove_unused_columns=False, log_completions=False,
        **GKD_SAMPLING,
    )


def prompt_rows(distill_rows: list[dict]) -> Dataset:
    """The ``{"prompt"}`` rows DistillationTrainer samples from: the gkd engine's ``messages`` rows
    without the reference answer (the same chat-template prompt, generation prompt appended by TRL)."""
    return Dataset.from_list([{"prompt": r["messages"][:-1]} for r in distill_rows])


def make_trainer(params: Params, student, teacher, tok, rows: list[dict]):
    """``make(common, callbacks)`` for :class:`atlas_lib.training.common.Parts`."""

    def make(common: dict, callbacks: list):
        return AtlasDistillationTrainer(model=student, teacher_model=teacher, args=trl_config(params, common),
                                        train_dataset=prompt_rows(rows), processing_class=tok, callbacks=callbacks)

    return make
