"""The compute ledger: what each optimizer step spent, by phase, in tokens, FLOPs and device seconds.

The efficiency question ("which method gets the student further per unit of compute") needs the
training compute alone: evaluation (validation points, the test rows, the teacher's reverse-KL
scoring) is measured apart and never enters it. Per optimizer step the ledger records

* device seconds split into **sampling** (the student's, or for off-policy the teacher's, generation),
  **teacher** scoring (its forward over the sampled sequences) and **optimisation** (the rest of the
  step: the student's forward and backward, the optimizer);
* tokens: sampled (prompt + completion, each processed once by a cached decode), scored by the
  teacher, and trained (through the student's forward and backward);
* FLOPs estimated from parameter counts, the usual closed form: a forward costs ``2 N`` per token, a
  backward ``4 N`` (``2 N`` for the activations' gradients, ``2 N`` for the weights'), so a full
  fine-tune trains at ``6 N`` per token; LoRA's frozen base still runs its forward and passes the
  activations' gradients back (``2 N + 2 N``) but computes weight gradients only for the adapters
  (``2 N_trainable``): ``4 N + 2 N_trainable``. ``N`` counts the weights a token multiplies: every
  parameter except an input-embedding table that is not tied to the output layer (a lookup). Attention's
  own score FLOPs (quadratic in length) are left out; at the kit's lengths (under 400 tokens) they are a
  few percent of ``2 N``.

The trainers report what they did (:meth:`Ledger.sampled`, :meth:`Ledger.scored`, :meth:`Ledger.trained`);
the run loop's callback closes each step (:meth:`Ledger.close_step`) and writes the record to
``metrics.jsonl`` (``kind: ledger``); eval points carry the cumulative training totals, the x-axis
of the accuracy-against-compute curves. ``run.flop_budget`` is read against the cumulative ``flops``
(sampling + teacher + optimisation): the callback stops a run at the first step whose total reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PHASES = ("sampling", "teacher", "optimisation")


def matmul_params(model) -> int:
    """Parameters a token's forward multiplies by: all, less an untied input-embedding table."""
    if model is None:
        return 0
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        tied = out is not None and getattr(out, "weight", None) is not None and out.weight is emb.weight
        if not tied:
            total -= emb.weight.numel()
    return total


def trainable_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad) if model is not None else 0


def forward_flops(n_params: int, tokens: float) -> float:
    """A forward pass over ``tokens`` tokens: 2 N per token."""
    return 2.0 * n_params * tokens


def train_flops(n_params: int, n_trainable: int, tokens: float) -> float:
    """Forward + backward over ``tokens`` tokens: 2 N + 2 N (activation gradients) + 2 N_trainable
    (weight gradients); 6 N for a full fine-tune."""
    return (4.0 * n_params + 2.0 * min(n_trainable, n_params)) * tokens


@dataclass
class Ledger:
    """Per-step and cumulative training compute of one run."""

    student_params: int  # N of the trained student (matmul_params)
    trainable: int  # parameters with gradients (all for a full fine-tune; the adapters for LoRA)
    teacher_params: int = 0  # N of the teacher (0: no teacher in training)
    totals: dict = field(default_factory=dict)  # cumulative over the run (resumed runs continue)
    _step: dict = field(default_factory=dict)

    @classmethod
    def for_models(cls, student, teacher=None) -> Ledger:
        return cls(matmul_params(student), trainable_params(student), matmul_params(teacher))

    # -- what the trainers report ------------------------------------------------------------------
    def _add(self, key: str, value: float) -> None:
        self._step[key] = self._step.get(key, 0.0) + float(value)

    def sampled(self, seconds: float, tokens: float, by: str = "student") -> None:
        """A generation of ``tokens`` tokens (prompt + completion) by the student or the teacher."""
        n = self.teacher_params if by == "teacher" else self.student_params
        self._add("sampling_seconds", seconds)
        self._add("sampled_tokens", tokens)
        self._add("sampling_flops", forward_flops(n, tokens))

    def scored(self, seconds: float, tokens: float) -> None:
        """The teacher's forward over ``tokens`` tokens of sampled sequences."""
        self._add("teacher_seconds", seconds)
        self._add("teacher_tokens", tokens)
        self._add("teacher_flops", forward_flops(self.teacher_params, tokens))

    def trained(self, tokens: float) -> None:
        """``tokens`` tokens through the student's forward and backward."""
        self._add("trained_tokens", tokens)
        self._add("optimisation_flops", train_flops(self.student_params, self.trainable, tokens))

    # -- the callback's side -----------------------------------------------------------------------
    def resume(self, records: list[dict]) -> None:
        """Continue the cumulative totals from the last ledger record kept on disk (a resumed run)."""
        if records:
            last = max(records, key=lambda r: r.get("step", 0))
            self.totals = {k.removeprefix("cum_"): v for k, v in last.items() if k.startswith("cum_")}

    def close_step(self, step_seconds: float) -> dict:
        """This step's record (and the running totals); the phases not reported are 0, and a step in
        which no phase was reported says so (``phases_split: False``: its time is all optimisation)."""
        s = dict(self._step)
        self._step = {}
        split = "sampling_seconds" in s or "teacher_seconds" in s
        rec = {k: s.get(k, 0.0) for k in ("sampled_tokens", "teacher_tokens", "trained_tokens", "sampling_flops",
                                          "teacher_flops", "optimisation_flops")}
        rec["sampling_seconds"] = s.get("sampling_seconds", 0.0)
        rec["teacher_seconds"] = s.get("teacher_seconds", 0.0)
        rec["optimisation_seconds"] = max(step_seconds - rec["sampling_seconds"] - rec["teacher_seconds"], 0.0)
        rec["step_seconds"] = step_seconds
        rec["flops"] = rec["sampling_flops"] + rec["teacher_flops"] + rec["optimisation_flops"]
        rec["phases_split"] = split
        for k in ("step_seconds", "flops", "sampling_seconds", "teacher_seconds", "optimisation_seconds",
                  "sampled_tokens", "teacher_tokens", "trained_tokens", "sampling_flops", "teacher_flops",
                  "optimisation_flops"):
            self.totals[k] = self.totals.get(k, 0.0) + rec[k]
        rec.update({f"cum_{k}": v for k, v in self.totals.items()})
        return {k: round(v, 4) if isinstance(v, float) and k.endswith("seconds") else v for k, v in rec.items()}

    def stamp(self, devices: int = 1) -> dict:
        """The cumulative training compute so far, for an eval point (evaluation time not in it)."""
        secs = self.totals.get("step_seconds", 0.0)
        return {"train_seconds": round(secs, 3), "train_device_hours": secs * devices / 3600.0,
                "train_flops": self.totals.get("flops", 0.0)}

    def summary(self, devices: int = 1) -> dict:
        """The run's training compute for ``summary.json``: totals by phase, tokens and FLOPs."""
        t = self.totals
        return {**self.stamp(devices),
                "phase_seconds": {p: round(t.get(f"{p}_seconds", 0.0), 2) for p in PHASES},
                "tokens": {k: t.get(f"{k}_tokens", 0.0) for k in ("sampled", "teacher", "trained")},
                "flops_by_phase": {p: t.get(f"{p}_flops", 0.0) for p in PHASES},
                "params": {"student": self.student_params, "trainable": self.trainable,
                           "teacher": self.teacher_params}}
