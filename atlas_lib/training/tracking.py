"""Device-hours accounting, the evaluation callback shared by every trainer, and W&B set-up.

"GPU hours to reach peak accuracy" is computed from the eval points written here: each carries
the step, wall seconds since the run started (resumed runs continue the clock from their
checkpoint) and device hours = seconds x devices / 3600. On a CPU the unit is CPU-hours (the
whole machine counts as one device) and every record says so.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback

from atlas_lib.core.rundir import RunDir
from atlas_lib.core.sections import TrackingConfig

log = logging.getLogger(__name__)

# Keys TRL/Trainer log that are worth keeping in metrics.jsonl, renamed to the kit's names.
TRAIN_KEYS = {
    "loss": "loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm",
    "reward": "reward_mean", "reward_std": "reward_std", "frac_reward_zero_std": "frac_zero_std",
    "completions/mean_length": "completion_length", "completions/clipped_ratio": "clipped_ratio",
    "kl": "kl", "entropy": "entropy", "num_tokens": "num_tokens",
}


class NonFiniteError(FloatingPointError):
    """The loss or reward became NaN/inf; the run stops at that step with its metrics kept."""


class DeviceClock:
    """Wall seconds and device hours of one run, continuing across resumes."""

    def __init__(self, offset_seconds: float = 0.0):
        self.start = time.monotonic()
        self.offset = offset_seconds
        if torch.cuda.is_available():
            self.kind, self.devices = "GPU", int(os.environ.get("WORLD_SIZE", torch.cuda.device_count() or 1))
        else:
            self.kind, self.devices = "CPU", 1

    @property
    def seconds(self) -> float:
        return self.offset + time.monotonic() - self.start

    @property
    def device_hours(self) -> float:
        return self.seconds * self.devices / 3600.0

    def stamp(self) -> dict:
        return {"seconds": round(self.seconds, 3), "device_hours": self.device_hours,
                "device_kind": self.kind, "devices": self.devices}


def peak_memory_gb() -> dict:
    """Peak resident memory of this process so far (loaded models included; a papermill kernel is
    one stage), and on CUDA the peak memory allocated by torch."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_gb": round(rss * (1 if sys.platform == "darwin" else 1024) / 1e9, 3)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    return out


def check_finite(name: str, value: float, step: int) -> None:
    if value is not None and isinstance(value, (int, float)) and not math.isfinite(value):
        raise NonFiniteError(f"{name} became {value} at step {step}; the run stopped there and kept "
                             "its metrics and last checkpoint (lower the learning rate or check the data)")


