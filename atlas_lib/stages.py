"""Pieces every stage shares: seeding, loading the model pair, the bound evaluator, baselines."""

from __future__ import annotations

import gc
import logging
import random
from collections.abc import Callable

import numpy as np
import torch

from atlas_lib import evaluate as ev
from atlas_lib import models
from atlas_lib.config import Params
from atlas_lib.paths import runs_root
from atlas_lib.rundir import atomic_write_json, provenance

log = logging.getLogger(__name__)


class TokenizerMismatchError(ValueError):
    """Same-tokenizer GKD was asked for a pair whose tokenizers differ."""


def seed_everything(params: Params) -> None:
    random.seed(params.run.seed)
    np.random.seed(params.run.seed)
    torch.manual_seed(params.run.seed)
    if params.run.num_threads:
        torch.set_num_threads(params.run.num_threads)


def teacher_dtype(params: Params, device) -> torch.dtype:
    """The teacher's weight dtype: ``models.teacher_dtype``, or the run's compute dtype for auto."""
    pref = params.models.teacher_dtype
    return models.resolve_dtype(params.run.dtype if pref == "auto" else pref, device)


def load_pair(params: Params, *, require_same_tokenizer: bool = False, student: str | None = None,
              teacher: str | None = None, student_dtype: torch.dtype = torch.float32):
    """Student (trainable; fp32 master weights unless ``student_dtype``) and teacher
    (models.teacher_dtype, eval, no grad)."""
    device = models.resolve_device(params.run.device)
    s_name, t_name = student or params.models.student, teacher or params.models.teacher
    trc = params.models.trust_remote_code
    if require_same_tokenizer:
        s_tok, t_tok = models.load_tokenizer(s_name, trc), models.load_tokenizer(t_name, trc)
        if not ev.same_tokenizer(s_tok, t_tok):
            raise TokenizerMismatchError(
                f"student {s_name!r} and teacher {t_name!r} use different tokenizers: same-tokenizer GKD "
                "cannot compare their distributions. Use notebooks/04_cross_tokenizer.ipynb "
                "(cross_tokenizer section) for this pair.")
    s_model, s_tok = models.load_model(s_name, dtype=student_dtype, device=device, trust_remote_code=trc,
                                       for_training=True)
    teacher_device = device if params.models.teacher_device == "same" else torch.device(params.models.teacher_device)
    t_model, t_tok = models.load_model(t_name, dtype=teacher_dtype(params, teacher_device), device=teacher_device,
                                       trust_remote_code=trc)
    return device, s_model, s_tok, t_model, t_tok


def eval_examples(params: Params, prepared, during_training: bool = True) -> list[dict]:
    """Eval points during training use the validation split (where the peak is chosen); the
    reported rows use the test split."""
    if during_training:
        return list(prepared.val)[:params.evaluation.during_training_limit]
    return list(prepared.eval)[:params.evaluation.limit]


def build_eval_fn(params: Params, prepared, tokenizer, *, teacher=None, teacher_tok=None, divergence_fn=None,
                  during_training: bool = True, teacher_loader: Callable | None = None):
    """The shared evaluator bound to the held-out subset: ``eval_fn(model) -> EvalResult``.

    ``teacher_loader() -> model``: load the teacher only while an evaluation scores against it and
    free it afterwards (GRPO needs the teacher for the reverse-KL column only, not in training).
    """
    examples = eval_examples(params, prepared, during_training)
    e = params.evaluation

    def eval_fn(model, reuse: list[dict] | None = None):
        todo = examples
        if reuse:  # records of a prefix of these examples, from the same model (deterministic greedy)
            reuse = list(reuse)[:len(examples)]
            ids = [r["id"] for r in reuse]
            if ids != [ex["id"] for ex in examples[:len(ids)]]:
                reuse = None
            else:
                todo = examples[len(ids):]
        if reuse and not todo:  # every problem already evaluated on this model
            return ev.EvalResult({**ev.aggregate(reuse), "reused_records": len(reuse)}, reuse)
        t_model = teacher_loader() if teacher_loader is not None and e.reverse_kl else teacher
        res = ev.evaluate(model, tokenizer, todo, prompt_cfg=params.prompt, max_new_tokens=e.max_new_tokens,
                          batch_size=e.batch_size, teacher=t_model if e.reverse_kl else None,
                          teacher_tokenizer=teacher_tok, divergence_fn=divergence_fn(model) if divergence_fn else None)
        if teacher_loader is not None:
            del t_model
            gc.collect()  # hand the teacher's memory back before training resumes
        if reuse:
            records = list(reuse) + res.records
            res = ev.EvalResult({**res.metrics, **ev.aggregate(records), "reused_records": len(reuse)}, records)
        return res

    return eval_fn


def baseline_records(params: Params) -> list[dict] | None:
    """Records of notebook 01's untrained-student evaluation, when they are valid for these params.

    Step 0 of GKD and GRPO evaluates the same untrained student, with the same prompt, decoding and
    problems (greedy is deterministic), so it reuses these instead of generating them again. Valid
    only when every section both depend on (run, models, data, prompt, evaluation, tracking) is
    unchanged, which the baseline's ``stage_hash`` records.
    """
    from atlas_lib.rundir import load_summary

    out_dir = runs_root() / params.name / "baseline"
    summary = load_summary(out_dir) or {}
    if summary.get("stage_hash") != params.stage_hash("data") or not (out_dir / "student_val.records.jsonl").exists():
        return None
    log.info("step 0 reuses the untrained student's validation evaluation in %s (same params)", out_dir.name)
    return ev.load_eval(out_dir, "student_val").records


def evaluate_baselines(params: Params, which: tuple[str, ...] = ("student", "teacher")) -> dict:
    """Evaluate the untrained student and the teacher on the test split (notebook 01's rows), and
    the untrained student on the validation subset (step 0 of the training curves)."""
    from atlas_lib import data as data_mod

    seed_everything(params)
    prepared = data_mod.load_prepared(params)
    device = models.resolve_device(params.run.device)
    dtype = models.resolve_dtype(params.run.dtype, device)
    out_dir = runs_root() / params.name / "baseline"
    examples = eval_examples(params, prepared, during_training=False)
    e = params.evaluation
    teacher, t_tok = models.load_model(params.models.teacher, dtype=teacher_dtype(params, device), device=device,
                                       trust_remote_code=params.models.trust_remote_code)
    results = {}
    for role in which:
        if role == "teacher":
            model, tok = teacher, t_tok
        else:
            model, tok = models.load_model(params.models.student, dtype=dtype, device=device,
                                           trust_remote_code=params.models.trust_remote_code)
        res = ev.evaluate(model, tok, examples, prompt_cfg=params.prompt, max_new_tokens=e.max_new_tokens,
                          batch_size=e.batch_size, teacher=teacher if (e.reverse_kl and role == "student") else None,
                          teacher_tokenizer=t_tok, desc=f"eval {role}")
        if role == "teacher":
            res.metrics["mean_reverse_kl"] = 0.0  # the teacher against itself, by definition
        ev.save_eval(res, out_dir, role)
        results[role] = res.metrics
        if role == "student":
            val = ev.evaluate(model, tok, eval_examples(params, prepared, during_training=True),
                              prompt_cfg=params.prompt, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                              teacher=teacher if e.reverse_kl else None, teacher_tokenizer=t_tok,
                              desc="eval student (validation)")
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
