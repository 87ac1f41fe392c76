"""``atlas``: the console entry point over the same params and functions the notebooks use.

    atlas report  [--params params/embedded.yaml] [--force] [--only gkd grpo]
    atlas data    [--params ...] [--set data.eval_limit=100]
    atlas baseline [--params ...]
    atlas train {gkd,grpo,cross_tokenizer} [--params ...] [--set gkd.max_steps=8 ...]
    atlas memory  [--params ...] [--gpu-gb 80]

Training commands run unchanged under ``accelerate launch -m atlas_lib.cli train ...`` for multi-GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import yaml

from atlas_lib import config


def parse_sets(items: list[str]) -> dict:
    """``key=value`` pairs; values parsed as YAML scalars (``8`` -> int, ``true`` -> bool)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise config.ParamsError(f"--set {item!r}: expected key=value, e.g. --set gkd.max_steps=8")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _params(args, stage: str | None = None) -> config.Params:
    return config.load(args.params, stage=stage, overrides=parse_sets(getattr(args, "set", [])))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="atlas", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, help_: str):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--params", default="params/embedded.yaml", help="parameter set (YAML in params/)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override, e.g. gkd.max_steps=8 (repeatable)")
        return sp

    r = add("report", "run notebooks 01-05 with papermill and render the HTML report")
    r.add_argument("--force", action="store_true", help="re-run stages even if unchanged")
    r.add_argument("--only", nargs="*", choices=[s for s in config.STAGES if s != "report"],
                   help="run only these stages (finished ones are still reused); no names: only re-render")
    add("data", "prepare the data directory (notebook 01's first half)")
    add("baseline", "evaluate the untrained student and the teacher")
    t = add("train", "train one stage (works under accelerate launch)")
    t.add_argument("stage", choices=["gkd", "grpo", "cross_tokenizer"])
    m = add("memory", "estimate whether a parameter set fits on a device")
    m.add_argument("--gpu-gb", type=float, default=80.0, help="device memory in GiB")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if args.cmd == "report":
            from atlas_lib.pipeline import run_pipeline

            if args.set:
                raise config.ParamsError("atlas report takes a params file; put overrides in a YAML file")
            html = run_pipeline(args.params, force=args.force, only=args.only)
            print(html)
        elif args.cmd == "data":
            from atlas_lib import data

            print(json.dumps(data.prepare(_params(args, "data")).manifest, indent=2))
        elif args.cmd == "baseline":
            from atlas_lib.stages import evaluate_baselines

            s = evaluate_baselines(_params(args, "data"))
            print(json.dumps({k: s[k] for k in ("student", "teacher")}, indent=2, default=str))
        elif args.cmd == "train":
            params = _params(args, args.stage)
            if args.stage == "gkd":
                from atlas_lib.gkd import run_gkd as fn
            elif args.stage == "grpo":
                from atlas_lib.grpo import run_grpo as fn
            else:
                from atlas_lib.cross_train import run_cross_tokenizer as fn
            s = fn(params)
            print(json.dumps(s.get("training", s), indent=2, default=str))
        elif args.cmd == "memory":
            from atlas_lib.memory import estimate, format_plan

            print(format_plan(estimate(_params(args), gpu_gb=args.gpu_gb)))
    except (config.ParamsError, FileNotFoundError) as e:
        print(f"atlas: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
