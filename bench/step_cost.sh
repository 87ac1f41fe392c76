#!/usr/bin/env bash
# What a training step costs under two prompts, in one run (issue 38 item 1): GKD and GRPO, a few optimizer
# steps each from the same untrained student, under the params' prompt and under the study's earlier
# prompt (system "... step by step, briefly" + one worked example). Read from each run's compute ledger
# (training/ledger.py): training FLOPs per step, per sampled completion token, the prompt positions'
# share of them, and device seconds per step (the first step left out as warm-up). Evaluation is cut to
# 8 problems without the teacher's scoring: the ledger holds training compute only.
#   ATLAS_RUNS=/tmp/stepcost bash bench/step_cost.sh params/study.yaml 4
set -euo pipefail
params=$1 steps=$2; shift 2
bin=$(dirname "$0")/../.venv/bin
name=$("$bin/python" -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$params")
[ -f "${ATLAS_RUNS:?set ATLAS_RUNS to a scratch directory}/$name/data/manifest.json" ] || "$bin/atlas" data --params "$params"
old=(--set prompt.few_shot=1 --set "prompt.system=You are a careful math tutor. Solve the problem step by step, briefly."
     --set "prompt.instruction=\"End with a line of the form 'Final Answer: <number>'.\"")
common=(--set evaluation.during_training_limit=8 --set evaluation.limit=8 --set evaluation.reverse_kl=false
        --set run.flop_budget=0 --set run.seeds=[])
for method in gkd grpo; do
  for prompt in params earlier; do
    extra=(); [ "$prompt" = earlier ] && extra=("${old[@]}")
    "$bin/atlas" train "$method" --params "$params" "${common[@]}" "${extra[@]}" --set "$method.max_steps=$steps" \
      --set "$method.eval_steps=$steps" --set "$method.save_steps=$((steps + 1))" \
      --set "$method.run_name=$name/stepcost-$method-$prompt" "$@"
  done
done
"$bin/python" - "$ATLAS_RUNS/$name" "$params" <<'PY'
import json, pathlib, statistics, sys
import yaml
root, raw = pathlib.Path(sys.argv[1]), yaml.safe_load(open(sys.argv[2]))
print("| method | prompt | prompt tokens P | completion tokens C / sequence | (P + C) / C | training FLOPs / step "
      "| FLOPs / completion token | prompt share of FLOPs | s / step (median after the first) |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for d in sorted(root.glob("stepcost-*")):
    method, prompt = d.name.split("-")[1:3]
    sec = raw[method]
    n_seq = sec.get("per_device_train_batch_size", 1) * sec.get("gradient_accumulation_steps", 1)
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]
    led = [r for r in rows if r["kind"] == "ledger"]
    p_tok = next(r["avg_prompt_tokens"] for r in rows if r["kind"] == "eval" and r.get("avg_prompt_tokens"))
    # every sampled sequence is prompt + completion: C from the ledger's sampled tokens per step
    comp = statistics.mean(r["sampled_tokens"] for r in led) / n_seq - p_tok
    flops = statistics.mean(r["flops"] for r in led)
    secs = statistics.median(r["step_seconds"] for r in led[1:]) if len(led) > 1 else led[0]["step_seconds"]
    print(f"| {method} | {prompt} | {p_tok:.0f} | {comp:.1f} | {(p_tok + comp) / comp:.1f} | {flops:.3g} | "
          f"{flops / (n_seq * comp):.3g} | {p_tok / (p_tok + comp):.0%} | {secs:.1f} |")
PY
