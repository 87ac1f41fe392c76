"""The method registry: one record per training method, which everything else iterates.

config (its section), the memory plan, cli (``atlas train <key>``), the pipeline (which notebook runs it), the
report (row, label, colour, loss panel, divergence column, pairing) and the findings read a
method from here; no other module names one. Adding a method = a folder ``atlas_lib/methods/<key>/``
(its section in ``config.py``, a :class:`atlas_lib.core.sections.TrainSection` subclass; a runner
``run(params) -> summary``; a memory plan; ``lead.md``, its notebook's lead), a notebook, and one
:func:`register` call (README, "Adding a method").

A method's section, runner, memory plan and lead are named by ``"module:name"`` strings and imported only
when used, so this core module imports no method.
"""

from __future__ import annotations

import importlib
import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass

SAME_TOKENIZER_KL = "mean reverse KL to the teacher (same tokenizer)"
ALIGNED_DIVERGENCE = ("aligned span divergence to the teacher (cross-tokenizer; not comparable with "
                      "same-tokenizer reverse KL)")


@dataclass(frozen=True)
class Method:
    """A training method as the whole kit sees it."""

    key: str  # its params section, run directory and stage name
    config: str | type  # its section, a TrainSection subclass: "atlas_lib.methods.gkd.config:GKDConfig", or the class
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
    # Its memory plan, ``plan(params, key) -> atlas_lib.training.memory.Stage`` ("module:function" or the
    # function); None: the generic distillation plan (the student samples, the teacher scores)
    memory: str | Callable | None = None
    # Its own objective on held-out answers when the shared evaluator scores it (same tokenizer):
    # ``build(section) -> atlas_lib.evaluation.divergence.Objective`` ("module:function" or the function),
    # so notebook 01 scores the untrained student under it too. None: the method scores its objective
    # itself (its Parts' divergence_fn) or has none. Declared, never inferred from field names: another
    # method's ``beta`` (a DPO or KL coefficient) is no JSD beta.
    objective: str | Callable | None = None
    # The Markdown that explains it at the top of its notebook (its objective, what each knob does): a file
    # in its folder, named "package:file" ("atlas_lib.methods.gkd:lead.md"); the notebook's cell tagged
    # ``method-lead`` is written from it (``python -m atlas_lib.core.notebook_params --write``). None: no lead cell.
    lead_md: str | None = None

    @property
    def section(self) -> type:
        return resolve(self.config)

    @property
    def divergence_label(self) -> str:
        return SAME_TOKENIZER_KL if self.divergence == "reverse_kl" else ALIGNED_DIVERGENCE

    def run(self, params) -> dict:
        return resolve(self.runner)(params)

    def lead_text(self) -> str | None:
        """Its notebook lead (Markdown), read from its folder now (through importlib.resources, as in a wheel)."""
        if self.lead_md is None:
            return None
        package, _, name = self.lead_md.partition(":")
        return importlib.resources.files(package).joinpath(name).read_text(encoding="utf-8")

    def objective_for(self, section):
        """Its :class:`atlas_lib.evaluation.divergence.Objective` under ``section`` (None: it declares none)."""
        return None if self.objective is None else resolve(self.objective)(section)


def resolve(ref):
    """The object a ``"module:name"`` reference names (imported now); anything else as it is."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


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


M = "atlas_lib.methods."  # the methods' folders, named by string: imported only when used

register(Method("gkd", M + "gkd.config:GKDConfig", M + "gkd.trainer:run_gkd", "02_gkd",
                "GKD distilled student (on-policy)", "GKD", "C0", "GKD: generalized JSD on student samples",
                alignment="same token ids (student's sample scored by the teacher)",
                memory=M + "gkd.memory:plan_gkd", objective=M + "gkd.objective:objective",
                lead_md=M + "gkd:lead.md"))
register(Method("off_policy", M + "gkd.config:OffPolicyConfig", M + "gkd.trainer:run_off_policy", "02_gkd",
                "Off-policy distilled student (teacher samples)", "Off-policy KD", "C4",
                "Off-policy: generalized JSD on teacher samples",
                alignment="same token ids (teacher's sample; it samples from the student's rendering)",
                memory=M + "gkd.memory:plan_off_policy", objective=M + "gkd.objective:objective",
                lead_md=M + "gkd:lead_off_policy.md"))
register(Method("grpo", M + "grpo.config:GRPOConfig", M + "grpo.trainer:run_grpo", "03_grpo",
                "GRPO / RLVR baseline", "GRPO", "C1", "GRPO: policy loss", distills=False,
                rewarded=True, teacher_template="none",
                alignment="no teacher in training; the evaluation's reverse-KL column only",
                memory=M + "grpo.memory:plan_grpo", lead_md=M + "grpo:lead.md"))
register(Method("cross_tokenizer", M + "cross_tokenizer.config:CrossTokenizerConfig",
                M + "cross_tokenizer.train:run_cross_tokenizer", "04_cross_tokenizer", "Cross-tokenizer student",
                "Cross-tokenizer distillation", "C2", "Cross-tokenizer: aligned-span loss", divergence="aligned",
                own_student=True, teacher_template="own",
                alignment="the kit's text-offset span alignment (teacher prompt in its own template)",
                memory=M + "cross_tokenizer.memory:plan_cross_tokenizer", lead_md=M + "cross_tokenizer:lead.md"))
register(Method("gold", M + "gold.config:GOLDConfig", M + "gold.trainer:run_gold", "04_cross_tokenizer",
                "GOLD student (TRL, cross-tokenizer)", "TRL GOLD", "C5", "GOLD: ULD + hybrid matched-token JSD",
                divergence="aligned", own_student=True,
                alignment="TRL GOLD: byte-offset ULD groups (use_extended_uld), teacher re-tokenizes the text",
                memory=M + "gold.memory:plan_gold", lead_md=M + "gold:lead.md"))

def notebook_lead(stage: str) -> str | None:
    """The first method of ``stage``'s notebook (the one its ``run_name`` parameter names), when that is
    another method; None for the lead itself and for stages that are not methods."""
    if stage not in keys():
        return None
    notebook = get(stage).notebook
    lead = next(m.key for m in methods() if m.notebook == notebook)
    return lead if lead != stage else None
