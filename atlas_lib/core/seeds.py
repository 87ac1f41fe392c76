"""Training seeds: the runs a method makes under one params file.

``run.seeds`` lists the training seeds; each trained method runs once per seed on the same split and
test problems (the data split and the baselines keep ``run.seed``). The first seed's run keeps the
plain name (``<profile>/<method>``), so a single-seed file runs as before; every further seed is a
full :class:`~atlas_lib.core.config.Params` whose run goes to ``<run name>-seed<N>``.
"""

from __future__ import annotations

from atlas_lib.core.config import Params, from_dict, sweep_variants


def train_seed(params: Params) -> int:
    """The seed a training run uses: the first of ``run.seeds`` (a seed variant holds only its own), else
    ``run.seed``. The data split and the baselines always use ``run.seed``."""
    return params.run.seeds[0] if params.run.seeds else params.run.seed


def is_further_seed(params: Params) -> bool:
    """Whether ``params`` is one of :func:`seed_variants` (a seed after the first): its ``run.seeds`` holds
    its own seed alone, which is not the split's ``run.seed``."""
    return len(params.run.seeds) == 1 and params.run.seeds[0] != params.run.seed


def seed_variants(params: Params, method: str) -> list[tuple[int, Params]]:
    """Each further training seed of ``run.seeds`` as a full Params for ``method``: the same split and
    problems, ``run.seeds`` = [that seed], the run in ``<run name>-seed<N>``. The first seed is
    ``params`` itself (its run keeps the plain name), so a single-seed file runs as before. A method with
    ``max_seeds`` N trains the first N seeds only; with ``evaluation.kl_seeds`` N, seeds after the
    first N are evaluated without the teacher's scoring (``reverse_kl`` off in their Params)."""
    if len(params.run.seeds) < 2:
        return []
    base = params.to_dict()
    name = params.run_name(method)
    out = []
    kl_seeds = params.evaluation.kl_seeds
    for i, s in enumerate(params.run.seeds[1:getattr(params.section(method), "max_seeds", 0) or None], start=1):
        raw = dict(base)
        raw["run"] = {**base["run"], "seeds": [s]}
        if kl_seeds and i >= kl_seeds:  # the teacher scores the first kl_seeds seeds' test answers only
            raw["evaluation"] = {**base["evaluation"], "reverse_kl": False}
        raw[method] = {**raw[method], "run_name": f"{name}-seed{s}"}
        raw["sweeps"] = []
        out.append((s, from_dict(raw, params.source_path, params.base_dir)))
    return out


def variants(params: Params, method: str) -> list[Params]:
    """Every further run a method makes under these params, in the order its notebook runs them: its
    seed variants, then its sweep variants (a sweep runs at the first seed)."""
    return [v for _, v in seed_variants(params, method)] + [v for _, v in sweep_variants(params, method)]
