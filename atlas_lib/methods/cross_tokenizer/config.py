"""The cross_tokenizer section: on-policy distillation across tokenizers
(:mod:`atlas_lib.methods.cross_tokenizer.train`)."""

from __future__ import annotations

from dataclasses import dataclass

from atlas_lib.core.sections import TrainSection
from atlas_lib.core.validate import fld


@dataclass
class CrossTokenizerConfig(TrainSection):
    """On-policy distillation between models with different tokenizers (the kit's text-offset
    alignment of spans, any tokenizer pair; the run records whether TRL's GOLD would accept it)."""

    teacher: str = fld("qwen2.5-coder-1.5b-instruct", "Teacher (hub id, local dir or embedded name).")
    student: str = fld("smollm2-135m-instruct", "Student with a different tokenizer.")
    lmbda: float = fld(1.0, "Fraction of on-policy student samples.", ge=0.0, le=1.0)
    beta: float = fld(0.5, "Generalized JSD interpolation on aligned spans.", ge=0.0, le=1.0)
