"""Seed-major training order for ``atlas report`` with several training seeds (``run.seeds``).

Each method notebook trains every seed of its methods in one go, so running the notebooks one after
the other would train all of GKD's seeds before GRPO's first (method-major): a study interrupted
half-way holds no comparison at all. With two or more seeds the pipeline first runs *seed passes*:
pass k executes each method notebook with ``run.seeds`` cut to its first k seeds (and no sweeps),
resuming its earlier seeds' finished runs, so seed 42 of every arm is trained, then 43 of every arm,
and so on; the notebooks' own steps then run last with every seed, train the last seed of each arm in
turn and render the notebooks with all their runs. Cutting the list keeps each run's name and training
hash (the first seed keeps the plain run name; :mod:`atlas_lib.core.seeds`), so the runs a pass trains
are the ones the full notebook reuses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from atlas_lib.core import config, registry, rundir, seeds
from atlas_lib.report.stage_run import INTERRUPTED, PipelineError, Step, execute_shown

log = logging.getLogger(__name__)


def training_steps(steps: list[Step]) -> list[Step]:
    """The steps that train registered methods (not 01_data, not the report)."""
    return [s for s in steps if any(k in registry.keys() for k in s.stages)]


def seed_passes(params: config.Params, steps: list[Step]) -> list[Step]:
    """The seed passes that run before the notebooks' own steps: for k = 1 .. len(run.seeds) - 1, each
    training step with ``seeds`` = the first k seeds. None with fewer than two seeds."""
    seeds = list(params.run.seeds)
    return [Step(s.notebook, s.stages, s.run_dirs, seeds=tuple(seeds[:k]))
            for k in range(1, len(seeds)) for s in training_steps(steps)]


def pass_params(params: config.Params, step: Step) -> config.Params:
    """``params`` as a seed pass's notebook sees them: ``run.seeds`` cut to the pass's seeds, no sweeps."""
    if not step.seeds:
        return params
    raw = params.to_dict()
    raw["run"] = {**raw["run"], "seeds": list(step.seeds)}
    raw["sweeps"] = []
    return config.from_dict(raw, params.source_path, params.base_dir)


def training_order(params: config.Params, steps: list[Step]) -> list[tuple[str, int]]:
    """(method, seed) in the order the pipeline first trains each run: every seed pass's new seed for
    each of its enabled methods, then the notebooks' own steps' last seed (or run.seed alone)."""
    every = list(params.run.seeds) or [params.run.seed]
    enabled = set(params.enabled())
    order: list[tuple[str, int]] = []
    for step in [*seed_passes(params, steps), *training_steps(steps)]:
        for k in (k for k in step.stages if k in enabled):  # each method's own seeds (its max_seeds)
            own = every[:params.section(k).max_seeds or None]
            new = step.seeds[-1] if step.seeds else own[-1]
            order += [(k, new)] if new in own and (k, new) not in order else []
    return order


def run_pass(params: config.Params, step: Step, path: Path, profile_dir: Path, nb_dir: Path, force: bool,
             verbose: bool, seeded: set, timings: dict, *, stale: Callable[[Step], bool],
             move_aside: Callable) -> None:
    """One seed pass: the step's notebook on its first seeds, resuming what finished (a pass whose runs all
    finished is skipped). A notebook's first pass in this invocation moves its old runs aside where the
    pipeline would for its own step (``stale``: ``--force``, or runs it could not resume); ``seeded``
    collects the notebooks whose passes ran, whose own steps then resume instead of starting over."""
    sp = pass_params(params, step)
    first = step.notebook not in seeded
    label = f"{step.notebook} seeds {', '.join(map(str, step.seeds))}"
    runs = [(sp, k) for k in step.stages if k in registry.keys()]
    runs += [(v, k) for _, k in list(runs) for _, v in seeds.seed_variants(sp, k)]
    if not (force and first) and all(rundir.run_state(p, k) == "finished" for p, k in runs):
        log.info("[%s] every run finished: reused", label)
        return
    if first and (force or stale(step)) and any(any(profile_dir.glob(p)) for p in step.run_dirs):
        move_aside(profile_dir, step, params)
    seeded.add(step.notebook)
    log.info("[%s] seed-major pass: training seed %d of %s", label, step.seeds[-1], ", ".join(step.stages))
    t0 = time.monotonic()
    execute_shown(step, path, nb_dir / "seed_passes" / f"{step.notebook}.seed{step.seeds[-1]}.ipynb",
                  progress_params=sp, resume=True, verbose=verbose,
                  log_file=profile_dir / "logs" / f"{step.notebook}.seed{step.seeds[-1]}.log")
    if INTERRUPTED:
        raise PipelineError(f"interrupted (Ctrl-C) in {label}; its run keeps its last checkpoint: run the same "
                            "command again to resume")
    timings[label] = round(time.monotonic() - t0, 1)
