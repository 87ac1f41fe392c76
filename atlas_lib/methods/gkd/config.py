"""The gkd and off_policy sections: on-policy distillation and the off-policy arm it is compared
against (both run by :mod:`atlas_lib.methods.gkd.trainer`)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from atlas_lib.core.sections import TrainSection, default
from atlas_lib.core.validate import ParamsError, fld

# TRL trainers the gkd section may run on (atlas_lib.methods.gkd.trainer picks one).
GKD_ENGINES = ("gkd", "distillation")


@dataclass
class GKDConfig(TrainSection):
    """On-policy distillation (TRL's GKDTrainer, or its DistillationTrainer: ``engine``): the student
    samples, a same-tokenizer teacher scores every token of the sample, and the student minimises
    the generalized JSD between the two."""

    lmbda: float = fld(1.0, "Fraction of batches built from student samples (1.0 = fully on-policy).",
                       ge=0.0, le=1.0)
    beta: float = fld(0.5, "Generalized JSD interpolation: 0 forward KL, 1 reverse KL.", ge=0.0, le=1.0)
    seq_kd: bool = fld(False, "Sequence-level KD: non-student batches use teacher samples instead of references.")
    loss_chunk_size: int = fld(0, "Compute the JSD over this many positions at a time (0 = all at "
                               "once); bounds full-vocabulary logit memory. Engine gkd only: the distillation "
                               "engine always projects and scores in tiles (TRL's chunked kernel).", ge=0)
    engine: str = fld("gkd", "TRL trainer that runs the same objective: gkd (GKDTrainer; any lmbda, seq_kd) or "
                      "distillation (DistillationTrainer, the stable TRL trainer: fully on-policy only, lmbda 1 "
                      "and seq_kd false; can generate with vLLM). Both sample at `temperature` and score the JSD "
                      "at temperature 1 over the sampled completion tokens (atlas_lib/methods/gkd/trainer.py).",
                      choices=GKD_ENGINES)
    use_vllm: bool = fld(False, "Generate the student's samples with vLLM (GPU; pip install vllm). Engine "
                         "distillation only.")
    vllm_mode: str = fld("colocate", "vLLM placement when use_vllm: colocate (in the training process) or server "
                         "(a `trl vllm-serve` process). Engine distillation only.", choices=("colocate", "server"))

    def check(self, key: str, eval_budget: int) -> None:
        super().check(key, eval_budget)
        if self.engine == "distillation" and (self.lmbda != 1.0 or self.seq_kd):
            raise ParamsError(f"{key}.engine = 'distillation' is fully on-policy: it needs {key}.lmbda = 1.0 and "
                              f"{key}.seq_kd = false (got lmbda = {self.lmbda}, seq_kd = {str(self.seq_kd).lower()}); "
                              f"set {key}.engine: gkd for a mixed or sequence-level run")
        if self.use_vllm and self.engine != "distillation":
            raise ParamsError(f"{key}.use_vllm = true needs {key}.engine = 'distillation' (GKDTrainer samples "
                              f"with transformers only); set {key}.engine: distillation or {key}.use_vllm: false")
        if self.use_vllm and importlib.util.find_spec("vllm") is None:
            raise ParamsError(f"{key}.use_vllm = true needs vllm (GPU): pip install vllm, or set {key}.use_vllm: false")


@dataclass
class OffPolicyConfig(TrainSection):
    """Off-policy distillation, the arm on-policy distillation is compared against: the teacher samples
    the completions and the student is trained on them (GKD with lmbda 0 and seq_kd), same loss."""

    enabled: bool = default("enabled", False)
    beta: float = fld(0.5, "Generalized JSD interpolation on the teacher's samples (0 forward KL: classic KD).",
                      ge=0.0, le=1.0)
    loss_chunk_size: int = fld(0, "Compute the JSD over this many positions at a time (0 = all at once).", ge=0)
