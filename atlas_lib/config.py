"""Typed, validated parameters: YAML in ``params/`` -> :class:`Params` -> runners.

Every section is a dataclass whose fields carry a doc string and their allowed range in
``metadata``. :func:`load` reads a YAML file, deep-merges overrides (papermill ``-f`` sections and
``-p name value`` flat overrides), rejects unknown keys, checks types and ranges, and only then
returns. Nothing here loads a model or touches the disk beyond reading the params file, so bad
parameters fail before anything expensive happens and nothing is created.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from atlas_lib.paths import resolve_params_path
from atlas_lib.validate import ParamsError, _check_field, _unknown, fld

log = logging.getLogger(__name__)
__all__ = ["ParamsError", "Params", "load", "from_dict", "build_section", "describe", "fld"]


# Optimizers a training stage may use (atlas_lib.training.optimizer_args maps them onto TRL's).
OPTIMIZERS = ("adamw", "adamw_8bit_bf16")
_OPTIMIZER_DOC = ("adamw: torch AdamW on fp32 master weights (weights, grads and two moments: 16 bytes per "
                  "parameter; exact). adamw_8bit_bf16: the student's weights and grads in bf16 and torchao's "
                  "AdamW8bit (block-wise 8-bit moments), which rounds each update into bf16 stochastically so "
                  "updates below bf16's resolution are kept on average (~6 bytes per parameter; needs torchao).")


@dataclass
class RunConfig:
    """Where and how everything runs."""

    seed: int = fld(42, "Seed for data split, sampling and training.", ge=0)
    device: str = fld("auto", "auto (cuda if present, else cpu), cpu, cuda or mps.",
                      choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = fld("auto", "Compute dtype: auto = bf16 on CUDA with bf16 and on CPUs with AMX, else fp32.",
                     choices=("auto", "bf16", "fp16", "fp32"))
    num_threads: int = fld(0, "torch intra-op threads on CPU (0 = all cores).", ge=0)


@dataclass
class ModelsConfig:
    """The same-tokenizer student/teacher pair (GKD, GRPO, baselines)."""

    student: str = fld("qwen2.5-coder-0.5b-instruct", "Hub id, local dir or embedded name.")
    teacher: str = fld("qwen2.5-coder-1.5b-instruct", "Hub id, local dir or embedded name.")
    trust_remote_code: bool = fld(False, "Allow model repos to run their own code (off: safer).")
    teacher_device: str = fld("same", "Teacher placement: same device as the student, or a device "
                              "string such as cuda:1.")
    teacher_dtype: str = fld("auto", "Teacher weights: auto = run.dtype; bf16 halves the teacher's "
                             "memory (slower than fp32 on a CPU without AMX).",
                             choices=("auto", "bf16", "fp16", "fp32"))


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
    val_limit: int = fld(64, "Held-out validation problems: the eval points during training, where the peak "
                         "is chosen (never the reported test set).", ge=1)
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
    few_shot: int = fld(1, "Worked examples placed before the question.", ge=0, le=8)


@dataclass
class EvalConfig:
    """The shared evaluator."""

    limit: int = fld(1000, "Held-out problems evaluated for the final rows (<= data.eval_limit).", ge=1)
    during_training_limit: int = fld(64, "Validation problems evaluated at each training eval point "
                                     "(<= data.val_limit).", ge=1)
    max_new_tokens: int = fld(256, "Greedy generation budget per problem.", ge=1, le=32768)
    batch_size: int = fld(16, "Problems generated together (length-sorted).", ge=1)
    reverse_kl: bool = fld(True, "Score the student's completions with the teacher (mean reverse KL).")


@dataclass
class GKDConfig:
    """On-policy distillation (TRL GKD) with a same-tokenizer teacher."""

    lmbda: float = fld(1.0, "Fraction of batches built from student samples (1.0 = fully on-policy).",
                       ge=0.0, le=1.0)
    beta: float = fld(0.5, "Generalized JSD interpolation: 0 forward KL, 1 reverse KL.", ge=0.0, le=1.0)
    temperature: float = fld(0.9, "Sampling temperature of on-policy generations.", gt=0.0, le=10.0)
    max_new_tokens: int = fld(256, "Tokens sampled per on-policy completion.", ge=1, le=32768)
    seq_kd: bool = fld(False, "Sequence-level KD: train on teacher samples instead of references.")
    learning_rate: float = fld(2e-5, "AdamW learning rate.", gt=0.0, le=1.0)
    per_device_train_batch_size: int = fld(2, "Prompts per device per micro-batch.", ge=1)
    gradient_accumulation_steps: int = fld(4, "Micro-batches per optimizer step.", ge=1)
    max_steps: int = fld(500, "Optimizer steps.", ge=1)
    eval_steps: int = fld(50, "Evaluate the held-out subset every N steps (and at step 0).", ge=1)
    save_steps: int = fld(50, "Checkpoint every N steps (safetensors; resume point).", ge=1)
    logging_steps: int = fld(1, "Log train metrics every N steps.", ge=1)
    gradient_checkpointing: bool = fld(False, "Trade compute for memory: recompute the student's "
                                       "forward in backward (sampling keeps its KV cache, unlike stock TRL).")
    optimizer: str = fld("adamw", _OPTIMIZER_DOC, choices=OPTIMIZERS)
    loss_chunk_size: int = fld(0, "Compute the JSD over this many positions at a time (0 = all at "
                               "once); bounds full-vocabulary logit memory.", ge=0)
    resume: bool = fld(False, "Continue an interrupted run from its last checkpoint.")
    run_name: str | None = fld(None, "Run directory name under runs/ (default <profile>/gkd).")


@dataclass
class GRPOConfig:
    """RLVR baseline (TRL GRPOTrainer), no teacher."""

    learning_rate: float = fld(1e-6, "AdamW learning rate.", gt=0.0, le=1.0)
    per_device_train_batch_size: int = fld(2, "Completions per device per micro-batch.", ge=1)
    gradient_accumulation_steps: int = fld(32, "Micro-batches per optimizer step.", ge=1)
    num_generations: int = fld(8, "Completions per prompt (the group).", ge=2)
    max_steps: int = fld(300, "Optimizer steps.", ge=1)
    temperature: float = fld(0.9, "Sampling temperature.", gt=0.0, le=10.0)
    max_completion_length: int = fld(256, "Tokens sampled per completion.", ge=1, le=32768)
    loss_type: str = fld("dapo", "TRL loss aggregation (pinned: TRL changed its default).",
                         choices=("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"))
    beta: float = fld(0.0, "KL coefficient to the reference model (0 = no reference model).", ge=0.0)
    scale_rewards: str = fld("group", "Reward std normalisation: group, batch or none.",
                             choices=("group", "batch", "none"))
    reward_funcs: list = fld(["exact_match"], "Reward names from atlas_lib.grpo.REWARDS.")
    use_vllm: bool = fld(False, "Generate with vLLM (GPU only).")
    vllm_mode: str = fld("colocate", "vLLM placement when use_vllm.", choices=("colocate", "server"))
    eval_steps: int = fld(50, "Evaluate the held-out subset every N steps (and at step 0).", ge=1)
    save_steps: int = fld(50, "Checkpoint every N steps.", ge=1)
    logging_steps: int = fld(1, "Log train metrics every N steps.", ge=1)
    gradient_checkpointing: bool = fld(False, "Trade compute for memory.")
    optimizer: str = fld("adamw", _OPTIMIZER_DOC, choices=OPTIMIZERS)
    resume: bool = fld(False, "Continue an interrupted run from its last checkpoint.")
    run_name: str | None = fld(None, "Run directory name under runs/ (default <profile>/grpo).")


@dataclass
class CrossTokenizerConfig:
    """On-policy distillation between models with different tokenizers."""

    teacher: str = fld("qwen2.5-coder-1.5b-instruct", "Teacher (hub id, local dir or embedded name).")
    student: str = fld("smollm2-135m-instruct", "Student with a different tokenizer.")
    method: str = fld("aligned", "aligned: the kit's text-offset alignment, for any tokenizer pair (TRL's GOLD "
                      "refuses non-ByteLevel tokenizers; the run records whether GOLD would accept the pair).",
                      choices=("aligned",))
    lmbda: float = fld(1.0, "Fraction of on-policy student samples.", ge=0.0, le=1.0)
    beta: float = fld(0.5, "Generalized JSD interpolation on aligned spans.", ge=0.0, le=1.0)
    temperature: float = fld(0.9, "Sampling temperature.", gt=0.0, le=10.0)
    max_new_tokens: int = fld(256, "Tokens sampled per on-policy completion.", ge=1, le=32768)
    learning_rate: float = fld(2e-5, "AdamW learning rate.", gt=0.0, le=1.0)
    per_device_train_batch_size: int = fld(2, "Prompts per micro-batch.", ge=1)
    gradient_accumulation_steps: int = fld(4, "Micro-batches per optimizer step.", ge=1)
    max_steps: int = fld(500, "Optimizer steps.", ge=1)
    eval_steps: int = fld(50, "Evaluate every N steps (and at step 0).", ge=1)
    save_steps: int = fld(50, "Checkpoint every N steps.", ge=1)
    logging_steps: int = fld(1, "Log train metrics every N steps.", ge=1)
    resume: bool = fld(False, "Continue an interrupted run from its last checkpoint.")
    run_name: str | None = fld(None, "Run directory name (default <profile>/cross_tokenizer).")


@dataclass
class TrackingConfig:
    """Experiment tracking; the W&B key only ever comes from the environment."""

    wandb: str = fld("offline", "offline (no account/network), online, or disabled.",
                     choices=("offline", "online", "disabled"))
    project: str = fld("atlas-distill-kit", "W&B project name.")


SECTION_TYPES: dict[str, type] = {
    "run": RunConfig, "models": ModelsConfig, "data": DataConfig, "prompt": PromptConfig,
    "evaluation": EvalConfig, "gkd": GKDConfig, "grpo": GRPOConfig,
    "cross_tokenizer": CrossTokenizerConfig, "tracking": TrackingConfig,
}
STAGES = ("data", "gkd", "grpo", "cross_tokenizer", "report")
# Sections every stage may override with a flat ``-p name value`` after its own section.
_SHARED = ("run", "models", "data", "prompt", "evaluation", "tracking")


@dataclass
class Params:
    """A whole parameter set (one YAML file)."""

    name: str = "embedded"
    description: str = ""
    run: RunConfig = field(default_factory=RunConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    gkd: GKDConfig = field(default_factory=GKDConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    cross_tokenizer: CrossTokenizerConfig = field(default_factory=CrossTokenizerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweeps: list = field(default_factory=list)
    source_path: str | None = None  # the params file this came from (for provenance)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source_path", None)
        return d

    def params_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def stage_hash(self, stage: str) -> str:
        """Hash of what a stage's result depends on (its section plus the shared sections)."""
        d = self.to_dict()
        keep = {k: d[k] for k in (*_SHARED, stage) if k in d}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    def run_name(self, stage: str) -> str:
        section = getattr(self, stage, None)
        custom = getattr(section, "run_name", None)
        return custom or f"{self.name}/{stage}"


