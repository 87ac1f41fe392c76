"""atlas-distill-kit: on-policy distillation vs RLVR, one report."""

__version__ = "0.1.0"
