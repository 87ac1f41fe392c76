"""Will it fit? A memory plan per training stage of a parameter set, on one device.

:func:`estimate_stages` plans every enabled stage (:func:`estimate`: one stage), each with the
models it trains with. The rows of a stage are its method's own plan (``memory`` in its registry
record, in ``atlas_lib/methods/<key>/memory.py``) built from the pieces here: the trainable state,
the frozen teacher, activations, the generation KV cache and the completion logits.

Counts the usual suspects of distillation OOMs: the student's trainable state (weights, grads,
AdamW moments, fp32 master copy under mixed precision), the frozen teacher, activations at the
batch/length, the generation KV cache, and the full-vocabulary logits of both models
(B x T x V in float32: 152k columns for Qwen). The kit computes logits only at completion
positions (``logits_to_keep``), and ``loss_chunk_size`` bounds the loss's float32 copies.
Estimates are first-order (no fragmentation, no CUDA context, no optimizer-step transients). On a
GPU (bench/RESULTS.md section 12, the paper shapes) torch's allocated peak came out 3-4% above the
total and its reserved peak 5-11% above, so the verdict keeps 15% of the device free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from atlas_lib.core import registry
from atlas_lib.core.config import Params
from atlas_lib.core.paths import cache_root

GiB = 1024 ** 3
USABLE = 0.85  # the share of device memory a plan may fill (measured overshoot above; 0.9 passed a plan that did not fit)

# Published configs of the models the params name (offline: no hub request needed).
KNOWN = {
    "Qwen/Qwen2.5-7B-Instruct": dict(hidden=3584, layers=28, vocab=152064, inter=18944, heads=28, kv=4, tied=False, qkv_bias=True),
    "Qwen/Qwen2.5-14B-Instruct": dict(hidden=5120, layers=48, vocab=152064, inter=13824, heads=40, kv=8, tied=False, qkv_bias=True),
    "Qwen/Qwen2.5-1.5B-Instruct": dict(hidden=1536, layers=28, vocab=151936, inter=8960, heads=12, kv=2, tied=True, qkv_bias=True),
    "Qwen/Qwen2.5-0.5B-Instruct": dict(hidden=896, layers=24, vocab=151936, inter=4864, heads=14, kv=2, tied=True, qkv_bias=True),
    "meta-llama/Llama-3.2-1B-Instruct": dict(hidden=2048, layers=16, vocab=128256, inter=8192, heads=32, kv=8, tied=True),
    # The embedded GGUFs carry an untied output matrix (630M / 1.78B parameters).
    "qwen2.5-coder-0.5b-instruct": dict(hidden=896, layers=24, vocab=151936, inter=4864, heads=14, kv=2, tied=False, qkv_bias=True),
    "qwen2.5-coder-1.5b-instruct": dict(hidden=1536, layers=28, vocab=151936, inter=8960, heads=12, kv=2, tied=False, qkv_bias=True),
    "smollm2-135m-instruct": dict(hidden=576, layers=30, vocab=49152, inter=1536, heads=9, kv=3, tied=True),
}


def arch(name: str) -> dict:
    """Shape of a model: from the table above or a local/cached ``config.json``."""
    if name in KNOWN:
        return KNOWN[name]
    for cand in (Path(name) / "config.json", cache_root() / "models" / name / "config.json",
                 cache_root() / "tiny" / name / "config.json"):
        if cand.exists():
            c = json.loads(cand.read_text())
            c = c.get("text_config", c)
            return dict(hidden=c["hidden_size"], layers=c["num_hidden_layers"], vocab=c["vocab_size"],
                        inter=c["intermediate_size"], heads=c["num_attention_heads"],
                        kv=c.get("num_key_value_heads", c["num_attention_heads"]),
                        tied=bool(c.get("tie_word_embeddings", False)),
                        qkv_bias=c.get("model_type") == "qwen2" or bool(c.get("attention_bias", False)))
    raise KeyError(f"no shape known for {name!r}: add it to atlas_lib.training.memory.KNOWN or pass a local model dir")


def n_params(a: dict) -> int:
    head_dim = a["hidden"] // a["heads"]
    attn = 2 * a["hidden"] * a["hidden"] + 2 * a["hidden"] * a["kv"] * head_dim
    if a.get("qkv_bias"):  # Qwen2 has q/k/v biases
        attn += a["hidden"] + 2 * a["kv"] * head_dim
    mlp = 3 * a["hidden"] * a["inter"]
    emb = a["vocab"] * a["hidden"] * (1 if a["tied"] else 2)
    return a["layers"] * (attn + mlp + 2 * a["hidden"]) + a["hidden"] + emb  # + final norm


def lora_params(a: dict, r: int, target_modules="all-linear") -> int:
    """Adapter parameters of LoRA rank ``r``: r x (in + out) per adapted projection and layer
    (all-linear: q, k, v, o, gate, up, down; the output head is never adapted)."""
    head_dim = a["hidden"] // a["heads"]
    kv = a["kv"] * head_dim
    shapes = {"q_proj": (a["hidden"], a["hidden"]), "k_proj": (a["hidden"], kv), "v_proj": (a["hidden"], kv),
              "o_proj": (a["hidden"], a["hidden"]), "gate_proj": (a["hidden"], a["inter"]),
              "up_proj": (a["hidden"], a["inter"]), "down_proj": (a["inter"], a["hidden"])}
    names = list(shapes) if target_modules == "all-linear" else [m for m in target_modules if m in shapes]
    return a["layers"] * sum(r * (shapes[m][0] + shapes[m][1]) for m in names)


@dataclass
class Plan:
    rows: list[tuple[str, float, str]]  # (component, GiB, note)
    total_gib: float
    device_gib: float
    fits: bool
    advice: list[str]
    stage: str = ""  # the training stage planned (a method key)
    student: str = ""
    teacher: str | None = None  # None: the stage trains without a teacher (GRPO)
    profile: str = ""


def _nbytes(dtype: str, bf16: bool) -> int:
    """Bytes per element of a weight dtype setting; ``auto`` follows the run's compute dtype."""
    return (2 if bf16 else 4) if dtype == "auto" else (4 if dtype == "fp32" else 2)