def build_section(name: str, values: dict | None) -> Any:
    """Validate one section's dict into its dataclass (unknown keys rejected)."""
    cls = SECTION_TYPES[name]
    values = values or {}
    if not isinstance(values, dict):
        raise ParamsError(f"section {name!r} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown(name, key, list(fields))
        out[key] = _check_field(name, fields[key], value, hints[key])
    return cls(**out)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("columns", "task_config"):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def from_dict(raw: dict, source_path: str | None = None) -> Params:
    """Validate a whole parameter-set dict."""
    if not isinstance(raw, dict):
        raise ParamsError("a params file must be a YAML mapping of sections")
    top_known = ["name", "description", *SECTION_TYPES, "sweeps"]
    for key in raw:
        if key not in top_known:
            raise _unknown("", key, top_known)
    name = raw.get("name", "embedded")
    if not isinstance(name, str) or not name or "/" in name:
        raise ParamsError(f"name = {name!r}: expected a non-empty profile name without '/'")
    sweeps = raw.get("sweeps") or []
    if not isinstance(sweeps, list):
        raise ParamsError("sweeps: expected a list of {name: ..., gkd: {...}} variants")
    for i, s in enumerate(sweeps):
        if not isinstance(s, dict) or "name" not in s:
            raise ParamsError(f"sweeps[{i}]: each variant needs a 'name' and section overrides")
        for k, v in s.items():
            if k == "name":
                continue
            if k not in SECTION_TYPES:
                raise _unknown(f"sweeps[{i}]", k, list(SECTION_TYPES))
            build_section(k, _deep_merge(raw.get(k) or {}, v))  # validate the variant too
    sections = {k: build_section(k, raw.get(k)) for k in SECTION_TYPES}
    params = Params(name=name, description=str(raw.get("description", "")), sweeps=sweeps,
                    source_path=source_path, **sections)
    if params.evaluation.limit > params.data.eval_limit:
        raise ParamsError(f"evaluation.limit = {params.evaluation.limit}: must be <= data.eval_limit "
                          f"= {params.data.eval_limit}")
    if params.evaluation.during_training_limit > params.data.val_limit:
        raise ParamsError(f"evaluation.during_training_limit = {params.evaluation.during_training_limit}: must be "
                          f"<= data.val_limit = {params.data.val_limit} (eval points use the validation split)")
    budget = params.evaluation.max_new_tokens
    for field_name, value in (("gkd.max_new_tokens", params.gkd.max_new_tokens),
                              ("grpo.max_completion_length", params.grpo.max_completion_length),
                              ("cross_tokenizer.max_new_tokens", params.cross_tokenizer.max_new_tokens)):
        if value < budget:  # allowed (the seed's follow-up samples 128), but never silently
            log.warning("%s = %d is below evaluation.max_new_tokens = %d: answers longer than the training "
                        "samples are never trained on (their stop decision included)", field_name, value, budget)
    if params.data.source == "local" and not params.data.path:
        raise ParamsError("data.path: required when data.source = 'local' (a .jsonl/.json/.parquet/.csv file)")
    if params.data.source == "local" and not Path(params.data.path).expanduser().exists():
        raise ParamsError(f"data.path = {params.data.path!r}: file does not exist")
    return params


def read_yaml(path: str | Path) -> dict:
    p = resolve_params_path(path)
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{p.name}: not valid YAML: {e}") from e
    return raw


def resolve_flat(stage: str | None, key: str) -> tuple[str, str]:
    """Map a flat override name (``max_steps``) or dotted one (``gkd.max_steps``) to a section."""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTION_TYPES:
            raise _unknown("", section, list(SECTION_TYPES))
        if name not in {f.name for f in dataclasses.fields(SECTION_TYPES[section])}:
            raise _unknown(section, name, [f.name for f in dataclasses.fields(SECTION_TYPES[section])])
        return section, name
    order = ([stage] if stage in SECTION_TYPES else []) + [s for s in _SHARED if s != stage]
    for section in order:
        if key in {f.name for f in dataclasses.fields(SECTION_TYPES[section])}:
            return section, key
    known = sorted({f.name for s in order for f in dataclasses.fields(SECTION_TYPES[s])})
    raise _unknown(stage or "", key, known)


def load(params: str | Path | dict = "params/embedded.yaml", stage: str | None = None,
         sections: dict | None = None, overrides: dict | None = None, **flat: Any) -> Params:
    """Load and validate a parameter set.

    ``params``: a YAML path or profile name (or an already-read dict). ``sections``: whole-section
    overrides, e.g. what ``papermill -f file.yaml`` injects (if it carries ``name``, it *is* the
    parameter set). ``overrides``: ``{"gkd.max_steps": 8}``. ``flat``: ``max_steps=8`` resolved
    against ``stage`` first, then the shared sections; ``None`` values mean "keep the file's".
    """
    sections = {k: v for k, v in (sections or {}).items() if v is not None}
    if "name" in sections:
        raw, source = dict(sections), "papermill -f"
    else:
        raw = dict(params) if isinstance(params, dict) else read_yaml(params)
        source = None if isinstance(params, dict) else str(params)
        raw = _deep_merge(raw, sections)
    updates = {**(overrides or {}), **{k: v for k, v in flat.items() if v is not None}}
    for key, value in updates.items():
        if key == "name":
            raw["name"] = value
            continue
        section, name = resolve_flat(stage, key)
        raw.setdefault(section, {})
        raw[section] = {**(raw.get(section) or {}), name: value}
    return from_dict(raw, source_path=source)


def injected_sections(namespace: dict) -> dict:
    """The sections papermill ``-f params.yaml`` injected into a notebook's globals."""
    keys = ("name", "description", *SECTION_TYPES, "sweeps")
    return {k: namespace[k] for k in keys if k in namespace and isinstance(namespace[k], (dict, list, str))}


def sweep_variants(params: Params) -> list[tuple[str, Params]]:
    """Each sweep variant as a full Params (``name`` stays; its runs go to <profile>/sweep-<name>)."""
    base = params.to_dict()
    out = []
    for s in params.sweeps:
        raw = dict(base)
        for k, v in s.items():
            if k != "name":
                raw[k] = _deep_merge(base.get(k) or {}, v)
        raw["gkd"] = {**raw["gkd"], "run_name": f"{params.name}/sweep-{s['name']}"}
        out.append((str(s["name"]), from_dict(raw, params.source_path)))
    return out


def describe(section: str) -> str:
    """A Markdown table of a section's fields (docs are generated from the code, never copied)."""
    rows = ["| field | default | allowed | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(SECTION_TYPES[section]):
        m = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = ", ".join(map(str, m["choices"])) if m.get("choices") else " ".join(
            f"{op}{m[k]}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<=")) if m.get(k) is not None)
        rows.append(f"| `{f.name}` | `{default}` | {allowed} | {m.get('doc', '')} |")
    return "\n".join(rows)
