"""The method registry: one record per training method, which everything else iterates.

config (its section), cli (``atlas train <key>``), the pipeline (which notebook runs it), the
report (row, label, colour, loss panel, divergence column, pairing) and the findings read a
method from here; no other module names one. Adding a method = a section class in
:mod:`atlas_lib.core.sections` (or anywhere), a runner ``run(params) -> summary`` in
``atlas_lib/methods/<key>/``, a notebook, and one :func:`register` call (README, "Adding a method").

Runners are named by ``"module:function"`` and imported only when a method runs, so this core
module depends on nothing above it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from atlas_lib.core import sections as S

SAME_TOKENIZER_KL = "mean reverse KL to the teacher (same tokenizer)"
ALIGNED_DIVERGENCE = ("aligned span divergence to the teacher (cross-tokenizer; not comparable with "
                      "same-tokenizer reverse KL)")


@dataclass(frozen=True)
class Method:
    """A training method as the whole kit sees it."""

    key: str  # its params section, run directory and stage name
    section: type  # a TrainSection subclass
    runner: str | Callable  # "atlas_lib.methods.gkd.trainer:run_gkd", or the function itself
    notebook: str  # the notebook that runs it (several methods may share one)
    label: str  # the table row
    name: str  # short name for sentences, legends and panel titles
    color: str
    loss_title: str  # its training-loss panel (each method's own objective)
    divergence: str = "reverse_kl"  # reverse_kl (same tokenizer as the teacher) or aligned (its own tokenizer)
    own_student: bool = False  # trains another student: its untrained row is its own, shown before it
    distills: bool = True  # learns from the teacher's distribution (flag a reverse KL that went up)
    rewarded: bool = False  # trained on a reward (the grader): an answer-form flag reads "reward hacking"
    # How its teacher reads the prompt in training (``atlas check``): "configurable" (the student's chat
    # rendering or the teacher's own, per models.teacher_prompt), "own" (always the teacher's own
    # template), "none" (no teacher in training; only the evaluation's reverse-KL column reads one)
    teacher_template: str = "configurable"
    alignment: str = "same token ids"  # how student and teacher positions are matched, in words

    @property
    def divergence_label(self) -> str:
        return SAME_TOKENIZER_KL if self.divergence == "reverse_kl" else ALIGNED_DIVERGENCE

    def run(self, params) -> dict:
        fn = self.runner
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        return fn(params)


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add (or replace) a method; the report shows methods in registration order."""
    if not method.key.isidentifier():
        raise ValueError(f"method key {method.key!r}: must be a Python identifier (it is a params section)")
    _METHODS[method.key] = method
    return method


def unregister(key: str) -> None:
    _METHODS.pop(key, None)


def methods() -> list[Method]:
    return list(_METHODS.values())


def get(key: str) -> Method:
    return _METHODS[key]


def keys() -> list[str]:
    return list(_METHODS)


register(Method("gkd", S.GKDConfig, "atlas_lib.methods.gkd.trainer:run_gkd", "02_gkd",
                "GKD distilled student (on-policy)", "GKD", "C0", "GKD: generalized JSD on student samples",
                alignment="same token ids (student's sample scored by the teacher)"))
register(Method("off_policy", S.OffPolicyConfig, "atlas_lib.methods.gkd.trainer:run_off_policy", "02_gkd",
                "Off-policy distilled student (teacher samples)", "Off-policy KD", "C4",
                "Off-policy: generalized JSD on teacher samples",
                alignment="same token ids (teacher's sample; it samples from the student's rendering)"))
register(Method("grpo", S.GRPOConfig, "atlas_lib.methods.grpo.trainer:run_grpo", "03_grpo",
                "GRPO / RLVR baseline", "GRPO", "C1", "GRPO: policy loss", distills=False,
                rewarded=True, teacher_template="none",
                alignment="no teacher in training; the evaluation's reverse-KL column only"))
register(Method("cross_tokenizer", S.CrossTokenizerConfig, "atlas_lib.methods.cross_tokenizer.train:run_cross_tokenizer",
                "04_cross_tokenizer", "Cross-tokenizer student", "Cross-tokenizer distillation", "C2",
                "Cross-tokenizer: aligned-span loss", divergence="aligned", own_student=True, teacher_template="own",
                alignment="the kit's text-offset span alignment (teacher prompt in its own template)"))
register(Method("gold", S.GOLDSection, "atlas_lib.methods.gold.trainer:run_gold", "04_cross_tokenizer",
                "GOLD student (TRL, cross-tokenizer)", "TRL GOLD", "C5", "GOLD: ULD + hybrid matched-token JSD",
                divergence="aligned", own_student=True,
                alignment="TRL GOLD: byte-offset ULD groups (use_extended_uld), teacher re-tokenizes the text"))


def notebook_lead(stage: str) -> str | None:
    """The first method of ``stage``'s notebook (the one its ``run_name`` parameter names), when that is
    another method; None for the lead itself and for stages that are not methods."""
    if stage not in keys():
        return None
    notebook = get(stage).notebook
    lead = next(m.key for m in methods() if m.notebook == notebook)
    return lead if lead != stage else None