def trainable_state(section, key: str, a: dict, bf16: bool) -> list[tuple[str, float, str]]:
    """The trained student's rows (weights, grads, optimizer moments) for a stage's section: LoRA
    adapters, the 8-bit optimizer's bf16 state, or fp32 master weights with AdamW."""
    ps = n_params(a)
    lora = section.lora_settings(key)
    if lora is not None:  # frozen base weights in the compute dtype; fp32 adapters with grads and AdamW moments
        pa = lora_params(a, lora["r"], lora["target_modules"])
        return [(f"student weights ({'bf16' if bf16 else 'fp32'}, frozen)", ps * (2 if bf16 else 4) / GiB,
                 "LoRA: no grads"),
                ("LoRA adapters + grads", pa * 8 / GiB, f"r={lora['r']}, {pa / 1e6:.0f}M parameters, fp32"),
                ("AdamW moments (adapters)", pa * 8 / GiB, "two fp32 moments per adapter parameter")]
    if section.optimizer == "adamw_8bit_bf16":  # bf16 weights and grads, two 8-bit moments (+ a scale per 256)
        return [("student weights (bf16)", ps * 2 / GiB, "updates stochastically rounded"),
                ("student grads", ps * 2 / GiB, "bf16, same shape as the weights"),
                ("AdamW moments", ps * 2 * (1 + 4 / 256) / GiB, "torchao AdamW8bit: two 8-bit moments")]
    # HF Trainer's bf16 mode keeps fp32 weights and autocasts compute: 4 + 4 + 8 bytes/param.
    return [("student weights (fp32 master)", ps * 4 / GiB, "bf16 autocast compute" if bf16 else "fp32"),
            ("student grads", ps * 4 / GiB, "fp32, same shape as the weights"),
            ("AdamW moments", ps * 8 / GiB, "two fp32 moments per parameter")]


def _activations(a: dict, seq: int, b: int, act_b: int, checkpointing: bool) -> float:
    # Korthikanti et al. 2022: s*b*h*(34 + 5*a*s/h) bytes per layer without recomputation;
    # with checkpointing only the layer inputs (2*s*b*h bytes) are kept.
    if checkpointing:
        return a["layers"] * 2 * seq * b * a["hidden"] * act_b
    return a["layers"] * seq * b * a["hidden"] * (34 + 5 * a["heads"] * seq / a["hidden"]) * act_b / 2


