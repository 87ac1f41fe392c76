"""What both GKD engines add to their TRL trainer: a NaN/inf loss stops the run before the optimizer
applies it, and the completion tokens each step scored are logged (``atlas/completion_tokens``)."""

from __future__ import annotations

import torch

from atlas_lib.training.finite import NonFiniteError


class ScoredLoss:
    """Mixin placed before the TRL trainer class in the bases."""

    _completion_tokens = 0

    def checked(self, loss: torch.Tensor, scored_tokens: int) -> torch.Tensor:
        """``loss`` after the NaN/inf guard, counting ``scored_tokens`` towards the step's metric."""
        if not torch.isfinite(loss):
            raise NonFiniteError(f"GKD loss became {loss.item()} at step {self.state.global_step + 1}; the run "
                                 "stopped before applying it and kept its metrics and last checkpoint")
        self._completion_tokens += scored_tokens
        return loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs and self._completion_tokens:
            logs["atlas/completion_tokens"] = self._completion_tokens / max(self.args.logging_steps, 1)
            self._completion_tokens = 0
        super().log(logs, start_time)
