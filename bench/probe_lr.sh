#!/usr/bin/env bash
# Learning-rate / batch probe for one method on a profile (issue 18): a few optimizer steps per
# setting from the same untrained student, each in its own run directory under $ATLAS_RUNS/<profile>/,
# then validation accuracy, divergence (reverse KL or aligned), the method's own objective, the
# log-ratio to the teacher and tokens at step 0 and at the end, per run.
#   ATLAS_RUNS=/tmp/probe bash bench/probe_lr.sh gkd params/embedded.yaml 4 "5e-6 1e-5 2e-5" [--set ...]
set -euo pipefail
method=$1 params=$2 steps=$3 lrs=$4; shift 4
bin=$(dirname "$0")/../.venv/bin
name=$("$bin/python" -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$params")
[ -f "${ATLAS_RUNS:?set ATLAS_RUNS to a scratch directory}/$name/data/manifest.json" ] || "$bin/atlas" data --params "$params"
for lr in $lrs; do
  "$bin/atlas" train "$method" --params "$params" --set "$method.learning_rate=$lr" --set "$method.max_steps=$steps" \
    --set "$method.eval_steps=$steps" --set "$method.save_steps=$((steps + 1))" --set "$method.run_name=$name/probe-$method-lr$lr" "$@"
done
"$bin/python" - "$ATLAS_RUNS/$name" "$method" <<'PY'
import json, sys, pathlib
root, method = pathlib.Path(sys.argv[1]), sys.argv[2]
print("| run | step | val acc | val divergence | val own objective | val log-ratio/char | val tokens | test acc | test divergence | test own objective | mean loss | s/step | peak RSS GB | zero-var groups |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
nan = float("nan")
div = lambda m: m.get("aligned_divergence") if m.get("aligned_divergence") is not None else m.get("mean_reverse_kl")
f = lambda x: f"{x:.4f}" if isinstance(x, (int, float)) else "-"
for d in sorted(root.glob(f"probe-{method}-lr*")):
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]
    ev = [r for r in rows if r["kind"] == "eval"]
    tr = [r for r in rows if r["kind"] == "train"]
    s = json.loads((d / "summary.json").read_text())
    t = s["training"]
    zv = [r.get("frac_zero_std") for r in tr if r.get("frac_zero_std") is not None]
    for r in (ev[0], ev[-1]):
        test = s["distilled"] if r is ev[-1] else s.get("initial") or {}
        print(f"| {d.name} | {r['step']} | {r['accuracy']:.3f} | {f(div(r))} | {f(r.get('heldout_objective'))} | "
              f"{f(r.get('mean_logratio_per_char'))} | {r['avg_generated_tokens']:.1f} | {test.get('accuracy', nan):.3f} | "
              f"{f(div(test))} | {f(test.get('heldout_objective'))} | {sum(x['loss'] for x in tr) / max(len(tr), 1):.4f} | "
              f"{t.get('train_seconds', t['duration_seconds']) / max(t['global_step'], 1):.0f} | "
              f"{t.get('peak_rss_gb') or nan:.1f} | {(sum(zv) / len(zv)) if zv else nan:.2f} |")
PY