def kv_cache(a: dict, seq: int, n: int, act_b: int) -> float:
    """Bytes of the generation KV cache of ``n`` sequences of ``seq`` tokens."""
    return 2 * a["layers"] * a["kv"] * (a["hidden"] // a["heads"]) * seq * n * act_b


@dataclass
class Shape:
    """The quantities every stage's plan starts from: its section, the shapes of the models it trains
    with (``t`` None without a teacher), the compute dtype's bytes, and the micro-batch's tokens."""

    section: object
    key: str
    s: dict  # the student's shape (:func:`arch`)
    t: dict | None  # the teacher's, or None
    bf16: bool
    act_b: int  # bytes per activation element
    b: int  # sequences per micro-batch
    seq: int  # prompt + completion tokens
    keep: int  # positions whose logits are computed (the completion and its stop)


def shape(params: Params, key: str, student: str, teacher: str | None) -> Shape:
    g = params.section(key)
    bf16 = params.run.dtype in ("auto", "bf16", "fp16")
    prompt = 256  # typical chat prompt with the instruction (tokens)
    return Shape(g, key, arch(student), arch(teacher) if teacher is not None else None, bf16, 2 if bf16 else 4,
                 g.per_device_train_batch_size, prompt + g.max_completion_length,
                 g.max_completion_length + 1)  # logits only at completion positions


@dataclass
class Stage:
    """What a method's memory plan returns: the models it trains with and its rows (component, GiB,
    note), and the GiB of frozen weights ZeRO-3 may shard beside the trainable state."""

    student: str
    teacher: str | None
    rows: list[tuple[str, float, str]]
    frozen: float = 0.0


def activations_row(sh: Shape, note: str = "") -> tuple[str, float, str]:
    g = sh.section
    return ("activations", _activations(sh.s, sh.seq, sh.b, sh.act_b, g.gradient_checkpointing) / GiB,
            ("checkpointed" if g.gradient_checkpointing else "no recomputation") + note)


def teacher_row(params: Params, sh: Shape) -> tuple[tuple[str, float, str], float]:
    """The frozen teacher's weights row and its GiB."""
    frozen = n_params(sh.t) * _nbytes(params.models.teacher_dtype, sh.bf16) / GiB
    dtype = params.models.teacher_dtype
    return ("teacher weights (frozen)", frozen,
            "no grads, no optimizer" + ("" if dtype == "auto" else f"; models.teacher_dtype: {dtype}")), frozen


def jsd_logits(sh: Shape) -> float:
    """Bytes of a same-vocabulary-sized generalized JSD's logits: both models' completion logits and
    four float32 copies (log-softmaxes, mixture, grad) of ``loss_chunk_size`` rows at a time."""
    chunk = getattr(sh.section, "loss_chunk_size", 0)
    rows_logit = min(sh.keep * sh.b, chunk) if chunk else sh.keep * sh.b
    return (sh.keep * sh.b * (sh.s["vocab"] + sh.t["vocab"]) * sh.act_b
            + 4 * rows_logit * max(sh.s["vocab"], sh.t["vocab"]) * 4)


def distill_plan(params: Params, key: str, student: str, teacher: str, *, teacher_samples: bool = False,
                 logits=jsd_logits) -> Stage:
    """A distillation stage: the trained student and a frozen teacher, the sampler's KV cache (the
    teacher's with ``teacher_samples``), and ``logits(shape)`` bytes of completion logits."""
    sh = shape(params, key, student, teacher)
    rows = trainable_state(sh.section, key, sh.s, sh.bf16)
    row, frozen = teacher_row(params, sh)
    rows += [row, activations_row(sh)]
    gen = sh.t if teacher_samples else sh.s
    rows.append(("generation KV cache", kv_cache(gen, sh.seq, sh.b, sh.act_b) / GiB,
                 f"{sh.b} x {sh.seq} tokens" + (" (teacher samples)" if teacher_samples else "")))
    chunk = getattr(sh.section, "loss_chunk_size", None)
    rows.append(("logits (completion only)", logits(sh) / GiB,
                 f"V={sh.s['vocab']}/{sh.t['vocab']}" + (f", chunk={chunk or 'none'}" if chunk is not None else "")))
    return Stage(student, teacher, rows, frozen)


def default_plan(params: Params, key: str) -> Stage:
    """The plan of a method without its own: distillation from its section's (or the shared) pair."""
    g = params.section(key)
    return distill_plan(params, key, getattr(g, "student", params.models.student),
                        getattr(g, "teacher", params.models.teacher))


def _plan(params: Params, key: str, gpu_gb: float) -> Plan:
    """Memory of one training stage on one device, in GiB: the method's own plan (its registry
    record's ``memory``), totalled against the device."""
    stage = registry.resolve(registry.get(key).memory or default_plan)(params, key)
    total = sum(r[1] for r in stage.rows)
    usable = gpu_gb * USABLE
    advice = []
    if total > usable:
        advice = _advice(params, key, stage.rows, stage.frozen, n_params(arch(stage.student)), usable)
    return Plan(stage.rows, total, gpu_gb, total <= usable, advice, stage=key, student=stage.student,
                teacher=stage.teacher, profile=params.name)


def _advice(params: Params, key: str, rows: list, frozen: float, ps: int, usable: float) -> list[str]:
    g = params.section(key)
    gib = dict((c, v) for c, v, _ in rows)
    state = sum(gib[c] for c in gib if c.startswith(("student", "LoRA", "AdamW")))
    per_device = gib["activations"] + gib["generation KV cache"] + gib["logits (completion only)"]  # never sharded
    which = "teacher" if "teacher weights (frozen)" in gib else "reference model"
    also = f" (and the {which}'s {frozen:.0f} GiB if sharded)" if frozen else ""
    advice = [f"ZeRO-3 over N GPUs divides the student's {state:.0f} GiB of trainable state{also} by N: "
              f"N >= {max(2, int((state + frozen) // max(usable - per_device, 1)) + 1)}"]
    lora = g.lora_settings(key)
    if lora is None:
        advice.append(f"{key}.lora (peft adapters, e.g. {{r: 16}}) keeps only adapter grads/moments: the student's "
                      f"trainable state drops to ~{ps * 2 / GiB:.0f} GiB of frozen bf16 weights "
                      "(params/paper-1gpu.yaml)")
    if not g.gradient_checkpointing:
        advice.append("gradient_checkpointing: true cuts activations to the layer inputs")
    if g.optimizer == "adamw" and lora is None:
        advice.append(f"optimizer: adamw_8bit_bf16 cuts the student's trainable state to ~{ps * 6 / GiB:.0f} "
                      "GiB (bf16 weights with stochastic rounding, 8-bit moments; bench/optimizer.py)")
    if hasattr(g, "loss_chunk_size") and not g.loss_chunk_size:
        advice.append("loss_chunk_size: 256 bounds the float32 logit copies")
    if which == "teacher":
        advice.append("teacher_device: put the teacher on its own GPU (models.teacher_device)")
    return advice


def estimate(params: Params, gpu_gb: float = 80.0, key: str | None = None) -> Plan:
    """Memory of one stage on one device, in GiB: ``key``, by default the registry's first method (GKD);
    every enabled stage: :func:`estimate_stages`."""
    return _plan(params, key or registry.keys()[0], gpu_gb)


def estimate_stages(params: Params, gpu_gb: float = 80.0) -> dict[str, Plan]:
    """A plan per training stage the params enable, in registry order."""
    return {key: _plan(params, key, gpu_gb) for key in params.enabled()}


def heading(plan: Plan) -> str:
    teacher = f"teacher {plan.teacher}" if plan.teacher is not None else "no teacher"
    return (f"### {plan.stage} — student {plan.student}, {teacher} "
            f"(profile {plan.profile}, device {plan.device_gib:.0f} GiB)")


def format_plan(plan: Plan) -> str:
    lines = ["| component | GiB | note |", "|---|---:|---|"]
    lines += [f"| {c} | {v:.1f} | {n} |" for c, v, n in plan.rows]
    lines.append(f"| **total** | **{plan.total_gib:.1f}** | device {plan.device_gib:.0f} GiB ({USABLE:.0%} usable): "
                 f"{'fits' if plan.fits else 'does NOT fit'} |")
    if plan.advice:
        lines.append("")
        lines += [f"- {a}" for a in plan.advice]
    return "\n".join(lines)


def format_plans(plans: dict[str, Plan], profile: str = "") -> str:
    """Every stage's plan under its heading, then one line saying which stages fit."""
    if not plans:
        return f"No training stage is enabled in profile {profile}: nothing to plan."
    parts = [f"{heading(p)}\n\n{format_plan(p)}" for p in plans.values()]
    fit = [k for k, p in plans.items() if p.fits]
    not_fit = [k for k, p in plans.items() if not p.fits]
    device = next(iter(plans.values())).device_gib
    verdict = (f"Fit on one {device:.0f} GiB device: {', '.join(fit) or 'none'}; "
               f"do NOT fit: {', '.join(not_fit) or 'none'}.")
    return "\n\n".join([*parts, verdict])
