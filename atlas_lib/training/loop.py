"""One run loop for every method: run directory, resume, evaluation points, summary.

GKD, GRPO and cross-tokenizer distillation each build their own TRL trainer; everything around
``trainer.train()`` (refusing to overwrite, resuming from the last complete checkpoint without
duplicate metrics, the evaluation callback, device hours, the summary contract read by notebook 05)
lives here once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers.trainer_utils import TrainOutput

from atlas_lib.core import advice, models, runtime, seeds
from atlas_lib.core.config import Params
from atlas_lib.core.files import RunDirError, atomic_write_json, disk_full, elsewhere
from atlas_lib.core.paths import relative_to_root, runs_root
from atlas_lib.core.provenance import provenance
from atlas_lib.core.rundir import RunDir
from atlas_lib.core.validate import ParamsError
from atlas_lib.evaluation import evaluate as ev
from atlas_lib.evaluation.divergence import Objective
from atlas_lib.training import ledger, outcome
from atlas_lib.training.callback import AtlasCallback, BudgetSpent
from atlas_lib.training.clock import DeviceClock
from atlas_lib.training.finite import NonFiniteError
from atlas_lib.training.wandb_log import finish_wandb, wandb_report_to

log = logging.getLogger(__name__)


def autocast_bf16(params: Params, device: torch.device) -> bool:
    """Mixed precision (fp32 master weights, bf16 compute) where the device supports it."""
    return models.resolve_dtype(params.run.dtype, device) == torch.bfloat16


def low_memory(section) -> bool:
    """Whether a method's section trains with ``optimizer: adamw_8bit_bf16``."""
    return section.optimizer == "adamw_8bit_bf16"


def student_dtype(section, params: Params | None = None, device: torch.device | None = None) -> torch.dtype:
    """The trained student's weight dtype: fp32 master weights; bf16 for ``adamw_8bit_bf16`` (whose
    torchao dependency the section's ``check`` confirmed when the params were loaded); with LoRA the
    frozen base weights in the run's compute dtype (peft keeps the adapters in fp32)."""
    if section.lora and params is not None:
        return models.resolve_dtype(params.run.dtype, device or models.resolve_device(params.run.device))
    return torch.bfloat16 if low_memory(section) else torch.float32


def optimizer_args(section) -> dict:
    """TrainingArguments fields for ``section.optimizer`` (HF Trainer builds the optimizer).

    adamw_8bit_bf16 -> torchao's AdamW8bit with ``bf16_stochastic_round``: without it an update
    below |w|/256 rounds away in bf16 (most of a 0.5B student's weights at lr 1e-6, bench/dtype.py);
    rounding up or down in proportion keeps each update in expectation.
    """
    if low_memory(section):
        return {"optim": "adamw_torch_8bit", "optim_args": "bf16_stochastic_round=True"}
    return {}  # HF Trainer's default: torch AdamW (fused where torch has it)


def _allocator(section):
    """Low-memory training returns what each step frees to the OS (:mod:`atlas_lib.core.runtime`)."""
    return runtime.return_freed_memory() if low_memory(section) else contextlib.nullcontext()


def trainer_args(params: Params, stage: str, rd: RunDir, report_to: list[str], device: torch.device) -> dict:
    """TrainingArguments fields common to every method (the method adds its own)."""
    section = getattr(params, stage)
    return dict(
        output_dir=str(rd.checkpoints), run_name=params.run_name(stage), seed=seeds.train_seed(params),
        max_steps=section.max_steps, per_device_train_batch_size=section.per_device_train_batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        learning_rate=section.learning_rate, logging_steps=section.logging_steps,
        # one checkpoint is all resume needs; each holds fp32 weights + two AdamW moments (12 bytes per
        # parameter), so keeping more fills small disks
        save_strategy="steps", save_steps=section.save_steps, save_total_limit=1,
        eval_strategy="no",  # the kit's callback evaluates with the shared evaluator instead
        report_to=report_to, bf16=autocast_bf16(params, device), use_cpu=device.type == "cpu",
        logging_nan_inf_filter=False,  # a NaN must reach the callback, not be filtered out
        gradient_checkpointing=section.gradient_checkpointing,
        dataloader_num_workers=0, disable_tqdm=False, save_only_model=False, **optimizer_args(section),
    )


