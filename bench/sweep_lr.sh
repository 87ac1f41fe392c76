#!/usr/bin/env bash
# The per-method learning-rate sweep (issue 38 item 3): one method at each learning rate, every run from the
# same untrained student at the first training seed, stopped by the same training-FLOP budget (run.flop_budget),
# validation accuracy at eval_steps on evaluation.during_training_limit problems (the curve), test rows cut to
# 8 problems without the teacher's scoring (the test split stays unread for the choice). Outside `make study`;
# the study takes each method's best final validation accuracy.
#   ATLAS_RUNS=/tmp/sweep bash bench/sweep_lr.sh gkd params/study.yaml 6e13 6 "3e-5 1e-4 3e-4" [--set ...]
set -euo pipefail
method=$1 params=$2 budget=$3 every=$4 lrs=$5; shift 5
bin=$(dirname "$0")/../.venv/bin
name=$("$bin/python" -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$params")
[ -f "${ATLAS_RUNS:?set ATLAS_RUNS to a scratch directory}/$name/data/manifest.json" ] || "$bin/atlas" data --params "$params"
for lr in $lrs; do
  "$bin/atlas" train "$method" --params "$params" --set run.seeds=[] --set "run.flop_budget=$budget" \
    --set evaluation.limit=8 --set evaluation.reverse_kl=false --set "$method.learning_rate=$lr" \
    --set "$method.eval_steps=$every" --set "$method.save_steps=$every" --set "$method.run_name=$name/sweep-$method-lr$lr" "$@"
done
"$bin/python" - "$ATLAS_RUNS/$name" "$method" <<'PY'
import json, pathlib, statistics, sys
root, method = pathlib.Path(sys.argv[1]), sys.argv[2]
print("| run | steps | val accuracy at each eval point (step: acc) | training FLOPs at the end | val tokens at the end "
      "| s / step (median) |")
print("|---|---:|---|---:|---:|---:|")
for d in sorted(root.glob(f"sweep-{method}-lr*")):
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]
    ev = [r for r in rows if r["kind"] == "eval"]
    led = [r for r in rows if r["kind"] == "ledger"]
    curve = ", ".join(f"{r['step']}: {100 * r['accuracy']:.0f}%" for r in ev)
    flops = led[-1]["cum_flops"] if led else 0.0
    secs = statistics.median(r["step_seconds"] for r in led) if led else float("nan")
    print(f"| {d.name} | {led[-1]['step'] if led else 0} | {curve} | {flops:.3g} | {ev[-1]['avg_generated_tokens']:.1f} | "
          f"{secs:.1f} |")
PY
