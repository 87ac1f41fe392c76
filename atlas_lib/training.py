"""One run loop for every method: run directory, resume, evaluation points, summary.

GKD, GRPO and cross-tokenizer distillation each build their own TRL trainer; everything around
``trainer.train()`` (refusing to overwrite, resuming from the last complete checkpoint without
duplicate metrics, the evaluation callback, device hours, the summary contract read by notebook 05)
lives here once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from atlas_lib import evaluate as ev
from atlas_lib.config import Params, ParamsError
from atlas_lib.paths import relative_to_root, runs_root
from atlas_lib.rundir import RunDir, RunDirError, atomic_write_json, load_summary, provenance
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
    if s.get("stage_hash") != params.stage_hash("data"):
        return {"baseline": None, "teacher": None}  # evaluated under other params: not this run's baseline
    return {"baseline": s.get("student"), "teacher": s.get("teacher")}


def run(params: Params, stage: str, make_trainer: Callable[[dict, list], Any], *, eval_fn: Callable,
        final_eval_fn: Callable, device: torch.device, dataset_sizes: dict, extra_summary: dict | None = None,
        initial_full_eval: bool = False, initial_records: list[dict] | None = None, model=None) -> dict:
    """Train one stage end to end and return its summary (also written to ``summary.json``).

    ``make_trainer(args_kwargs, callbacks)`` builds the TRL trainer; ``eval_fn(model)`` runs the
    shared evaluator on the validation subset (the eval points, where the peak is chosen);
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
        start_digest = _start_digest(rd, trainer.model, resumed=last is not None)
        full = {}
        cb.initial_records = initial_records
        if initial_full_eval:
            full["initial"] = _full_eval(rd, "initial_full", final_eval_fn, trainer.model)
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
        moved = weights_digest(trainer.model) != start_digest
        rd.save_model(trainer.model, trainer.processing_class)
        summary = summarize(rd, params, stage, clock, out, time.monotonic() - t0, dataset_sizes)
        full["distilled"] = _full_eval(rd, "final_full", final_eval_fn, trainer.model)
        summary["validation"] = {"initial": summary.pop("initial"), "final": summary.pop("distilled")}
        summary["initial"] = {**(full.get("initial") or summary.get("baseline") or {}), "step": 0}
        summary["distilled"] = {**full["distilled"], "step": out.global_step}
        summary["training"]["weights_changed"] = moved
        summary.update(extra_summary or {})
        summary["did_not_train"] = did_not_train(rd.metrics("train"), moved)
        summary["flags"] = flags(summary)
        rd.write_summary(summary)
        return summary
    finally:
        rd.release()


def weights_digest(model) -> list[int]:
    """One exact integer per trainable tensor: the sum of its raw bits (int64), computed where the
    tensor lives. Any changed bit changes the sum (barring a collision), so equal digests mean the
    weights are bit-identical to the start."""
    out = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        bits = {4: torch.int32, 2: torch.int16, 1: torch.int8, 8: torch.int64}[p.element_size()]
        out.append(int(p.detach().contiguous().view(bits).sum(dtype=torch.int64)))
    return out


def _start_digest(rd: RunDir, model, resumed: bool) -> list[int]:
    """The weights' digest at the run's step 0 (kept in the run directory, so a resumed run
    compares against where the run started, not where it resumed)."""
    path = rd.path / "initial_weights.json"
    if resumed and path.exists():
        return json.loads(path.read_text())["digest"]
    digest = weights_digest(model)
    atomic_write_json(path, {"digest": digest})
    return digest


def did_not_train(train_points: list[dict], weights_changed: bool) -> str | None:
    """Why a finished run's model cannot have learned anything, or None.

    Weights bit-identical to the start; every logged loss exactly 0 (with exact-match rewards all
    equal, GRPO's group-relative advantage is 0); every logged GRPO group with zero reward variance.
    """
    if not weights_changed:
        return "weights bit-identical to the start"
    losses = [r["loss"] for r in train_points if isinstance(r.get("loss"), (int, float))]
    zero_std = [r["frac_zero_std"] for r in train_points if isinstance(r.get("frac_zero_std"), (int, float))]
    if zero_std and all(z >= 1.0 for z in zero_std):
        return "no learning signal: every GRPO group had zero reward variance (all samples equally rewarded)"
    if losses and all(x == 0 for x in losses):
        return "loss identically 0 at every logged step"
    return None


def flags(summary: dict) -> list[str]:
    """Warnings a reader must see beside the row: a same-tokenizer distillation whose reverse KL
    to the teacher on the test set ended higher than the untrained student's."""
    out = []
    kl0, kl1 = (summary.get("initial") or {}).get("mean_reverse_kl"), (summary.get("distilled") or {}).get(
        "mean_reverse_kl")
    if summary.get("method") == "gkd" and isinstance(kl0, (int, float)) and isinstance(kl1, (int, float)) \
            and kl1 > kl0:
        out.append(f"moved away from the teacher: reverse KL {kl0:.3f} -> {kl1:.3f}")
    return out


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
    res = fn(model)
    ev.save_eval(res, rd.path / "eval", stem)
    return {k: v for k, v in res.metrics.items() if not isinstance(v, (list, dict))}


def peak(evals: list[dict]) -> dict:
    """The validation eval point of highest accuracy (earliest on ties) and its device hours.

    ``improved`` is False when the best point is step 0: there is then no "time to peak"."""
    if not evals:
        return {}
    best = max(evals, key=lambda r: (r.get("accuracy", -1), -r["step"]))
    improved = best["step"] > min(r["step"] for r in evals)
    return {"peak_step": best["step"], "peak_accuracy": best.get("accuracy"), "improved": improved,
            "device_hours_to_peak": best.get("device_hours") if improved else None,
            "seconds_to_peak": best.get("seconds") if improved else None}


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
