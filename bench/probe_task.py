"""Which task gives both methods a training signal on the embedded pair? (issue 18's task probe)

For each reasoning-gym task: greedy accuracy, mean generated tokens and truncation of the
untrained student and of the teacher on the same N problems, and the student's sampled pass rate
(``--samples`` completions at the GRPO temperature): the fraction of GRPO groups that would carry
signal (some but not all samples correct) is what makes exact-match GRPO learn at all.

    python bench/probe_task.py --tasks basic_arithmetic chain_sum gsm_symbolic --n 32
    python bench/probe_task.py --tasks basic_arithmetic --task-config '{"max_terms": 3, "max_digits": 2}' --samples 8
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from atlas_lib.core import config, models
from atlas_lib.data import answers
from atlas_lib.data.prompts import build_messages, render_prompt
from atlas_lib.data.sources import reasoning_gym_rows
from atlas_lib.evaluation import evaluate as ev


def sampled_groups(model, tok, rows, prompt_cfg, k: int, max_new_tokens: int, temperature: float) -> dict:
    """k samples per problem: mean pass rate and the fraction of groups with mixed outcomes."""
    tok.padding_side = "left"
    mixed, rates = 0, []
    for r in rows:
        text = render_prompt(tok, build_messages(r["question"], prompt_cfg))
        enc = tok([text] * k, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        comps = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        ok = [answers.is_correct(c, r["answer"]) for c in comps]
        rates.append(sum(ok) / k)
        mixed += 0 < sum(ok) < k
    return {"pass_rate": sum(rates) / len(rates), "mixed_groups": mixed / len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/embedded.yaml")
    ap.add_argument("--tasks", nargs="+", default=["basic_arithmetic", "chain_sum", "gsm_symbolic"])
    ap.add_argument("--task-config", type=json.loads, default={}, help='generator settings, e.g. \'{"max_terms": 3}\'')
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--few-shot", type=int, default=None)
    ap.add_argument("--samples", type=int, default=0, help="sampled completions per problem (0: skip)")
    ap.add_argument("--sample-problems", type=int, default=8)
    ap.add_argument("--no-teacher", action="store_true")
    a = ap.parse_args()
    p = config.load(a.params)
    if a.few_shot is not None:
        p.prompt.few_shot = a.few_shot
    dev = models.resolve_device("cpu")
    student, s_tok = models.load_model(p.models.student, dtype=torch.float32, device=dev)
    teacher = t_tok = None
    if not a.no_teacher:
        teacher, t_tok = models.load_model(p.models.teacher, dtype=torch.float32, device=dev)
    print("| task | model | accuracy | mean tokens | truncated | gen s | pass@T | mixed groups |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for task in a.tasks:
        p.data.task, p.data.size, p.data.task_config = task, a.n, a.task_config
        rows = reasoning_gym_rows(p.data, p.run.seed)[: a.n]
        for who, m, t in (("student", student, s_tok), ("teacher", teacher, t_tok)):
            if m is None:
                continue
            t0 = time.monotonic()
            res = ev.evaluate(m, t, rows, prompt_cfg=p.prompt, max_new_tokens=a.max_new_tokens, batch_size=32)
            secs = time.monotonic() - t0
            mm = res.metrics
            extra = {"pass_rate": float("nan"), "mixed_groups": float("nan")}
            if a.samples and who == "student":
                extra = sampled_groups(m, t, rows[: a.sample_problems], p.prompt, a.samples, a.max_new_tokens,
                                       p.grpo.temperature)
            print(f"| {task} | {who} | {mm['accuracy']:.3f} | {mm['avg_generated_tokens']:.1f} | "
                  f"{mm['truncation_rate']:.2f} | {secs:.0f} | {extra['pass_rate']:.2f} | "
                  f"{extra['mixed_groups']:.2f} |", flush=True)
            if who == "student":
                print("  e.g.", repr(res.records[0]["completion"][:300]), flush=True)


if __name__ == "__main__":
    main()
