"""The untrained models' rows (notebook 01): the student and the teacher on the test split, and the
untrained student on the validation subset, which every method's step-0 eval point reuses."""

from __future__ import annotations

import logging
from pathlib import Path

from atlas_lib.core import models, registry
from atlas_lib.core.config import Params
from atlas_lib.core.files import atomic_write_json
from atlas_lib.core.paths import runs_root
from atlas_lib.core.preflight import load_summary
from atlas_lib.core.provenance import provenance
from atlas_lib.core.runtime import seed_everything
from atlas_lib.data import prompts, splits
from atlas_lib.evaluation import evaluate as ev
from atlas_lib.evaluation import logratio, pair_check
from atlas_lib.evaluation.context import check_context
from atlas_lib.evaluation.divergence import Objective

log = logging.getLogger(__name__)


def baseline_dir(params: Params) -> Path:
    """``runs/<profile>/baseline``: notebook 01's untrained-student and teacher evaluations."""
    return runs_root() / params.name / "baseline"


def eval_examples(params: Params, prepared, during_training: bool = True) -> list[dict]:
    """Eval points during training use the validation split (the training curves); the
    reported rows use the test split."""
    if during_training:
        return list(prepared.val)[:params.evaluation.during_training_limit]
    return list(prepared.eval)[:params.evaluation.limit]


def baseline_records(params: Params) -> list[dict] | None:
    """Records of notebook 01's untrained-student evaluation, when they are valid for these params.

    Step 0 of a same-student method evaluates the same untrained student, with the same prompt,
    decoding and problems (greedy is deterministic), so it reuses these instead of generating them
    again. Valid only when every shared section (run, models, data, prompt, evaluation, tracking)
    is unchanged, which the baseline's ``stage_hash`` records.
    """
    out_dir = baseline_dir(params)
    summary = load_summary(out_dir) or {}
    if summary.get("stage_hash") != params.stage_hash("data") or not (out_dir / "student_val.records.jsonl").exists():
        return None
    log.info("step 0 reuses the untrained student's validation evaluation in %s (same params)", out_dir.name)
    return ev.load_eval(out_dir, "student_val").records


def baseline_metrics(params: Params) -> dict:
    """The pre-training student and teacher rows written by notebook 01 (empty if not run)."""
    s = load_summary(baseline_dir(params)) or {}
    if s.get("stage_hash") != params.stage_hash("data"):
        return {"baseline": None, "teacher": None}  # evaluated under other params: not this run's baseline
    return {"baseline": s.get("student"), "teacher": s.get("teacher")}


def objectives(params: Params) -> tuple[Objective, ...]:
    """The objectives the enabled methods declare in the registry (``Method.objective``, built from each
    one's section), one per key: the untrained student's answers are scored under each
    (``objective_by_beta``), so each method's own objective has its starting point (keyed by its
    parameters, so a changed beta finds no value rather than a wrong one). A method that declares none is
    not scored, whatever its section's fields are called."""
    built = (registry.get(k).objective_for(params.section(k)) for k in params.enabled())
    return tuple({o.key: o for o in built if o is not None}.values())


def control_role(name: str) -> str:
    """The file stem (``runs/<profile>/baseline/<stem>.records.jsonl``) and table row key of a prompt control."""
    return f"control_{name}"


def evaluate_controls(params: Params, model, tok, examples: list[dict], out_dir: Path) -> dict:
    """The untrained student under each prompt control of ``evaluation.controls`` (no training): the
    student row's model, test problems, grader (:func:`atlas_lib.evaluation.evaluate.evaluate`) and greedy
    decoding budget; only the prompt differs (:func:`atlas_lib.data.prompts.control_prompt`). The teacher
    does not score these answers (its forward over the test answers is the dearest evaluation)."""
    e, out = params.evaluation, {}
    for name in e.controls:
        res = ev.evaluate(model, tok, examples, prompt_cfg=prompts.control_prompt(params.prompt, name),
                          max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, desc=f"eval control {name}")
        res.metrics["kl_note"] = "not scored for a prompt control (the teacher's forward is left out)"
        res.metrics["control"] = {"name": name, "label": prompts.CONTROLS[name]["label"],
                                  "instruction": prompts.CONTROLS[name]["instruction"]}
        ev.save_eval(res, out_dir, control_role(name))
        out[name] = res.metrics
        log.info("control %s: accuracy %.3f on %d problems, %.1f tokens per answer", name, res.metrics["accuracy"],
                 res.metrics["n"], res.metrics.get("avg_generated_tokens") or float("nan"))
    return out


