"""``make report``: execute notebooks 01 -> 05 with papermill, reuse finished stages, render HTML.

Each notebook runs into ``runs/<profile>/notebooks/`` (the sources stay clean). A stage whose
fingerprint (its params, its notebook's source, its upstream stages) is unchanged and whose run
finished is reused and the log says so; a changed or ``--force``d stage first moves its old run
directories to ``runs/<profile>/.previous/`` (never deleted silently), then re-runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from atlas_lib.core import config, registry
from atlas_lib.core.paths import notebooks_dir, project_root, relative_to_root, reports_root, runs_root
from atlas_lib.core.rundir import atomic_write_json
from atlas_lib.report.html import render_html

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    notebook: str
    stages: tuple[str, ...]  # "data", method keys (registry), or "report"
    run_dirs: tuple[str, ...]  # directories under runs/<profile>/ this step writes


def steps(params: config.Params) -> list[Step]:
    """01 data, then one step per notebook of the enabled methods (registry order), then 05 report.
    A method's notebook also runs its sweep variants (``sweep-<name>``)."""
    out = [Step("01_data", ("data",), ("data", "baseline"))]
    by_nb: dict[str, list[str]] = {}
    for key in params.enabled():
        by_nb.setdefault(registry.get(key).notebook, []).append(key)
    for nb, keys in by_nb.items():
        extra = ("sweep-*",) if any(config.sweep_method(s) in keys for s in params.sweeps) else ()
        out.append(Step(nb, tuple(keys), (*keys, *extra)))
    out.append(Step("05_comparison", ("report",), ()))
    return out


class PipelineError(RuntimeError):
    """A notebook failed; the message names the cell error and the partial output."""


def fingerprint(params: config.Params, step: Step, upstream: str) -> str:
    nb = (notebooks_dir() / f"{step.notebook}.ipynb").read_bytes()
    if step.stages == ("report",):
        stage = str(time.time())  # the report is cheap and reads everything: always re-render
    elif step.stages == ("data",):
        stage = params.stage_hash("data")
    else:
        stage = "".join(params.stage_hash(k) for k in step.stages) + json.dumps(
            [s for s in params.sweeps if config.sweep_method(s) in step.stages])
    return hashlib.sha256(nb + stage.encode() + upstream.encode()).hexdigest()[:16]


def _move_aside(profile_dir: Path, step: Step) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for pattern in step.run_dirs:
        for d in profile_dir.glob(pattern):
            dest = profile_dir / ".previous" / f"{d.name}-{stamp}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(d), dest)
            log.info("moved previous %s to %s", d.name, relative_to_root(dest))


def execute(step: Step, params_file: Path, out_nb: Path) -> None:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out_nb.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(notebooks_dir() / f"{step.notebook}.ipynb"), str(out_nb),
                            parameters={"params_file": str(params_file)}, kernel_name="python3",
                            cwd=str(project_root()), log_output=True, progress_bar=True)
    except PapermillExecutionError as e:
        raise PipelineError(f"{step.notebook} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                            f"partial output: {relative_to_root(out_nb)}") from None


def run_pipeline(params_file: str | os.PathLike = "params/embedded.yaml", *, force: bool = False,
                 only: list[str] | None = None) -> Path:
    """Run every stage of a parameter set and render its report; returns the HTML path."""
    path = Path(params_file)
    params = config.load(path)  # validate before anything runs
    profile_dir = runs_root() / params.name
    nb_dir = profile_dir / "notebooks"
    upstream = ""
    timings = {}
    plan = steps(params)
    for step in plan:
        fp = fingerprint(params, step, upstream)
        upstream += fp
        if only is not None and not set(step.stages) & {*only, "report"}:
            log.info("[%s] skipped (--only)", step.notebook)
            continue
        marker = nb_dir / f"{step.notebook}.done.json"
        done = json.loads(marker.read_text()) if marker.exists() else {}
        if not force and done.get("fingerprint") == fp:
            log.info("[%s] reusing the finished run (params and inputs unchanged; --force re-runs)", step.notebook)
            continue
        if step.run_dirs and any(any(profile_dir.glob(p)) for p in step.run_dirs):
            _move_aside(profile_dir, step)
        marker.unlink(missing_ok=True)
        log.info("[%s] running -> %s", step.notebook, relative_to_root(nb_dir / f"{step.notebook}.ipynb"))
        t0 = time.monotonic()
        execute(step, path, nb_dir / f"{step.notebook}.ipynb")
        timings[step.notebook] = round(time.monotonic() - t0, 1)
        atomic_write_json(marker, {"fingerprint": fp, "seconds": timings[step.notebook]})
        log.info("[%s] done in %.0f s", step.notebook, timings[step.notebook])
    out_dir = reports_root() / params.name
    html = render_html(nb_dir / "05_comparison.ipynb", out_dir / "index.html", with_code=False)
    for step in plan[:-1]:
        nb = nb_dir / f"{step.notebook}.ipynb"
        if nb.exists():
            render_html(nb, out_dir / "notebooks" / f"{step.notebook}.html", with_code=True)
    log.info("report: %s (stage times this run: %s)", relative_to_root(html), timings or "all reused")
    return html