class AtlasCallback(TrainerCallback):
    """Writes train/eval points to the run directory, evaluates on schedule, marks checkpoints.

    ``eval_fn(model) -> EvalResult`` is the shared evaluator bound to the held-out subset.
    """

    def __init__(self, rundir: RunDir, clock: DeviceClock, eval_fn: Callable, eval_steps: int,
                 save_eval: Callable, wandb_on: bool = False):
        self.rd, self.clock, self.eval_fn, self.eval_steps = rundir, clock, eval_fn, eval_steps
        self.save_eval = save_eval
        self.wandb_on = wandb_on
        self.last_loss: float | None = None
        done = self.rd.metrics("eval")
        self.evaluated = {r["step"] for r in done}
        self.model = None
        self.initial_records: list[dict] | None = None  # records of the untrained model, for step 0
        self.pending: int | None = None  # an eval point due at this step, taken once its loss is logged
        self.ledger = None  # the run's compute ledger (training.ledger), set once the trainer exists
        self.flop_budget = 0.0  # run.flop_budget: stop at the first step whose cumulative training FLOPs reach it
        self._step_t0: float | None = None

    def _log_wandb(self, record: dict, records: list[dict] | None = None) -> None:
        """An eval point on W&B at its own optimizer step (``train/global_step``, the axis transformers'
        W&B callback defines), with a table of its completions (question, completion, right or wrong)."""
        if not self.wandb_on:
            return
        import wandb

        if wandb.run is None:
            return
        row = {f"atlas/{k}": v for k, v in record.items() if isinstance(v, (int, float))}
        row["train/global_step"] = record["step"]
        if records:
            row["atlas/completions"] = completions_table(records, step=record["step"])
        wandb.log(row)

    def evaluate(self, step: int, model) -> dict:
        if step in self.evaluated:
            return {}
        t0 = time.monotonic()
        # step 0 is the untrained model: a pre-training evaluation of it, when one exists, is reused
        reuse = self.initial_records if step == 0 and self.initial_records else None
        result = self.eval_fn(model, reuse=reuse) if reuse else self.eval_fn(model)
        self.save_eval(result, self.rd.path / "eval", f"step_{step}")
        stamp = self.ledger.stamp(self.clock.devices) if self.ledger is not None else {}
        record = {"kind": "eval", "step": step, **self.clock.stamp(), **stamp, "train_loss": self.last_loss,
                  **{k: v for k, v in result.metrics.items() if not isinstance(v, (list, dict))},
                  "eval_seconds": round(time.monotonic() - t0, 3)}
        self.rd.append(record)
        self.evaluated.add(step)
        self._log_wandb(record, result.records)
        log.info("eval step %d: accuracy %.3f (n=%s), mean tokens %.1f", step, record.get("accuracy", float("nan")),
                 record.get("n"), record.get("avg_generated_tokens") or float("nan"))
        return record

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.model = model
        if state.global_step == 0:
            self.evaluate(0, model)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        record = {"kind": "train", "step": state.global_step, **self.clock.stamp()}
        for key, name in TRAIN_KEYS.items():
            if key in logs:
                record[name] = logs[key]
        for k, v in logs.items():  # method-specific extras (e.g. atlas/ keys from the trainers)
            if k.startswith("atlas/"):
                record[k.removeprefix("atlas/")] = v
        if len(record) <= 6 or "train_runtime" in logs:
            return  # the end-of-training summary log, not a step
        record.update(peak_memory_gb())
        if "loss" in record:
            self.last_loss = record["loss"]
        self.rd.append(record)
        for key in ("loss", "reward_mean"):
            check_finite(key, record.get(key), state.global_step)
        self._flush(state.global_step)

    def _flush(self, step: int | None = None) -> None:
        """Take the pending eval point (HF Trainer calls on_step_end before it logs that step's loss,
        so the point waits for the log: it then carries its own step's loss, not the previous one)."""
        if self.pending is not None and (step is None or step >= self.pending):
            due, self.pending = self.pending, None
            self.evaluate(due, self.model)

    def on_step_begin(self, args, state, control, **kw):
        if self._step_t0 is None:  # the first micro-batch of an optimizer step
            self._step_t0 = time.monotonic()

    def on_step_end(self, args, state, control, model=None, **kw):
        # the step's own time: evaluation and checkpointing come after this call, outside it
        if self._step_t0 is not None and self.ledger is not None:
            rec = self.ledger.close_step(time.monotonic() - self._step_t0)
            self.rd.append({"kind": "ledger", "step": state.global_step, **rec})
            if self.flop_budget and rec["cum_flops"] >= self.flop_budget:
                self._stop_on_budget(args, state, control, rec["cum_flops"])
        self._step_t0 = None
        self.model = model or self.model
        self._flush()  # a point left pending by a step that logged nothing
        if state.global_step % self.eval_steps == 0:
            self.pending = state.global_step

    def _stop_on_budget(self, args, state, control, spent: float) -> None:
        """End training after this step, as HF Trainer ends it at max_steps: a checkpoint at this step
        (DefaultFlowCallback saves the last step whenever it saves by steps) and the final evaluation
        point (:meth:`on_train_end`). This callback runs after DefaultFlowCallback, so the flags stick."""
        control.should_training_stop = True
        if args.save_strategy == "steps":
            control.should_save = True
        log.info("step %d: %.3e training FLOPs reached run.flop_budget = %.3e; training stops here (max_steps %d)",
                 state.global_step, spent, self.flop_budget, state.max_steps)

    def on_save(self, args, state, control, **kw):
        self._flush()  # the checkpoint's metrics include its eval point (resume truncates after it)
        self.rd.mark_checkpoint(state.global_step, {"seconds": self.clock.seconds})

    def on_train_end(self, args, state, control, model=None, **kw):
        self.model = model or self.model
        self._flush()
        self.evaluate(state.global_step, self.model)