def run(params: Params, stage: str, make_trainer: Callable[[dict, list], Any], *, eval_fn: Callable,
        final_eval_fn: Callable, device: torch.device, dataset_sizes: dict, extra_summary: dict | None = None,
        initial_full_eval: bool = False, initial_records: list[dict] | None = None, model=None,
        objective: Objective | None = None) -> dict:
    """Train one stage end to end and return its summary (also written to ``summary.json``).

    ``make_trainer(args_kwargs, callbacks)`` builds the TRL trainer; ``eval_fn(model)`` runs the
    shared evaluator on the validation subset (the eval points: the training curves);
    ``final_eval_fn(model)`` evaluates the trained model on the test split, the reported row (and the
    untrained model first when ``initial_full_eval``; otherwise the untrained student's test row from
    notebook 01 is the starting point). ``initial_records``: the
    untrained student's validation records, reused for the step-0 point. ``model``: the student, to
    check before anything is written that its checkpoints fit on disk.

    The summary says whether the run trained at all (``did_not_train``: weights bit-identical to the
    start, loss identically 0, or no GRPO group with reward variance) and carries ``flags`` such as
    a GKD student that moved away from its teacher.
    """
    section = getattr(params, stage)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and params.run.flop_budget:  # only rank 0 keeps the ledger: the other ranks would not stop
        raise ParamsError(f"run.flop_budget = {params.run.flop_budget:g} stops a single-process run only ({world} "
                          "processes here): set run.flop_budget: 0 and bound the run by max_steps, or train on one device")
    if rank != 0:  # under accelerate launch only rank 0 owns the run directory
        return _follower(params, stage, make_trainer, device, rank)
    if model is not None:
        check_disk(runs_root(), model, section, stage)
    rd = RunDir.open(params, stage, resume=section.resume)
    report_to: list[str] = []
    try:
        last, offset = _resume_point(rd, section)
        clock = DeviceClock(offset)
        report_to = wandb_report_to(params.tracking, rd.path, params.run_name(stage))
        cb = AtlasCallback(rd, clock, eval_fn, section.eval_steps, ev.save_eval, wandb_on="wandb" in report_to)
        trainer = make_trainer(trainer_args(params, stage, rd, report_to, device), [cb])
        _attach_ledger(cb, trainer, rd, params.run.flop_budget)
        start_digest = outcome.start_digest(rd, trainer.model, resumed=last is not None)
        full = {}
        cb.initial_records = initial_records
        if initial_full_eval:
            full["initial"] = _full_eval(rd, "initial_full", final_eval_fn, trainer.model)
        t0 = time.monotonic()
        out = _train(trainer, rd, params, stage, last)
        if world > 1:
            _write_rank(rd, trainer, rank)
        moved = outcome.weights_digest(trainer.model) != start_digest
        with _disk_full_is_a_message(rd, stage, "writing the final model"):
            rd.save_model(trainer.model, trainer.processing_class)
        summary = outcome.summarize(rd, params, stage, clock, out, time.monotonic() - t0, dataset_sizes)
        summary["training"].update(cb.ledger.summary(clock.devices))
        if params.run.flop_budget:
            summary["training"]["flop_budget"] = budget_outcome(rd.metrics("ledger"), params.run.flop_budget,
                                                                out.global_step, section.max_steps)
        full["distilled"] = _full_eval(rd, "final_full", final_eval_fn, trainer.model)
        _finish_summary(summary, rd, full, out.global_step, objective)
        summary["training"]["weights_changed"] = moved
        summary.update(extra_summary or {})
        summary["did_not_train"] = outcome.did_not_train(rd.metrics("train"), moved)
        summary["flags"] = outcome.flags(summary)
        rd.write_summary(summary)
        if "wandb" in report_to:  # the W&B summary carries the reported (test) row, not the last subset point
            finish_wandb({f"atlas/test/{k}": v for k, v in summary["distilled"].items() if isinstance(v, (int, float))}
                         | {"atlas/did_not_train": summary["did_not_train"] or ""})
        return summary
    finally:
        if "wandb" in report_to:
            finish_wandb()  # a run that stopped early (no-op when finished above)
        rd.release()


