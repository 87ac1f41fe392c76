"""The evaluation callback every trainer shares: train and eval points into the run directory (and
W&B when on), evaluation on schedule, checkpoint marks, the NaN guard and the FLOP budget's stop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from transformers import TrainerCallback

from atlas_lib.core.rundir import RunDir
from atlas_lib.training.clock import DeviceClock, peak_memory_gb
from atlas_lib.training.finite import check_finite
from atlas_lib.training.wandb_log import completions_table

log = logging.getLogger(__name__)

# Keys TRL/Trainer log that are worth keeping in metrics.jsonl, renamed to the kit's names.
TRAIN_KEYS = {
    "loss": "loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm",
    "reward": "reward_mean", "reward_std": "reward_std", "frac_reward_zero_std": "frac_zero_std",
    "completions/mean_length": "completion_length", "completions/clipped_ratio": "clipped_ratio",
    "kl": "kl", "entropy": "entropy", "num_tokens": "num_tokens",
}


class BudgetSpent(Exception):  # noqa: N818 (a stop, not an error: training.loop catches it)
    """Raised before a resumed run's first step when its checkpoint's ledger had already reached
    run.flop_budget (the run stopped on its budget and was interrupted after, e.g. in its final
    evaluation): HF Trainer offers no way to end a resumed run before it takes a step."""


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
            if self.ledger is not None and self._budget_reached(self.ledger.totals.get("flops", 0.0)):
                raise BudgetSpent(state.global_step)
            self._step_t0 = time.monotonic()

    def on_step_end(self, args, state, control, model=None, **kw):
        # the step's own time: evaluation and checkpointing come after this call, outside it
        if self._step_t0 is not None and self.ledger is not None:
            rec = self.ledger.close_step(time.monotonic() - self._step_t0)
            self.rd.append({"kind": "ledger", "step": state.global_step, **rec})
            if self._budget_reached(rec["cum_flops"]):
                self._stop_on_budget(args, state, control, rec["cum_flops"])
        self._step_t0 = None
        self.model = model or self.model
        self._flush()  # a point left pending by a step that logged nothing
        if state.global_step % self.eval_steps == 0:
            self.pending = state.global_step

    def _budget_reached(self, cum_flops: float) -> bool:
        """run.flop_budget is set and the ledger's cumulative training FLOPs reached it: one rule for the
        stop after a step and for a resumed run that has no step left (:class:`BudgetSpent`)."""
        return bool(self.flop_budget) and cum_flops >= self.flop_budget

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