def evaluate_baselines(params: Params, which: tuple[str, ...] = ("student", "teacher")) -> dict:
    """Evaluate the untrained student and the teacher on the test split (notebook 01's rows), and
    the untrained student on the validation subset (step 0 of the training curves)."""
    seed_everything(params)
    prepared = splits.load_prepared(params)
    device = models.resolve_device(params.run.device)
    dtype = models.resolve_dtype(params.run.dtype, device)
    out_dir = baseline_dir(params)
    examples = eval_examples(params, prepared, during_training=False)
    e = params.evaluation
    check_context(params, prepared, [params.models.student, params.models.teacher], e.max_new_tokens,
                  "evaluation.max_new_tokens")
    teacher, t_tok = models.load_model(params.models.teacher, dtype=models.teacher_dtype(params, device),
                                       device=device, trust_remote_code=params.models.trust_remote_code)
    # `atlas check` once, before any training, on the teacher just loaded (no second load of it)
    try:
        check = pair_check.run_check(params, loaded={params.models.teacher: teacher},
                                     examples=list(prepared.val)[:pair_check.MAX_ANSWERS])
        pair_check.write(check, out_dir / "pair_check.json")
        log.info("pair check (%s):\n%s", out_dir / "pair_check.json", pair_check.format_text(check))
    except Exception as e:  # noqa: BLE001 - a diagnostic: the baselines go on, the report says it is missing
        log.warning("the pair check failed (%s: %s); `atlas check --params ...` shows it alone", type(e).__name__, e)
    asked = objectives(params)
    results = {}
    for role in which:
        if role == "teacher":
            model, tok = teacher, t_tok
        else:
            model, tok = models.load_model(params.models.student, dtype=dtype, device=device,
                                           trust_remote_code=params.models.trust_remote_code)
        res = ev.evaluate(model, tok, examples, prompt_cfg=params.prompt, max_new_tokens=e.max_new_tokens,
                          batch_size=e.batch_size, teacher=teacher if (e.reverse_kl and role == "student") else None,
                          teacher_tokenizer=t_tok, desc=f"eval {role}", objectives=asked if role == "student" else ())
        if role == "teacher":
            res.metrics["mean_reverse_kl"] = 0.0  # the teacher against itself, by definition
            res.metrics["mean_logratio_per_char"] = 0.0
            res.metrics["logratio_version"] = logratio.VERSION  # 0 under every rule; stated so it reads current
        ev.save_eval(res, out_dir, role)
        results[role] = res.metrics
        if role == "student":
            val = ev.evaluate(model, tok, eval_examples(params, prepared, during_training=True),
                              prompt_cfg=params.prompt, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                              teacher=teacher if e.reverse_kl and e.during_training_kl else None, teacher_tokenizer=t_tok,
                              desc="eval student (validation)", objectives=asked)
            ev.save_eval(val, out_dir, "student_val")
            results["student_val"] = val.metrics
            if e.controls:
                results["controls"] = evaluate_controls(params, model, tok, examples, out_dir)
        log.info("%s: accuracy %.3f [%.3f, %.3f] on %d problems", role, res.metrics["accuracy"],
                 res.metrics["ci_low"], res.metrics["ci_high"], res.metrics["n"])
    summary = {"student": results.get("student"), "teacher": results.get("teacher"),
               "student_val": results.get("student_val"), "controls": results.get("controls") or {},
               "models": {"student": params.models.student, "teacher": params.models.teacher},
               "dataset": {"eval": len(examples)}, "provenance": provenance(params),
               "stage_hash": params.stage_hash("data")}
    atomic_write_json(out_dir / "summary.json", summary)
    return summary
