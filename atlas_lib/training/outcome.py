"""What a finished run's files say about it: did it train at all, warnings a reader must see, the
validation peak (recorded, not reported: the test row is the final model), and the summary contract notebook 05 reads (``summary.json``)."""

from __future__ import annotations

import json

import torch

from atlas_lib.core import registry
from atlas_lib.core.config import Params
from atlas_lib.core.files import atomic_write_json
from atlas_lib.core.provenance import provenance
from atlas_lib.core.rundir import RunDir
from atlas_lib.evaluation.baselines import baseline_metrics
from atlas_lib.training.clock import DeviceClock


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


def start_digest(rd: RunDir, model, resumed: bool) -> list[int]:
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
    norms = [r["grad_norm"] for r in train_points if isinstance(r.get("grad_norm"), (int, float))]
    if zero_std and all(z >= 1.0 for z in zero_std):
        return "no learning signal: every GRPO group had zero reward variance (all samples equally rewarded)"
    if norms and all(x == 0 for x in norms):
        return "no gradient: the gradient norm was 0 at every logged step"
    # GRPO's logged loss is 0 whenever a group's answers have equal lengths (its advantages sum to zero)
    # while its gradient is not: a zero loss says nothing where reward variance or a gradient norm is logged
    if losses and all(x == 0 for x in losses) and not zero_std and not norms:
        return "loss identically 0 at every logged step"
    return None


def flags(summary: dict) -> list[str]:
    """Warnings a reader must see beside the row: a distilling method whose divergence to the teacher
    on the test set (reverse KL for a same-tokenizer pair, the aligned span divergence across
    tokenizers) ended higher than its untrained student's, or whose own training loss on the test
    answers (``heldout_objective``) did."""
    out = []
    key = summary.get("method")
    method = registry.get(key) if key in registry.keys() else None
    if method is None or not method.distills:
        return out
    field, name = ("mean_reverse_kl", "reverse KL") if method.divergence == "reverse_kl" else (
        "aligned_divergence", "aligned divergence")
    d0, d1 = (summary.get("initial") or {}).get(field), (summary.get("distilled") or {}).get(field)
    if isinstance(d0, (int, float)) and isinstance(d1, (int, float)) and d1 > d0:
        out.append(f"moved away from the teacher: {name} {d0:.3f} -> {d1:.3f}")
    o0, o1 = ((summary.get(k) or {}).get("heldout_objective") for k in ("initial", "distilled"))
    if isinstance(o0, (int, float)) and isinstance(o1, (int, float)) and o1 > o0:
        out.append(f"its own objective rose on held-out answers: {o0:.3f} -> {o1:.3f}")
    return out


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
    """The run's summary from its metrics (the eval points are the validation split)."""
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
