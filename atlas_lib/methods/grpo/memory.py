"""Memory plan of the grpo stage: the student alone (a frozen reference copy when ``beta > 0``, none
under LoRA, whose adapters switch off), its KV cache holding the whole generation batch (TRL:
steps_per_generation = gradient accumulation), and the student's logits only."""

from __future__ import annotations

from atlas_lib.core.config import Params
from atlas_lib.training.memory import GiB, Stage, activations_row, kv_cache, n_params, shape, trainable_state


def plan_grpo(params: Params, key: str) -> Stage:
    sh = shape(params, key, params.models.student, None)
    g = sh.section
    rows = trainable_state(g, key, sh.s, sh.bf16)
    frozen = 0.0
    if g.beta > 0:  # the KL term's reference: TRL copies the policy, unless LoRA can switch adapters off
        if g.lora_settings(key) is None:
            frozen = n_params(sh.s) * (2 if g.optimizer == "adamw_8bit_bf16" else 4) / GiB
            rows.append(("reference model (frozen)", frozen, f"beta={g.beta}: a copy of the student, no grads"))
        else:
            rows.append(("reference model (frozen)", 0.0, f"beta={g.beta}: the base with the adapters disabled"))
    rows.append(activations_row(sh, f", {sh.b} x {sh.seq} tokens per micro-batch"))
    n = g.sequences_per_step()
    rows.append(("generation KV cache", kv_cache(sh.s, sh.seq, n, sh.act_b) / GiB,
                 f"{n} x {sh.seq} tokens (generation batch: {sh.b} x {g.gradient_accumulation_steps})"))
    rows.append(("logits (completion only)", sh.keep * sh.b * sh.s["vocab"] * (sh.act_b + 2 * 4) / GiB,
                 f"V={sh.s['vocab']}, student only; float32 log-probs and their grad"))
    return Stage(params.models.student, None, rows, frozen)
