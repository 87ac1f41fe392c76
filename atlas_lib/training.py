"""One run loop for every method: run directory, resume, evaluation points, summary.

GKD, GRPO and cross-tokenizer distillation each build their own TRL trainer; everything around
``trainer.train()`` (refusing to overwrite, resuming from the last complete checkpoint without
duplicate metrics, the evaluation callback, device hours, the summary contract read by notebook 05)
lives here once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from atlas_lib import evaluate as ev
from atlas_lib.config import Params, ParamsError
from atlas_lib.paths import relative_to_root, runs_root
from atlas_lib.rundir import RunDir, RunDirError, load_summary, provenance
from atlas_lib.tracking import AtlasCallback, DeviceClock, NonFiniteError, wandb_report_to

log = logging.getLogger(__name__)


def autocast_bf16(params: Params, device: torch.device) -> bool:
    """Mixed precision (fp32 master weights, bf16 compute) where the device supports it."""
    from atlas_lib.models import resolve_dtype

    return resolve_dtype(params.run.dtype, device) == torch.bfloat16


def low_memory(section) -> bool:
    """Whether a stage section trains with ``optimizer: adamw_8bit_bf16`` (sections without the
    field, e.g. cross_tokenizer, use fp32 AdamW)."""
    return getattr(section, "optimizer", "adamw") == "adamw_8bit_bf16"


def student_dtype(section) -> torch.dtype:
    """The trained student's weight dtype: fp32 master weights, or bf16 for ``adamw_8bit_bf16``.

    Checked before any model is loaded or file written, so a missing torchao is a params error.
    """
    if not low_memory(section):
        return torch.float32
    import importlib.util

    name = type(section).__name__.removesuffix("Config").lower()
    if importlib.util.find_spec("torchao") is None:
        raise ParamsError(f"{name}.optimizer = {section.optimizer!r} needs torchao: pip install torchao "
                          "(or pip install -e '.[lowmem]'), or set optimizer: adamw")
    return torch.bfloat16


def optimizer_args(section) -> dict:
    """TrainingArguments fields for ``section.optimizer`` (HF Trainer builds the optimizer).

    adamw_8bit_bf16 -> torchao's AdamW8bit with ``bf16_stochastic_round``: without it an update
    below |w|/256 rounds away in bf16 (94.9% of the 0.5B student's weights at lr 1e-6,
    bench/dtype.py); rounding up or down in proportion keeps each update in expectation.
    """
    if low_memory(section):
        return {"optim": "adamw_torch_8bit", "optim_args": "bf16_stochastic_round=True"}
    return {}  # HF Trainer's default: torch AdamW (fused where torch has it)


def _allocator(section):
    """Low-memory training returns what each step frees to the OS (:mod:`atlas_lib.runtime`)."""
    import contextlib

    from atlas_lib import runtime

    return runtime.return_freed_memory() if low_memory(section) else contextlib.nullcontext()


def trainer_args(params: Params, stage: str, rd: RunDir, report_to: list[str], device: torch.device) -> dict:
    """TrainingArguments fields common to every method (the method adds its own)."""
    section = getattr(params, stage)
    return dict(
        output_dir=str(rd.checkpoints), run_name=params.run_name(stage), seed=params.run.seed,
        max_steps=section.max_steps, per_device_train_batch_size=section.per_device_train_batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        learning_rate=section.learning_rate, logging_steps=section.logging_steps,
        # one checkpoint is all resume needs; each holds fp32 weights + two AdamW moments (12 bytes per
        # parameter: 7.6 GB for the 0.5B student), so keeping more fills small disks
        save_strategy="steps", save_steps=section.save_steps, save_total_limit=1,
        eval_strategy="no",  # the kit's callback evaluates with the shared evaluator instead
        report_to=report_to, bf16=autocast_bf16(params, device), use_cpu=device.type == "cpu",
        logging_nan_inf_filter=False,  # a NaN must reach the callback, not be filtered out
        gradient_checkpointing=getattr(section, "gradient_checkpointing", False),
        dataloader_num_workers=0, disable_tqdm=False, save_only_model=False, **optimizer_args(section),
    )


def baseline_metrics(params: Params) -> dict:
    """The pre-training student and teacher rows written by notebook 01 (empty if not run)."""
    s = load_summary(runs_root() / params.name / "baseline") or {}
    return {"baseline": s.get("student"), "teacher": s.get("teacher")}


def run(params: Params, stage: str, make_trainer: Callable[[dict, list], Any], *, eval_fn: Callable,
        device: torch.device, dataset_sizes: dict, extra_summary: dict | None = None,
        final_eval_fn: Callable | None = None, initial_full_eval: bool = False,
        initial_records: list[dict] | None = None, model=None) -> dict:
    """Train one stage end to end and return its summary (also written to ``summary.json``).

    ``make_trainer(args_kwargs, callbacks)`` builds the TRL trainer; ``eval_fn(model)`` runs the
    shared evaluator on the held-out subset used during training (``during_training_limit``);
    ``final_eval_fn(model)`` evaluates on ``evaluation.limit`` problems after training (and before
    it when ``initial_full_eval``), so the final rows are measured on the same problems as the
    baselines. ``initial_records``: an evaluation of the untrained student on these problems (the
    baseline), reused for the step-0 point; the initial full evaluation is reused the same way.
    ``model``: the student, to check before anything is written that its checkpoints fit on disk.
    """
    section = getattr(params, stage)
    if params.evaluation.during_training_limit >= params.evaluation.limit:
        final_eval_fn = None  # the eval points already use every held-out problem: no second pass
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if rank != 0:  # under accelerate launch only rank 0 owns the run directory
        return _follower(params, stage, make_trainer, device, rank)
    if model is not None:
        check_disk(runs_root(), model, section)
    rd = RunDir.open(params, stage, resume=section.resume)
    try:
        last = rd.last_checkpoint() if section.resume else None
        offset = 0.0
        if last is not None:
            ckpt, state = last
            dropped = rd.truncate_after(state["step"])
            offset = float(state.get("seconds", 0.0))
            log.info("resuming %s from %s (dropped %d metric points past it)", rd.path.name, ckpt.name, dropped)
        elif section.resume and rd.metrics():
            rd.truncate_after(-1)  # nothing to resume from: start clean, without stale points
        clock = DeviceClock(offset)
        report_to = wandb_report_to(params.tracking, rd.path, params.run_name(stage))
        cb = AtlasCallback(rd, clock, eval_fn, section.eval_steps, ev.save_eval, wandb_on="wandb" in report_to)
        trainer = make_trainer(trainer_args(params, stage, rd, report_to, device), [cb])
        full = {}
        cb.initial_records = initial_records
        if final_eval_fn is not None and initial_full_eval:
            full["initial"] = _full_eval(rd, "initial_full", final_eval_fn, trainer.model)
            cb.initial_records = ev.load_eval(rd.path / "eval", "initial_full").records
        t0 = time.monotonic()
        try:
            with _allocator(section):
                out = trainer.train(resume_from_checkpoint=str(last[0]) if last else None)
        except NonFiniteError as e:
            rd.write_summary({"status": "failed", "error": str(e), "method": stage,
                              "provenance": provenance(params)})
            raise
        finally:
            if "wandb" in report_to:
                import wandb

                if wandb.run is not None:
                    wandb.finish()
        if world > 1:
            _write_rank(rd, trainer, rank)
        rd.save_model(trainer.model, trainer.processing_class)
        summary = summarize(rd, params, stage, clock, out, time.monotonic() - t0, dataset_sizes)
        if final_eval_fn is not None:
            full["distilled"] = _full_eval(rd, "final_full", final_eval_fn, trainer.model, step=out.global_step)
            summary["distilled_subset"] = summary["distilled"]
            summary.update({k: {**v, "step": out.global_step if k == "distilled" else 0} for k, v in full.items()})
        summary.update(extra_summary or {})
        rd.write_summary(summary)
        return summary
    finally:
        rd.release()


def check_disk(path, model, section) -> None:
    """Refuse to start when the disk cannot hold the run's checkpoint (weights + AdamW moments,
    twice while the previous one is rotated out) and final model, instead of failing mid-run."""
    import shutil

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    saves = section.save_steps <= section.max_steps
    width = next(model.parameters()).element_size()
    # weights + two moments per checkpoint: fp32 AdamW 12 bytes per parameter, bf16 + 8-bit moments ~4
    per_param = width + 2 if low_memory(section) else 12
    need = (2 * per_param * trainable if saves else 0) + width * total
    while not path.exists():  # the runs root may not exist yet: ask its disk
        path = path.parent
    free = shutil.disk_usage(path).free
    if free < need:
        raise RunDirError(f"{relative_to_root(path)}: a {section.__class__.__name__} run needs about {need / 1e9:.1f} GB of free disk for its "
                          f"checkpoint and final model, {free / 1e9:.1f} GB are free. Free space, point ATLAS_RUNS "
                          f"at a larger disk, or raise save_steps above max_steps to skip checkpoints.")


def _write_rank(rd: RunDir, trainer, rank: int) -> None:
    """Per-rank record (logged losses, parameter checksum) so a test can check the ranks agree."""
    from atlas_lib.rundir import atomic_write_json

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


def _full_eval(rd: RunDir, stem: str, fn: Callable, model, step: int | None = None) -> dict:
    """Evaluate on ``evaluation.limit`` problems; reuse a result already on disk (resumed runs).

    The eval subset used during training is the first ``during_training_limit`` of these problems
    and greedy decoding is deterministic, so when the last eval point was taken on this very model
    (``step``), its records are reused and only the remaining problems are generated.
    """
    import json

    path = rd.path / "eval" / f"{stem}.json"
    if path.exists():
        return json.loads(path.read_text())
    prior = None
    if step is not None and (rd.path / "eval" / f"step_{step}.records.jsonl").exists():
        prior = ev.load_eval(rd.path / "eval", f"step_{step}").records
    res = fn(model, reuse=prior)
    ev.save_eval(res, rd.path / "eval", stem)
    return {k: v for k, v in res.metrics.items() if not isinstance(v, (list, dict))}


def peak(evals: list[dict]) -> dict:
    """The eval point of highest accuracy (earliest on ties) and its device hours."""
    if not evals:
        return {}
    best = max(evals, key=lambda r: (r.get("accuracy", -1), -r["step"]))
    return {"peak_step": best["step"], "peak_accuracy": best.get("accuracy"),
            "device_hours_to_peak": best.get("device_hours"), "seconds_to_peak": best.get("seconds")}


def summarize(rd: RunDir, params: Params, stage: str, clock: DeviceClock, out, train_seconds: float,
              dataset_sizes: dict) -> dict:
    evals = sorted(rd.metrics("eval"), key=lambda r: r["step"])
    trains = rd.metrics("train")
    final = dict(evals[-1]) if evals else {}
    section = getattr(params, stage)
    samples = out.global_step * section.per_device_train_batch_size * section.gradient_accumulation_steps
    losses = [r["loss"] for r in trains if isinstance(r.get("loss"), (int, float))]
    return {
        "status": "complete", "method": stage, "dataset": dataset_sizes, "config": params.to_dict(),
        **baseline_metrics(params),
        "initial": {k: v for k, v in (evals[0] if evals else {}).items() if k != "kind"},
        "distilled": {k: v for k, v in final.items() if k != "kind"},
        "training": {
            "duration_seconds": round(clock.seconds, 2), "session_seconds": round(train_seconds, 2),
            "global_step": out.global_step, "train_loss": losses[-1] if losses else None,
            "mean_train_loss": out.training_loss,
            "train_samples_per_second": samples / clock.seconds if clock.seconds > 0 else None,
            "device_kind": clock.kind, "devices": clock.devices,
            "device_hours": clock.device_hours,
            "peak_rss_gb": max((r["peak_rss_gb"] for r in trains if "peak_rss_gb" in r), default=None),
            "device_hours_label": "GPU-hours" if clock.kind == "GPU" else "CPU-hours (2-core machine = 1 device)",
            **peak(evals),
        },
        "provenance": provenance(params),
    }
