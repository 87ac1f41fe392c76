"""W&B set-up and logging: the run's ``report_to`` from params and the environment, its completions
tables, closing a run, and the baselines' own run. The API key only ever comes from the environment."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from atlas_lib.core.sections import TrackingConfig

log = logging.getLogger(__name__)


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
