"""The untrained models' rows (notebook 01): the student and the teacher on the test split, and the
untrained student on the validation subset, which every method's step-0 eval point reuses."""

from __future__ import annotations

import logging
from pathlib import Path

from atlas_lib.core import models, registry
from atlas_lib.core.config import Params
from atlas_lib.core.paths import runs_root
from atlas_lib.core.provenance import provenance
from atlas_lib.core.rundir import atomic_write_json, load_summary
from atlas_lib.core.runtime import seed_everything
from atlas_lib.data import splits
from atlas_lib.evaluation import evaluate as ev
from atlas_lib.evaluation.context import check_context

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


def objective_betas(params: Params) -> tuple[float, ...]:
    """The betas of the enabled same-tokenizer distilling methods: the untrained student's answers are
    scored at each (``objective_by_beta``), so each method's own objective has its starting point
    (keyed by beta, so a changed beta finds no value rather than a wrong one)."""
    return tuple(dict.fromkeys(float(params.section(k).beta) for k in params.enabled()
                               if registry.get(k).distills and registry.get(k).divergence == "reverse_kl"
                               and not registry.get(k).own_student and hasattr(params.section(k), "beta")))


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
    betas = objective_betas(params)
    results = {}
    for role in which:
        if role == "teacher":
            model, tok = teacher, t_tok
        else:
            model, tok = models.load_model(params.models.student, dtype=dtype, device=device,
                                           trust_remote_code=params.models.trust_remote_code)
        res = ev.evaluate(model, tok, examples, prompt_cfg=params.prompt, max_new_tokens=e.max_new_tokens,
                          batch_size=e.batch_size, teacher=teacher if (e.reverse_kl and role == "student") else None,
                          teacher_tokenizer=t_tok, desc=f"eval {role}", objective_betas=betas if role == "student" else ())
        if role == "teacher":
            res.metrics["mean_reverse_kl"] = 0.0  # the teacher against itself, by definition
            res.metrics["mean_logratio_per_char"] = 0.0
        ev.save_eval(res, out_dir, role)
        results[role] = res.metrics
        if role == "student":
            val = ev.evaluate(model, tok, eval_examples(params, prepared, during_training=True),
                              prompt_cfg=params.prompt, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                              teacher=teacher if e.reverse_kl and e.during_training_kl else None, teacher_tokenizer=t_tok,
                              desc="eval student (validation)", objective_betas=betas)
            ev.save_eval(val, out_dir, "student_val")
            results["student_val"] = val.metrics
        log.info("%s: accuracy %.3f [%.3f, %.3f] on %d problems", role, res.metrics["accuracy"],
                 res.metrics["ci_low"], res.metrics["ci_high"], res.metrics["n"])
    summary = {"student": results.get("student"), "teacher": results.get("teacher"),
               "student_val": results.get("student_val"),
               "models": {"student": params.models.student, "teacher": params.models.teacher},
               "dataset": {"eval": len(examples)}, "provenance": provenance(params),
               "stage_hash": params.stage_hash("data")}
    atomic_write_json(out_dir / "summary.json", summary)
    return summary
