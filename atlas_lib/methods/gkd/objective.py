"""GKD's own objective as the evaluator scores it (the registry's ``Method.objective`` for ``gkd`` and
``off_policy``, and their ``Parts.objective``): the generalized JSD at the section's ``beta``, the
quantity :class:`atlas_lib.methods.gkd.trainer.AtlasGKDTrainer` minimises per completion token."""

from __future__ import annotations

from atlas_lib.evaluation.divergence import Objective, gjsd_objective


def objective(section) -> Objective:
    """The generalized JSD at ``section.beta`` (a GKD or off-policy section)."""
    return gjsd_objective(section.beta)
