"""Will it fit? A memory plan for a parameter set's GKD stage on one device.

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
    raise KeyError(f"no shape known for {name!r}: add it to atlas_lib.methods.memory.KNOWN or pass a local model dir")


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


def estimate(params: Params, gpu_gb: float = 80.0) -> Plan:
    """Memory of the GKD stage (the largest) on one device, in GiB."""
    g = params.gkd
    s, t = arch(params.models.student), arch(params.models.teacher)
    ps, pt = n_params(s), n_params(t)
    bf16 = params.run.dtype in ("auto", "bf16", "fp16")
    b = g.per_device_train_batch_size
    prompt = 256  # typical chat prompt with the instruction (tokens)
    seq = prompt + g.max_completion_length
    act_b = 2 if bf16 else 4
    # Korthikanti et al. 2022: s*b*h*(34 + 5*a*s/h) bytes per layer without recomputation;
    # with checkpointing only the layer inputs (2*s*b*h bytes) are kept.
    per_layer = seq * b * s["hidden"] * (34 + 5 * s["heads"] * seq / s["hidden"]) * act_b / 2
    acts = s["layers"] * (2 * seq * b * s["hidden"] * act_b if g.gradient_checkpointing else per_layer)
    kv = 2 * s["layers"] * s["kv"] * (s["hidden"] // s["heads"]) * seq * b * act_b
    keep = g.max_completion_length + 1
    rows_logit = min(keep * b, g.loss_chunk_size) if g.loss_chunk_size else keep * b
    logits = (keep * b * (s["vocab"] + t["vocab"]) * act_b  # both models' completion logits
              + 4 * rows_logit * max(s["vocab"], t["vocab"]) * 4)  # float32 log-softmaxes, mixture, grad
    lora = g.lora_settings("gkd")
    if lora is not None:  # frozen base weights in the compute dtype; fp32 adapters with grads and AdamW moments
        pa = lora_params(s, lora["r"], lora["target_modules"])
        state = [(f"student weights ({'bf16' if bf16 else 'fp32'}, frozen)", ps * act_b / GiB, "LoRA: no grads"),
                 ("LoRA adapters + grads", pa * 8 / GiB, f"r={lora['r']}, {pa / 1e6:.0f}M parameters, fp32"),
                 ("AdamW moments (adapters)", pa * 8 / GiB, "two fp32 moments per adapter parameter")]
    elif g.optimizer == "adamw_8bit_bf16":  # bf16 weights and grads, two 8-bit moments (+ a scale per 256)
        state = [("student weights (bf16)", ps * 2 / GiB, "updates stochastically rounded"),
                 ("student grads", ps * 2 / GiB, "bf16, same shape as the weights"),
                 ("AdamW moments", ps * 2 * (1 + 4 / 256) / GiB, "torchao AdamW8bit: two 8-bit moments")]
    else:  # HF Trainer's bf16 mode keeps fp32 weights and autocasts compute: 4 + 4 + 8 bytes/param.
        state = [("student weights (fp32 master)", ps * 4 / GiB, "bf16 autocast compute" if bf16 else "fp32"),
                 ("student grads", ps * 4 / GiB, "fp32, same shape as the weights"),
                 ("AdamW moments", ps * 8 / GiB, "two fp32 moments per parameter")]
    rows = [
        *state,
        ("teacher weights (frozen)", pt * (2 if bf16 else 4) / GiB, "no grads, no optimizer"),
        ("activations", acts / GiB, "checkpointed" if g.gradient_checkpointing else "no recomputation"),
        ("generation KV cache", kv / GiB, f"{b} x {seq} tokens"),
        ("logits (completion only)", logits / GiB, f"V={s['vocab']}/{t['vocab']}, chunk={g.loss_chunk_size or 'none'}"),
    ]
    total = sum(r[1] for r in rows)
    usable = gpu_gb * USABLE
    advice = []
    if total > usable:
        state = rows[0][1] + rows[1][1] + rows[2][1]
        advice.append(f"ZeRO-3 over N GPUs divides the student's {state:.0f} GiB of trainable state "
                      f"(and the teacher's {rows[3][1]:.0f} GiB if sharded) by N: "
                      f"N >= {max(2, int((state + rows[3][1]) // max(usable - rows[4][1] - rows[6][1], 1)) + 1)}")
        if lora is None:
            advice.append("gkd.lora (peft adapters, e.g. {r: 16}) keeps only adapter grads/moments: the student's "
                          f"trainable state drops to ~{ps * 2 / GiB:.0f} GiB of frozen bf16 weights "
                          "(params/paper-1gpu.yaml)")
        if not g.gradient_checkpointing:
            advice.append("gradient_checkpointing: true cuts activations to the layer inputs")
        if g.optimizer == "adamw":
            advice.append(f"optimizer: adamw_8bit_bf16 cuts the student's trainable state to ~{ps * 6 / GiB:.0f} "
                          "GiB (bf16 weights with stochastic rounding, 8-bit moments; bench/optimizer.py)")
        if not g.loss_chunk_size:
            advice.append("loss_chunk_size: 256 bounds the float32 logit copies")
        advice.append("teacher_device: put the teacher on its own GPU (models.teacher_device)")
    return Plan(rows, total, gpu_gb, total <= usable, advice)


def format_plan(plan: Plan) -> str:
    lines = ["| component | GiB | note |", "|---|---:|---|"]
    lines += [f"| {c} | {v:.1f} | {n} |" for c, v, n in plan.rows]
    lines.append(f"| **total** | **{plan.total_gib:.1f}** | device {plan.device_gib:.0f} GiB ({USABLE:.0%} usable): "
                 f"{'fits' if plan.fits else 'does NOT fit'} |")
    if plan.advice:
        lines.append("")
        lines += [f"- {a}" for a in plan.advice]
    return "\n".join(lines)
