"""What the prompt costs a training step, and what a shorter one does to the untrained student (issue 38).

Every training sample re-reads its prompt: the student's forward and backward and the teacher's
forward run over prompt + completion positions, while only the completion teaches. So the training
FLOPs per sampled completion token scale with ``(prompt + completion) / completion`` (the ledger's
FLOPs are parameter count x positions, training/ledger.py). This probe measures, for each prompt
variant, the prompt's length in the student's tokens, and the untrained student's greedy accuracy,
answer length, truncation and answer form on the same problems with the kit's evaluator and grader,
so a shorter prompt is chosen only if it keeps the student's format and accuracy.

    .venv/bin/python bench/prompt_cost.py --params params/study.yaml --n 100
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from atlas_lib.core import config, models
from atlas_lib.data.prompts import build_messages, render_prompt
from atlas_lib.data.sources import reasoning_gym_rows
from atlas_lib.evaluation import evaluate as ev

TERSE = "Give the result as one line: 'Final Answer: <number>'."
VARIANTS = {  # name: changes to the params' prompt section
    "params (as configured)": {},
    # "no worked example" alone ({"few_shot": 0}) is left out: the student then writes 116-192 tokens
    # per answer (bench/RESULTS.md section 6a), which costs more than the example saves
    "no example, terse system + instruction": {"few_shot": 0, "system": "You are a careful math tutor.",
                                               "instruction": TERSE},
    "no system, no example, terse instruction": {"few_shot": 0, "system": "", "instruction": TERSE},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params/study.yaml")
    ap.add_argument("--n", type=int, default=100, help="problems (the generator's first n at run.seed + 1)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--variants", nargs="*", default=None, help="names of VARIANTS to run (default: all)")
    ap.add_argument("--model", choices=("student", "teacher"), default="student",
                    help="whose accuracy and format under each prompt (the teacher's decides what GKD teaches)")
    a = ap.parse_args()
    p = config.load(a.params)
    p.data.size = a.n
    rows = reasoning_gym_rows(p.data, p.run.seed + 1)[: a.n]  # another seed than the split's own draw
    student, tok = models.load_model(getattr(p.models, a.model), dtype=torch.float32,
                                     device=models.resolve_device("cpu"))
    print("| prompt | prompt tokens | accuracy | mean completion tokens | truncated | (P + C) / C | vs params | gen s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for name, change in VARIANTS.items():
        if a.variants and name not in a.variants:
            continue
        cfg = dataclasses.replace(p.prompt, **change)
        prompt_tokens = sum(len(tok(render_prompt(tok, build_messages(r["question"], cfg)))["input_ids"])
                            for r in rows) / len(rows)
        t0 = time.monotonic()
        res = ev.evaluate(student, tok, rows, prompt_cfg=cfg, max_new_tokens=a.max_new_tokens,
                          batch_size=p.evaluation.batch_size)
        m = res.metrics
        c = max(m["avg_generated_tokens"], 1.0)
        ratio = (prompt_tokens + c) / c
        base = base or ratio
        print(f"| {name} | {prompt_tokens:.0f} | {m['accuracy']:.3f} | {c:.1f} | {m['truncation_rate']:.2f} | "
              f"{ratio:.1f} | {base / ratio:.2f}x | {time.monotonic() - t0:.0f} |", flush=True)
        for r in res.records[:2]:
            print(f"  e.g. {r['completion'][:160]!r}", flush=True)


if __name__ == "__main__":
    main()