def _resume_point(rd: RunDir, section) -> tuple[tuple | None, float]:
    """The checkpoint to resume from (None: start) and the device seconds already spent; metric points
    past it are dropped (all of them when resume finds nothing to resume from)."""
    last = rd.last_checkpoint() if section.resume else None
    if last is not None:
        ckpt, state = last
        dropped = rd.truncate_after(state["step"])
        log.info("resuming %s from %s (dropped %d metric points past it)", rd.path.name, ckpt.name, dropped)
        return last, float(state.get("seconds", 0.0))
    if section.resume and rd.metrics():
        rd.truncate_after(-1)  # nothing to resume from: start clean, without stale points
    return None, 0.0


def _attach_ledger(cb, trainer, rd: RunDir, flop_budget: float) -> None:
    """The run's compute ledger, on the callback (which stops at the FLOP budget) and on the trainer
    (which reports sampling, teacher scoring and trained tokens to it), continued on resume."""
    cb.ledger = ledger.Ledger.for_models(trainer.model, getattr(trainer, "teacher_model", None)
                                         or getattr(trainer, "teacher", None))
    cb.ledger.resume(rd.metrics("ledger"))
    cb.flop_budget = flop_budget
    trainer.atlas_ledger = cb.ledger


def _train(trainer, rd: RunDir, params: Params, stage: str, last):
    """``trainer.train()``, resumed from ``last``; a non-finite loss leaves a failed summary behind."""
    try:
        with _allocator(getattr(params, stage)), _disk_full_is_a_message(rd, stage, "training or writing a checkpoint"):
            return trainer.train(resume_from_checkpoint=str(last[0]) if last else None)
    except BudgetSpent:  # resumed at a checkpoint that had reached run.flop_budget: its weights are loaded
        log.info("%s had reached run.flop_budget at step %d before it stopped: no further step, its final "
                 "evaluation only", rd.path.name, trainer.state.global_step)
        trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
        losses = [r["loss"] for r in rd.metrics("train") if r.get("loss") is not None]
        return TrainOutput(trainer.state.global_step, sum(losses) / len(losses) if losses else 0.0, {})
    except NonFiniteError as e:
        rd.write_summary({"status": "failed", "error": str(e), "method": stage, "provenance": provenance(params)})
        raise


def _finish_summary(summary: dict, rd: RunDir, full: dict, step: int, objective: Objective | None) -> None:
    """The summary's evaluation rows: the validation points, the test rows (the untrained start: its own
    full evaluation, else notebook 01's baseline) and the evaluation seconds."""
    summary["training"]["eval_seconds"] = round(
        sum(float(r.get("eval_seconds") or 0) for r in rd.metrics("eval"))
        + sum(float(f.get("eval_seconds") or 0) for f in full.values()), 2)
    summary["validation"] = {"initial": summary.pop("initial"), "final": summary.pop("distilled")}
    summary["initial"] = {**(full.get("initial") or summary.get("baseline") or {}), "step": 0}
    if objective is not None and summary["initial"].get("heldout_objective") is None:  # notebook 01's row
        summary["initial"]["heldout_objective"] = (summary["initial"].get("heldout_objective_by_beta")
                                                   or {}).get(objective.key)
    summary["distilled"] = {**full["distilled"], "step": step}


