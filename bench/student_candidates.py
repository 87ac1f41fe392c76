"""Which shipped model is worth distilling into? (issue 31, item 4)

Every embedded model that could be a cross-tokenizer student, greedy on the first N test problems of
a profile's prepared split, with the shared evaluator and grader (accuracy, Wilson interval, tokens,
truncation) and its tokenizer kind (TRL's GOLD accepts ByteLevel BPE only). Needs the profile's data
stage (`atlas data --params ...`).

    python bench/student_candidates.py --params params/study_cross.yaml --n 200
"""

from __future__ import annotations

import argparse
import time

from atlas_lib.core import config, embedded, models
from atlas_lib.data import splits
from atlas_lib.evaluation import evaluate as ev
from atlas_lib.methods.cross_tokenizer.alignment import tokenizer_kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/study_cross.yaml")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--models", nargs="*", default=[n for n in embedded.EMBEDDED if not n.startswith("qwen")])
    a = ap.parse_args()
    params = config.load(a.params)
    rows = list(splits.load_prepared(params).eval)[:a.n]
    e = params.evaluation
    print("| model | tokenizer | chat template | accuracy [95% CI] | avg tokens | truncated | seconds |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name in a.models:
        model, tok = models.load_model(name, device="cpu")
        t0 = time.monotonic()
        m = ev.evaluate(model, tok, rows, prompt_cfg=params.prompt, max_new_tokens=e.max_new_tokens,
                        batch_size=e.batch_size, desc=name).metrics
        print(f"| {name} | {tokenizer_kind(tok)} | {embedded.EMBEDDED[name].chat_template} | "
              f"{100 * m['accuracy']:.1f}% [{100 * m['ci_low']:.1f}, {100 * m['ci_high']:.1f}] | "
              f"{m['avg_generated_tokens']:.1f} | {100 * m['truncation_rate']:.0f}% | {time.monotonic() - t0:.0f} |")


if __name__ == "__main__":
    main()
