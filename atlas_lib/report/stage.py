"""The end of notebooks 02-04: one method's eval points and its accuracy / loss / divergence figure."""

from __future__ import annotations

import logging

import pandas as pd
from matplotlib.figure import Figure

from atlas_lib.core.preflight import stage_dir
from atlas_lib.report.charts import absent, acc_errorbar, aligned, done, figure, series
from atlas_lib.report.collect import load_run

log = logging.getLogger(__name__)


def stage_figure(info, keep_open: bool = False) -> Figure:
    """One run: held-out accuracy, training loss and divergence per step (notebooks 02-04)."""
    name = info.name
    fig, (a_acc, a_loss, a_div) = figure(3, f"{name} run ({info.status})", 4.6)
    d = series(info.evals, "accuracy")
    if d is None:
        absent(a_acc, f"{name}: no eval points")
    else:
        acc_errorbar(a_acc, d, "step", color=info.color)
    a_acc.set(xlabel="optimizer step", ylabel="held-out accuracy (%)", title="accuracy (95% CI)")
    t = series(info.train, "loss")
    if t is None:
        absent(a_loss, f"{name}: no loss logged")
    else:
        a_loss.plot(t["step"], t["loss"], color=info.color)
    a_loss.set(xlabel="optimizer step", ylabel="loss", title="training loss")
    div = "aligned_divergence" if aligned(info) else "mean_reverse_kl"
    k = series(info.evals, div)
    if k is None:
        absent(a_div, f"no {div} recorded")
    else:
        a_div.plot(k["step"], k[div], marker="o", color=info.color)
    a_div.set(xlabel="optimizer step", ylabel="aligned span divergence" if div == "aligned_divergence"
              else "mean reverse KL (nats/token)", title=div.replace("_", " "))
    return done(fig, keep_open)


def stage_view(params, key: str):
    """(eval points, figure) of one method's run, for the end of notebooks 02-04."""
    info = load_run(stage_dir(params, key), key)
    for n in info.notes:
        log.info("%s: %s", key, n)
    keep = ["step", "seconds", "device_hours", "accuracy", "ci_low", "ci_high", "n", "avg_generated_tokens",
            "truncation_rate", "mean_reverse_kl", "aligned_divergence", "train_loss"]
    points = info.evals[[c for c in keep if c in info.evals]] if len(info.evals) else pd.DataFrame(columns=keep)
    return points, stage_figure(info, keep_open=True)