def budget_outcome(ledger_records: list[dict], budget: float, global_step: int, max_steps: int) -> dict:
    """Where a run with ``run.flop_budget`` stopped, for ``summary.json``: the first step whose cumulative
    training FLOPs reached the budget (from the ledger records on disk, resumed runs included), whether
    training stopped there, and what it spent. A run that reached max_steps first says so (and is logged):
    its arm is then short of the budget, not matched to the others."""
    cum = sorted((r["step"], r.get("cum_flops", 0.0)) for r in ledger_records)
    first = next((step for step, flops in cum if flops >= budget), None)
    spent = cum[-1][1] if cum else 0.0
    if first is None:
        log.warning("the run reached max_steps = %d with %.3e training FLOPs, short of run.flop_budget = %.3e: "
                    "raise max_steps for this method to match the budget", max_steps, spent, budget)
    return {"budget": budget, "stopped_on_budget": first is not None and first == global_step,
            "budget_step": first, "global_step": global_step, "max_steps": max_steps, "train_flops": spent,
            "over_budget": spent - budget if first is not None else None}


@contextlib.contextmanager
def _disk_full_is_a_message(rd: RunDir, stage: str, doing: str):
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not disk_full(e):
            raise
        free = shutil.disk_usage(rd.path).free
        last = rd.last_checkpoint()
        back = f"from its last complete checkpoint ({last[0].name})" if last else "from the start (no complete checkpoint)"
        raise RunDirError(f"the disk under {relative_to_root(rd.path)} filled while {doing} ({size(free)} free now). "
                          f"Free space there (or {elsewhere(rd.path)}), then {advice.resume_again(stage)}: the run "
                          f"resumes {back}") from None


def size(n: float) -> str:
    """Bytes for a message: 3.2 GB, 41 MB, 12 kB (never "0.0 GB" for a small run)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n / scale:.0f} {unit}"
    return f"{n:.0f} bytes"


def check_disk(path, model, section, stage: str) -> None:
    """Refuse to start when the disk cannot hold the run's checkpoint (weights + AdamW moments,
    twice while the previous one is rotated out) and final model, instead of failing mid-run."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    saves = section.save_steps <= section.max_steps
    width = next(model.parameters()).element_size()
    # weights + two moments per checkpoint: fp32 AdamW 12 bytes per parameter, bf16 + 8-bit moments ~4
    per_param = width + 2 if low_memory(section) else 12
    need = (2 * per_param * trainable if saves else 0) + width * total
    where = path
    while not path.exists():  # the runs root may not exist yet: ask its disk
        path = path.parent
    free = shutil.disk_usage(path).free
    if free < need:
        raise RunDirError(f"{relative_to_root(path)}: the {stage} run needs about {size(need)} of free disk for its "
                          f"checkpoint and final model, {size(free)} are free. Free space there, {elsewhere(where)}, or "
                          f"skip checkpoints ({advice.set_field(f'{stage}.save_steps', section.max_steps + 1)}; "
                          "an interrupted run then starts over)")


def _write_rank(rd: RunDir, trainer, rank: int) -> None:
    """Per-rank record (logged losses, parameter checksum) so a test can check the ranks agree."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    checksum = float(sum(p.detach().double().sum() for p in trainer.model.parameters()))
    atomic_write_json(rd.path / "ranks" / f"rank{rank}.json", {"rank": rank, "losses": losses,
                                                               "param_checksum": checksum})


def _follower(params: Params, stage: str, make_trainer: Callable, device: torch.device, rank: int) -> dict:
    """A non-zero rank: trains in lockstep, writes nothing but its rank record."""
    rd = RunDir(runs_root() / params.run_name(stage))
    deadline = time.monotonic() + 300
    while not (rd.path / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # rank 0 creates (or refuses) the directory first
    common = trainer_args(params, stage, rd, ["none"], device)
    last = rd.last_checkpoint() if getattr(params, stage).resume else None
    trainer = make_trainer(common, [])
    trainer.train(resume_from_checkpoint=str(last[0]) if last else None)
    _write_rank(rd, trainer, rank)
    return {"status": "follower", "rank": rank}


def _full_eval(rd: RunDir, stem: str, fn: Callable, model) -> dict:
    """Evaluate on the test split; reuse a result already on disk (resumed runs)."""
    path = rd.path / "eval" / f"{stem}.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.monotonic()
    res = fn(model)
    res.metrics["eval_seconds"] = round(time.monotonic() - t0, 3)
    ev.save_eval(res, rd.path / "eval", stem)
    return {k: v for k, v in res.metrics.items() if not isinstance(v, (list, dict))}


