"""The typed sections of a parameter set: the shared ones and :class:`TrainSection` (the fields every
method has, written once). Each method's own section (a subclass adding only its knobs) lives in its
folder, ``atlas_lib/methods/<key>/config.py``, named by the registry. Every field
carries its doc and range (:func:`atlas_lib.core.validate.fld`); :meth:`TrainSection.check` holds the
checks that span fields: all a parameter set can get wrong is refused here, before any model loads.
Shared defaults live here only. A method's ``max_completion_length`` (tokens sampled per training completion)
and ``evaluation.max_new_tokens`` (the greedy budget of every evaluation) are kept apart on purpose.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass, field

from atlas_lib.core.validate import ParamsError, fld

log = logging.getLogger(__name__)

# Optimizers a training stage may use (atlas_lib.training.loop.optimizer_args maps them onto TRL's).
OPTIMIZERS = ("adamw", "adamw_8bit_bf16")
_OPTIMIZER_DOC = ("adamw: torch AdamW on fp32 master weights (weights, grads and two moments: 16 bytes per "
                  "parameter; exact). adamw_8bit_bf16: the student's weights and grads in bf16 and torchao's "
                  "AdamW8bit (block-wise 8-bit moments), which rounds each update into bf16 stochastically so "
                  "updates below bf16's resolution are kept on average (~6 bytes per parameter; needs torchao).")
# Worked examples the prompt can hold (len(atlas_lib.data.prompts.DEFAULT_SHOTS); a test pins the two).
MAX_FEW_SHOT = 2
# LoRA (peft) settings a method's `lora` block may hold, with their defaults.
LORA_DEFAULTS = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
CONTROL_NAMES = ("step_by_step",)  # evaluation.controls' names (atlas_lib.data.prompts.CONTROLS; a test pins the two)


@dataclass
class RunConfig:
    """Where and how everything runs. ``flop_budget`` matches the trained arms on the ledger's cumulative
    training FLOPs (sampling + teacher + optimisation; evaluation never counts) within one step. Nothing
    else is matched: samples, prompts, sampled and trained tokens and steps differ by method, and the
    lr schedule still spans ``max_steps`` (keep it near where the budget falls)."""

    seed: int = fld(42, "Seed for the data split and the baselines; the training seed unless `seeds` is set.", ge=0)
    seeds: list = fld([], "Training seeds: each trained method runs once per seed (its sampling, data order and "
                      "adapter initialisation), on the same split and test problems; the report shows the mean and "
                      "every seed. Empty: run.seed alone.")
    device: str = fld("auto", "auto (cuda if present, else cpu), cpu, cuda or mps.",
                      choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = fld("auto", "Compute dtype: auto = bf16 on CUDA with bf16 and on CPUs with AMX, else fp32.",
                     choices=("auto", "bf16", "fp16", "fp32"))
    num_threads: int = fld(0, "torch intra-op threads on CPU (0 = all cores).", ge=0)
    flop_budget: float = fld(0.0, "Training FLOPs (the ledger's cumulative total) at which every trained run stops: "
                             "the first step that reaches it, evaluated and saved as at max_steps (still the upper "
                             "bound). 0: no budget. Matches training FLOPs only (this section's doc).", ge=0.0)


@dataclass
class ModelsConfig:
    """The same-tokenizer student/teacher pair (GKD, GRPO, baselines)."""

    student: str = fld("qwen2.5-coder-0.5b-instruct", "Hub id, local dir or embedded name.")
    teacher: str = fld("qwen2.5-coder-1.5b-instruct", "Hub id, local dir or embedded name.")
    trust_remote_code: bool = fld(False, "Allow model repos to run their own code (off: safer).")
    teacher_device: str = fld("same", "Teacher placement: same device as the student, or e.g. cuda:1.")
    teacher_dtype: str = fld("auto", "Teacher weights: auto = run.dtype; bf16 halves the teacher's memory (slower "
                             "than fp32 on a CPU without AMX).", choices=("auto", "bf16", "fp16", "fp32"))
    teacher_prompt: str = fld("own", "Which chat template renders the prompt the teacher scores in same-tokenizer GKD "
                              "(gkd engine; off_policy's scoring) and GOLD: own (re-rendered with the teacher's "
                              "template, completion ids unchanged; the same as student when the templates agree) or "
                              "student (the student's rendering, TRL's behaviour). `atlas check` measures the "
                              "difference.", choices=("own", "student"))
    teacher_prompt_max_gap: float = fld(0.05, "With teacher_prompt: student, training is refused when the teacher's "
                                        "NLL per answer token is higher by more than this (nats/token) with the "
                                        "prompt in the student's template than in its own (<= 8 validation answers).",
                                        ge=0.0)


@dataclass
class DataConfig:
    """Which problems, and how they are split."""

    source: str = fld("reasoning_gym", "reasoning_gym (offline), gsm8k, metamathqa (hub) or local.",
                      choices=("reasoning_gym", "gsm8k", "metamathqa", "local"))
    task: str = fld("gsm_symbolic", "reasoning-gym task name (source=reasoning_gym only).")
    task_config: dict = fld({}, "reasoning-gym generator settings for the task (e.g. basic_arithmetic's max_terms, "
                            "max_digits): the difficulty, so the student sometimes succeeds (GRPO needs that).")
    size: int = fld(1200, "Problems to generate (reasoning_gym) before the split.", ge=2)
    path: str | None = fld(None, "File for source=local: .jsonl, .json, .parquet or .csv.")
    columns: dict = fld({}, "source=local column mapping: keys question, solution, answer, id, group.")
    eval_limit: int = fld(1000, "Held-out test problems, the reported numbers (the seed's 1,000).", ge=1)
    val_limit: int = fld(64, "Held-out validation problems: the eval points during training (the curves), never "
                         "the reported test set.", ge=1)
    eval_per_group: int = fld(1, "Held-out problems kept per group (template / original question); 1 keeps "
                              "them independent, as the paired tests assume.", ge=1)
    train_limit: int = fld(2048, "Training problems kept after the split.", ge=1)
    on_bad_rows: str = fld("drop", "Rows without question/answer: drop (logged, counted) or fail.",
                           choices=("drop", "fail"))


@dataclass
class PromptConfig:
    """One prompt template shared by every method and by evaluation."""

    system: str = fld("You are a careful math tutor. Solve the problem step by step, briefly.",
                      "System message (chat models).")
    instruction: str = fld("End with a line of the form 'Final Answer: <number>'.",
                           "Appended to each question; asks for the final-answer line.")
    few_shot: int = fld(1, "Worked examples placed before the question.", ge=0, le=MAX_FEW_SHOT)


@dataclass
class EvalConfig:
    """The shared evaluator."""

    limit: int = fld(1000, "Held-out problems evaluated for the final rows (<= data.eval_limit).", ge=1)
    during_training_limit: int = fld(64, "Validation problems at each training eval point (<= data.val_limit).",
                                     ge=1)
    max_new_tokens: int = fld(256, "Greedy generation budget per problem in every evaluation (training "
                              "samples have their own: <method>.max_completion_length).", ge=1, le=32768)
    batch_size: int = fld(16, "Problems generated together (length-sorted).", ge=1)
    reverse_kl: bool = fld(True, "Score the student's completions with the teacher (mean reverse KL).")
    during_training_kl: bool = fld(True, "With reverse_kl: score the validation eval points too (the KL curve); "
                                   "false: only the test rows (saves the teacher's forward at every eval point).")
    kl_seeds: int = fld(0, "With reverse_kl and several run.seeds: only the first kl_seeds seeds are scored by the "
                        "teacher; the others run with reverse_kl off (no KL, log-ratio or own objective on their "
                        "test rows or curves), and the mean row's values are those seeds' (its note says so). "
                        "0: every seed.", ge=0)
    controls: list = fld([], "Prompt controls, each a table row evaluated in notebook 01: the untrained student, same "
                         "test problems, grader and decoding, another prompt (step_by_step: one arithmetic operation "
                         "per line; data/prompts.py CONTROLS). Empty: none.")
    comparisons: list = fld(["methods vs student", "gkd vs grpo"],
                            "The primary comparisons, Holm-adjusted together: 'methods vs student' (each trained "
                            "method against its untrained student) and 'A vs B' for two method keys. Every other "
                            "comparison in the report is exploratory (raw p only).")


@dataclass
class TrackingConfig:
    """Experiment tracking; the W&B key only ever comes from the environment."""

    wandb: str = fld("offline", "offline (no account/network), online, or disabled.",
                     choices=("offline", "online", "disabled"))
    project: str = fld("atlas-distill-kit", "W&B project name.")


@dataclass
class TrainSection:
    """The fields every training method shares. A method's section subclasses this and adds only
    its own knobs; :func:`default` changes a shared field's default without repeating its doc."""

    enabled: bool = fld(True, "Run this method in `atlas report` (false: its row is left out).")
    learning_rate: float = fld(2e-5, "AdamW learning rate.", gt=0.0, le=1.0)
    per_device_train_batch_size: int = fld(2, "Sequences per device per micro-batch.", ge=1)
    gradient_accumulation_steps: int = fld(4, "Micro-batches per optimizer step.", ge=1)
    max_steps: int = fld(500, "Optimizer steps.", ge=1)
    max_completion_length: int = fld(256, "Tokens sampled per training completion (keep >= evaluation.max_new_tokens "
                                     "so long answers and their stop are trained).", ge=1, le=32768)
    temperature: float = fld(0.9, "Sampling temperature of the training completions.", gt=0.0, le=10.0)
    eval_steps: int = fld(50, "Evaluate the validation subset every N steps (and at step 0).", ge=1)
    save_steps: int = fld(50, "Checkpoint every N steps (safetensors; the resume point).", ge=1)
    logging_steps: int = fld(1, "Log train metrics every N steps.", ge=1)
    gradient_checkpointing: bool = fld(False, "Trade compute for memory: recompute the student's forward in "
                                       "backward (sampling keeps its KV cache).")
    optimizer: str = fld("adamw", _OPTIMIZER_DOC, choices=OPTIMIZERS)
    resume: bool = fld(False, "Continue an interrupted run from its last checkpoint (never a finished one).")
    resume_changed: bool = fld(False, "With resume: continue although training parameters changed (else refused).")
    max_seeds: int = fld(0, "Train only the first N of run.seeds (0: all), e.g. a control arm on the first seed.", ge=0)
    run_name: str | None = fld(None, "Run directory name under runs/ (default <profile>/<method>).")
    lora: dict = fld({}, "LoRA adapters (peft) instead of a full fine-tune, e.g. {r: 16, alpha: 32, dropout: 0.0, "
                     "target_modules: all-linear}; unset keys take those defaults; empty (default): full fine-tune.")

    def sequences_per_step(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    def lora_settings(self, key: str = "") -> dict | None:
        """The LoRA settings with defaults filled in, or None for a full fine-tune."""
        if not self.lora:
            return None
        where = f"{key}.lora" if key else "lora"
        unknown = [k for k in self.lora if k not in LORA_DEFAULTS]
        if unknown:
            raise ParamsError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(LORA_DEFAULTS)})")
        s = {**LORA_DEFAULTS, **self.lora}
        if not isinstance(s["r"], int) or isinstance(s["r"], bool) or s["r"] < 1:
            raise ParamsError(f"{where}.r = {s['r']!r}: the adapter rank, an integer >= 1")
        if not isinstance(s["alpha"], (int, float)) or s["alpha"] <= 0:
            raise ParamsError(f"{where}.alpha = {s['alpha']!r}: the scale numerator (alpha / r), a number > 0")
        if not isinstance(s["dropout"], (int, float)) or not 0 <= s["dropout"] < 1:
            raise ParamsError(f"{where}.dropout = {s['dropout']!r}: a probability in [0, 1)")
        tm = s["target_modules"]
        if not (tm == "all-linear" or (isinstance(tm, list) and tm and all(isinstance(m, str) for m in tm))):
            raise ParamsError(f"{where}.target_modules = {tm!r}: all-linear, or a list of module names "
                              "(e.g. [q_proj, k_proj, v_proj, o_proj])")
        return s

    def check(self, key: str, eval_budget: int) -> None:
        """Checks that span fields or the environment (types and ranges are checked per field)."""
        if self.lora_settings(key) is not None and importlib.util.find_spec("peft") is None:
            raise ParamsError(f"{key}.lora needs peft: pip install peft (or pip install -e .), or remove {key}.lora")
        if self.optimizer == "adamw_8bit_bf16" and importlib.util.find_spec("torchao") is None:
            raise ParamsError(f"{key}.optimizer = {self.optimizer!r} needs torchao: pip install torchao "
                              "(or pip install -e '.[lowmem]'), or set optimizer: adamw")
        if self.max_completion_length < eval_budget:  # allowed (the seed's follow-up sampled 128), never silent
            log.warning("%s.max_completion_length = %d is below evaluation.max_new_tokens = %d: answers longer "
                        "than the training samples are never trained on (their stop decision included)",
                        key, self.max_completion_length, eval_budget)


def default(name: str, value, doc: str | None = None):
    """A :class:`TrainSection` field with another default (and optionally another doc)."""
    base = TrainSection.__dataclass_fields__[name]
    meta = {**base.metadata, **({"doc": doc} if doc else {})}
    if isinstance(value, (list, dict)):
        return field(default_factory=lambda v=value: type(v)(v), metadata=meta)
    return field(default=value, metadata=meta)


SHARED_SECTIONS: dict[str, type] = {
    "run": RunConfig, "models": ModelsConfig, "data": DataConfig, "prompt": PromptConfig,
    "evaluation": EvalConfig, "tracking": TrackingConfig,
}
# Keys renamed when the generation-length knobs became one name per idea.
RENAMED = {"max_new_tokens": "max_completion_length"}


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