def completions_table(records: list[dict], step: int | None = None):
    """A W&B table of evaluation records: id, prompt, completion, reference, right or wrong (and the
    eval point's optimizer step first, when there is one)."""
    import wandb

    columns = ["id", "prompt", "completion", "reference", "correct"]
    data = [[r.get("id"), r.get("prompt"), r.get("completion"), r.get("reference"), bool(r.get("correct"))]
            for r in records]
    if step is not None:
        columns, data = ["step", *columns], [[step, *row] for row in data]
    return wandb.Table(columns=columns, data=data)


def finish_wandb(summary: dict | None = None) -> None:
    """Close the run's W&B run (adding ``summary`` to it first), if one is open."""
    import wandb

    if wandb.run is not None:
        if summary:
            wandb.run.summary.update(summary)
        wandb.finish()
        # wandb reads WANDB_DIR/NAME once per process session and then ignores changes ("Changes to
        # your wandb environment variables will be ignored"): without this, the next run in the same
        # notebook (a sweep variant, the off-policy arm) would write into this run's wandb/ folder
        teardown = getattr(wandb, "teardown", None)
        if teardown is not None:
            teardown()


def wandb_report_to(cfg: TrackingConfig, run_path: Path, run_name: str) -> list[str]:
    """Configure W&B from params + environment; returns Trainer's ``report_to``.

    The API key is read by wandb itself from ``WANDB_API_KEY`` (or ``wandb login``); the kit never
    copies it into params, run directories or reports.
    """
    if cfg.wandb == "disabled":
        os.environ["WANDB_MODE"] = "disabled"
        return ["none"]
    try:
        import wandb  # noqa: F401
    except ImportError:
        log.warning("wandb is not installed; tracking disabled")
        return ["none"]
    os.environ["WANDB_MODE"] = cfg.wandb
    os.environ["WANDB_PROJECT"] = cfg.project
    os.environ["WANDB_NAME"] = run_name.replace("/", "-")
    os.environ["WANDB_DIR"] = str(run_path)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DISABLE_CODE", "true")
    (run_path / "wandb").mkdir(parents=True, exist_ok=True)
    if cfg.wandb == "online" and not os.environ.get("WANDB_API_KEY"):
        log.warning("tracking.wandb=online but WANDB_API_KEY is not set; wandb will use `wandb login` credentials")
    return ["wandb"]


def log_baselines(params, summary: dict) -> bool:
    """A W&B run ``<profile>-baseline`` (in ``runs/<profile>/baseline/wandb``) holding the rows every
    trained run is compared with: the untrained student's and the teacher's test metrics, the
    student's validation metrics, and a completions table per row. Returns whether one was written."""
    from atlas_lib.evaluation.baselines import baseline_dir
    from atlas_lib.evaluation.evaluate import load_eval

    out = baseline_dir(params)
    if "wandb" not in wandb_report_to(params.tracking, out, f"{params.name}/baseline"):
        return False
    import wandb

    run = wandb.init(project=params.tracking.project, name=f"{params.name}-baseline", dir=str(out),
                     config=params.to_dict(), job_type="baseline", reinit="finish_previous")
    for role in ("student", "teacher", "student_val"):
        metrics = summary.get(role) or {}
        run.summary.update({f"atlas/{role}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        rows = load_eval(out, role).records if (out / f"{role}.records.jsonl").exists() else None
        if rows:
            run.log({f"atlas/{role}/completions": completions_table(rows)})
    finish_wandb()
    return True
