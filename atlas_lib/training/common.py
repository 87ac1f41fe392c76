"""The runner skeleton every method shares: seed -> prepared data -> the method's parts (models,
dataset view, trainer) -> the bound evaluators -> the shared run loop (:mod:`atlas_lib.training.loop`).

A method's runner is ``run_method(params, key, build)``, where ``build(params, prepared, device)``
returns its :class:`Parts`; everything else (evaluation on validation and test, step-0 reuse of
notebook 01's records, the summary contract) is done here once.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from atlas_lib.core import models, registry, rundir, seeds
from atlas_lib.core.config import Params
from atlas_lib.core.preflight import preflight
from atlas_lib.core.runtime import seed_everything
from atlas_lib.data import splits
from atlas_lib.evaluation import evaluate as ev
from atlas_lib.evaluation.baselines import baseline_records, eval_examples
from atlas_lib.evaluation.context import check_context
from atlas_lib.evaluation.divergence import Objective
from atlas_lib.training import loop

log = logging.getLogger(__name__)


class TokenizerMismatchError(ValueError):
    """Same-tokenizer distillation was asked for a pair whose tokenizers differ."""


@dataclass
class Parts:
    """What a method supplies to :func:`run_method`."""

    student: Any
    tokenizer: Any
    make_trainer: Callable[[dict, list], Any]  # (TrainingArguments fields, callbacks) -> a Trainer
    teacher: Any = None  # scores the reverse-KL column at every evaluation (same tokenizer)
    teacher_tokenizer: Any = None
    teacher_loader: Callable | None = None  # or: load the teacher only while an evaluation needs it
    divergence_fn: Callable | None = None  # model -> per-record divergence (cross-tokenizer)
    objective: Objective | None = None  # same-tokenizer distillation: its own loss, scored on held-out answers
    extra_summary: dict = field(default_factory=dict)


def with_lora(model, section, key: str = ""):
    """The student wrapped in LoRA adapters when ``section.lora`` asks for them (peft): the base
    weights stay frozen, only the adapters train, and checkpoints hold the adapters alone."""
    settings = section.lora_settings(key)
    if settings is None:
        return model
    from peft import LoraConfig, get_peft_model  # optional until a params file asks for LoRA

    model = get_peft_model(model, LoraConfig(r=settings["r"], lora_alpha=settings["alpha"],
                                             lora_dropout=settings["dropout"], task_type="CAUSAL_LM",
                                             target_modules=settings["target_modules"]))
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA r=%d on %s: %d trainable of %d parameters", settings["r"], settings["target_modules"],
             trainable, total)
    return model


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
    t_model, t_tok = models.load_model(t_name, dtype=models.teacher_dtype(params, teacher_device),
                                       device=teacher_device, trust_remote_code=trc)
    return device, s_model, s_tok, t_model, t_tok


def build_eval_fn(params: Params, prepared, tokenizer, *, teacher=None, teacher_tok=None, divergence_fn=None,
                  during_training: bool = True, teacher_loader: Callable | None = None,
                  objective: Objective | None = None):
    """The shared evaluator bound to the held-out subset: ``eval_fn(model) -> EvalResult``.

    ``teacher_loader() -> model``: load the teacher only while an evaluation scores against it and
    free it afterwards (GRPO needs the teacher for the reverse-KL column only, not in training).
    ``objective``: the method's own loss (:class:`atlas_lib.evaluation.divergence.Objective`) on each
    scored answer.
    """
    examples = eval_examples(params, prepared, during_training)
    e = params.evaluation
    kl = e.reverse_kl and (e.during_training_kl or not during_training)

    def eval_fn(model, reuse: list[dict] | None = None):
        todo = examples
        if reuse:  # records of a prefix of these examples, from the same model (deterministic greedy)
            reuse = list(reuse)[:len(examples)]
            ids = [r["id"] for r in reuse]
            if ids != [ex["id"] for ex in examples[:len(ids)]]:
                reuse = None
            else:
                todo = examples[len(ids):]
                if objective is not None:  # notebook 01 scored the untrained student under this objective too
                    reuse = [{**r, "objective": (r.get("objective_by_beta") or {}).get(objective.key)} for r in reuse]
        if reuse and not todo:  # every problem already evaluated on this model
            return ev.EvalResult({**ev.aggregate(reuse), "reused_records": len(reuse)}, reuse)
        t_model = teacher_loader() if teacher_loader is not None and kl else teacher
        res = ev.evaluate(model, tokenizer, todo, prompt_cfg=params.prompt, max_new_tokens=e.max_new_tokens,
                          batch_size=e.batch_size, teacher=t_model if kl else None,
                          teacher_tokenizer=teacher_tok, divergence_fn=divergence_fn(model) if divergence_fn else None,
                          objective=objective)
        if teacher_loader is not None:
            del t_model
            gc.collect()  # hand the teacher's memory back before training resumes
        if reuse:
            records = list(reuse) + res.records
            res = ev.EvalResult({**res.metrics, **ev.aggregate(records), "reused_records": len(reuse)}, records)
        if (e.kl_seeds and not e.reverse_kl and seeds.is_further_seed(params) and not during_training
                and not res.metrics.get("kl_note")):
            res.metrics["kl_note"] = f"not scored on this seed: evaluation.kl_seeds scores the first {e.kl_seeds} only"
        return res

    return eval_fn


def run_method(params: Params, key: str, build: Callable[[Params, Any, torch.device], Parts]) -> dict:
    """Train registered method ``key`` once per training seed (``run.seeds``; :func:`run_seed` each) and
    return the first seed's summary, with the others' under ``seed_runs`` (seed, status, test row)."""
    summary = run_seed(params, key, build)
    others = []
    for seed, variant in seeds.seed_variants(params, key):
        gc.collect()  # the previous seed's models go before the next seed's load
        done = run_seed(variant, key, build)
        others.append({"seed": seed, "run_name": variant.run_name(key), "status": done.get("status"),
                       "distilled": done.get("distilled")})
    return {**summary, "seed_runs": others} if others else summary


def run_seed(params: Params, key: str, build: Callable[[Params, Any, torch.device], Parts]) -> dict:
    """Train registered method ``key`` at its training seed: seed, load the prepared split, ``build`` the
    method's parts, bind the evaluators (validation for eval points, test for the reported row) and run
    the loop."""
    method = registry.get(key)
    seed_everything(params, seeds.train_seed(params))
    prepared = splits.load_prepared(params)
    section = params.section(key)
    if section.resume and (done := rundir.finished_summary(params, key)) is not None:
        # a notebook of several runs resumed after an interruption: this one had finished already
        log.info("%s finished with these training parameters: nothing to resume, its summary is reused",
                 params.run_name(key))
        return done
    preflight(params, key, resume=section.resume)  # a refused run directory refuses before the models load
    budget = max((params.evaluation.max_new_tokens, "evaluation.max_new_tokens"),
                 (section.max_completion_length, f"{key}.max_completion_length"))
    check_context(params, prepared, [getattr(section, "student", None) or params.models.student,
                                     getattr(section, "teacher", None) or params.models.teacher], *budget)
    device = models.resolve_device(params.run.device)
    parts = build(params, prepared, device)
    kw = dict(teacher=parts.teacher, teacher_tok=parts.teacher_tokenizer, teacher_loader=parts.teacher_loader,
              divergence_fn=parts.divergence_fn, objective=parts.objective)
    return loop.run(params, key, parts.make_trainer, device=device,
                    eval_fn=build_eval_fn(params, prepared, parts.tokenizer, **kw),
                    final_eval_fn=build_eval_fn(params, prepared, parts.tokenizer, during_training=False, **kw),
                    initial_full_eval=method.own_student,
                    initial_records=None if method.own_student else baseline_records(params),
                    model=parts.student, objective=parts.objective,
                    dataset_sizes={"train": len(prepared.train), "eval": len(prepared.eval)},
                    extra_summary={"divergence_label": method.divergence_label, **parts.extra_summary})
