"""The gold section: TRL's GOLD on the cross_tokenizer section's knobs (:mod:`atlas_lib.methods.gold.trainer`)."""

from __future__ import annotations

from dataclasses import dataclass

from atlas_lib.core.sections import default
from atlas_lib.core.validate import fld
from atlas_lib.methods.cross_tokenizer.config import CrossTokenizerConfig


@dataclass
class GOLDConfig(CrossTokenizerConfig):
    """TRL's GOLD (``trl.experimental.gold.GOLDTrainer``) on the same knobs: ULD over byte-offset
    alignment groups, with ``hybrid`` a generalized JSD (``beta``) on tokens both vocabularies share.
    ByteLevel BPE pairs only (GOLD refuses SentencePiece; the run stops with TRL's reason)."""

    enabled: bool = default("enabled", False)
    hybrid: bool = fld(True, "uld_use_hybrid_loss: JSD on same-string tokens, ULD (sorted L1) on the rest.")
    crossentropy_weight: float = fld(0.0, "uld_crossentropy_weight: student cross-entropy on its samples.", ge=0.0)
