"""Notebook 05's data layer: read a profile's run directories once, for every method in the registry.

Every piece may be missing (a stage not run, an interrupted or failed run, an older summary
schema): a missing run is recorded as "not run" with the reason, never as zeros. A directory under
``runs/<profile>/`` that is no method or sweep of the params file is reported in the notes, not
skipped silently or mislabelled.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from atlas_lib.core import config, registry, rundir, seeds
from atlas_lib.core.files import read_jsonl
from atlas_lib.core.paths import runs_root
from atlas_lib.core.preflight import stage_dir
from atlas_lib.evaluation import stats
from atlas_lib.evaluation.audit import FormAudit, audit, hacking_suspected
from atlas_lib.training import outcome

log = logging.getLogger(__name__)
NAN = float("nan")
# What else lives in a profile directory (not a method's run)
PROFILE_DIRS = ("data", "baseline", "notebooks", "logs", ".previous")


@dataclass
class RunInfo:
    """One training run directory as found on disk, with how the report names and draws it."""

    key: str  # a method key, or sweep-<name>
    rel: str  # the directory relative to the runs root (for messages; never absolute)
    status: str  # complete, failed, incomplete, unreadable or not run
    summary: dict = field(default_factory=dict)
    train: pd.DataFrame = field(default_factory=pd.DataFrame)
    evals: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)
    method: str = ""  # the registered method it runs (a sweep runs gkd)
    label: str = ""  # table row
    name: str = ""  # sentences and legends
    color: str = "C9"
    # Each validation eval point's outcomes on disk, {step: {problem id: correct}} (report/plateau.py)
    val_outcomes: dict[int, dict] = field(default_factory=dict)

    @property
    def spec(self) -> registry.Method | None:
        return registry.get(self.method) if self.method in registry.keys() else None


@dataclass
class Collected:
    """Everything notebook 05 shows, read once."""

    profile: str
    manifest: dict | None
    baseline: dict | None
    runs: dict[str, RunInfo]  # registry order; each GKD sweep right after gkd
    notes: list[str] = field(default_factory=list)
    # Per table row, {problem id: correct} on the test split (the paired comparisons' input)
    correct: dict[str, dict] = field(default_factory=dict)
    # Per table row, the answer-form audit of its test completions (evaluation.audit)
    audits: dict[str, FormAudit] = field(default_factory=dict)
    # Per method trained at several seeds: [(seed, run key)], the first seed's run key being the method's own
    seeds: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    comparisons: list[str] = field(default_factory=list)  # evaluation.comparisons: the primary ones
    # Per table row, (test answers its own objective was computed on, test answers): GOLD's costs seconds an
    # answer, so it scores a first part only (methods/gold/trainer.py OBJECTIVE_ANSWERS)
    objective_n: dict[str, tuple[int, int]] = field(default_factory=dict)


def _read_json(path: Path, notes: list[str], what: str) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        notes.append(f"{what}: unreadable ({type(e).__name__}); treated as missing")
        return None


def _numberish(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
        isinstance(v, str) and v.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"))


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame sorted by step. JSON holds NaN/inf as strings (files.clean_json): they become
    NaN here (an inf loss is a failed step, not a point to plot)."""
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rundir.dedupe_steps(rows)).drop(columns=["kind"], errors="ignore")
    for c in df.columns:
        if df[c].dtype == object and df[c].dropna().map(_numberish).all():
            df[c] = pd.to_numeric(df[c], errors="coerce")
    df = df.replace([math.inf, -math.inf], NAN)
    return df.sort_values("step").reset_index(drop=True) if "step" in df else df


def load_run(path: Path, key: str, method: str | None = None, label: str | None = None,
             color: str | None = None, name: str | None = None) -> RunInfo:
    """Read one run directory. ``method``: the registered method it runs (default: ``key``); ``name``: its
    name in sentences (default: ``label`` when one is given, else the registry's)."""
    method = method or key
    spec = registry.get(method) if method in registry.keys() else None
    rel = rundir_rel(path)
    notes: list[str] = []
    summary = _read_json(path / "summary.json", notes, f"{rel}/summary.json")
    rows = read_jsonl(path / "metrics.jsonl")
    info = RunInfo(key, rel, "not run", summary or {}, _frame([r for r in rows if r.get("kind") == "train"]),
                   _frame([r for r in rows if r.get("kind") == "eval"]), notes, method,
                   label or (spec.label if spec else key), name or label or (spec.name if spec else key),
                   color or (spec.color if spec else "C9"))
    info.val_outcomes = _val_outcomes(path, info.evals)
    if summary is not None:
        # the flags as this version computes them (a summary written by an older one may lack a newer check)
        info.summary["flags"] = list(dict.fromkeys([*(summary.get("flags") or []), *outcome.flags(summary)]))
        moved = (summary.get("training") or {}).get("weights_changed")
        if isinstance(moved, bool):  # this version's reading of the run's own metrics
            info.summary["did_not_train"] = outcome.did_not_train([r for r in rows if r.get("kind") == "train"], moved)
        info.status = summary.get("status") or "complete"
        if "status" not in summary:
            notes.append("summary.json has no status field (older schema); read as complete")
        if info.status == "failed":
            notes.append(f"run failed: {summary.get('error', 'no error recorded')}")
    elif notes:
        info.status = "unreadable"
    elif rows:
        info.status = "incomplete"
        notes.append("no summary.json (interrupted or still running); values from the last eval point")
    else:
        nb = spec.notebook if spec else "?"
        notes.append(f"not run: no {rel}/summary.json or metrics.jsonl (run notebook {nb})")
    return info


def _val_outcomes(path: Path, evals: pd.DataFrame) -> dict[int, dict]:
    """{step: {problem id: correct}} for each eval point whose per-problem records are on disk
    (``eval/step_<n>.records.jsonl``)."""
    out = {}
    for step in sorted({int(s) for s in evals["step"].dropna()}) if "step" in evals else []:
        rows = read_jsonl(path / "eval" / f"step_{step}.records.jsonl")
        if rows and all("id" in r and "correct" in r for r in rows):
            out[step] = {str(r["id"]): bool(r["correct"]) for r in rows}
    return out


def rundir_rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(runs_root().resolve()))
    except ValueError:
        return Path(path).name


def _sweep_colors(n: int) -> list[str]:
    used = {m.color for m in registry.methods()}
    free = [f"C{i}" for i in range(10) if f"C{i}" not in used] or ["C9"]
    return [free[i % len(free)] for i in range(n)]


def run_dirs(params: config.Params) -> dict[str, tuple]:
    """key -> (directory, method, label, colour[, name]) for each enabled method, each followed by its sweep
    variants, in table order."""
    out: dict[str, tuple] = {}
    colors = iter(_sweep_colors(len(params.sweeps)))
    for key in params.enabled():
        out[key] = (stage_dir(params, key), key, None, None)
        spec = registry.get(key)
        for s, variant in seeds.seed_variants(params, key):
            # one name per row: "GKD (seed 43)" in sentences, the registry's label with the seed in the table
            out[f"{key}-seed{s}"] = (stage_dir(variant, key), key, f"{spec.label} (seed {s})", spec.color,
                                     f"{spec.name} (seed {s})")
        for name, variant in config.sweep_variants(params, key):
            out[f"sweep-{name}"] = (stage_dir(variant, key), key, config.sweep_label(params, name),
                                    next(colors))
    return out


def _profile_files(profile: Path, notes: list[str]) -> tuple[dict | None, dict | None]:
    """The profile's data manifest and baseline summary, each with a note where it is missing."""
    manifest = _read_json(profile / "data" / "manifest.json", notes, "data/manifest.json")
    if manifest is None:
        notes.append("data/manifest.json not found: notebook 01 (data) was not run for this profile")
    baseline = _read_json(profile / "baseline" / "summary.json", notes, "baseline/summary.json")
    if baseline is None:
        notes.append("baseline/summary.json not found: the pre-distillation student and teacher were not "
                     "evaluated (notebook 01)")
    return manifest, baseline


def _unknown_dir_notes(params: config.Params, profile: Path, dirs: dict[str, tuple]) -> list[str]:
    """A note per directory of the profile that is no enabled method or sweep (reported, not shown)."""
    known = {Path(d).resolve() for d, *_ in dirs.values()}
    return [f"{d.name}/ is not an enabled method or sweep of this params file (methods: "
            f"{', '.join(params.enabled())}); not shown"
            for d in sorted(p for p in profile.glob("*") if p.is_dir() and p.name not in PROFILE_DIRS)
            if d.resolve() not in known]


def _disabled_notes(params: config.Params) -> list[str]:
    """A note per registered method the params disable (it has no row)."""
    return [f"{registry.get(key).name} is disabled in the params ({key}.enabled: false); no row"
            for key in registry.keys() if key not in params.enabled()]


def _record_paths(params: config.Params, profile: Path, runs: dict[str, RunInfo],
                  dirs: dict[str, tuple]) -> dict[str, Path]:
    """Table row -> its test records file: the baselines, the controls, each run's final evaluation and,
    for a method that trains its own student, that student's evaluation before training."""
    paths = {"student": profile / "baseline" / "student.records.jsonl",
             "teacher": profile / "baseline" / "teacher.records.jsonl",
             **{f"control_{c}": profile / "baseline" / f"control_{c}.records.jsonl" for c in params.evaluation.controls}}
    for key, info in runs.items():
        run_dir = dirs[key][0]
        if info.spec is not None and info.spec.own_student:
            paths[f"{key}_pre"] = run_dir / "eval" / "initial_full.records.jsonl"
        paths[key] = run_dir / "eval" / "final_full.records.jsonl"
    return paths


def _read_records(profile: Path, paths: dict[str, Path]) -> tuple[dict[str, dict], dict[str, FormAudit],
                                                                  dict[str, tuple[int, int]]]:
    """Per row, {problem id: correct}, the answer-form audit of its test completions and (answers with their
    own objective, answers)."""
    questions = {r["id"]: r.get("question", "") for r in read_jsonl(profile / "data" / "eval.jsonl")
                 if "id" in r}
    correct, audits, objective_n = {}, {}, {}
    for key, path in paths.items():
        records = read_jsonl(path)
        correct[key] = {r["id"]: bool(r["correct"]) for r in records if "id" in r and "correct" in r}
        audits[key] = audit(records, questions)
        objective_n[key] = (sum(isinstance(x := r.get("objective"), (int, float)) and math.isfinite(x)
                                for r in records), len(records))  # the answers heldout_objective averages
    return correct, audits, objective_n


def _seed_runs(params: config.Params) -> dict[str, list[tuple[int, str]]]:
    """Per method trained at several seeds: [(seed, run key)], the first seed's run key being the method's."""
    return {key: [(seeds.train_seed(params), key)] + [(s, f"{key}-seed{s}") for s, _ in seeds.seed_variants(params, key)]
            for key in params.enabled() if seeds.seed_variants(params, key)}  # a method's max_seeds may be 1


def collect(params: config.Params) -> Collected:
    """Read manifest, baselines and every enabled method's run directory of ``params``' profile."""
    profile = runs_root() / params.name
    notes: list[str] = []
    manifest, baseline = _profile_files(profile, notes)
    dirs = run_dirs(params)
    runs = {key: load_run(d, key, *rest) for key, (d, *rest) in dirs.items()}
    notes += _unknown_dir_notes(params, profile, dirs)
    notes += _disabled_notes(params)
    for info in runs.values():
        notes += [f"{info.key}: {n}" for n in info.notes]
    correct, audits, objective_n = _read_records(profile, _record_paths(params, profile, runs, dirs))
    by_seed = _seed_runs(params)
    for key, pairs in by_seed.items():  # the first seed's row, under its own name too
        first = pairs[0][0]
        correct[f"{key}-seed{first}"], audits[f"{key}-seed{first}"] = correct.get(key), audits.get(key)
    return Collected(params.name, manifest, baseline, runs, notes, {k: v for k, v in correct.items() if v},
                     {k: v for k, v in audits.items() if v is not None}, by_seed, list(params.evaluation.comparisons),
                     {k: v for k, v in objective_n.items() if v[0]})


def untrained_row(col: Collected, key: str) -> str:
    """The row a trained row is paired against: its own untrained student, or the shared one."""
    info = col.runs.get(key) or col.runs.get(re.sub(r"-seed\d+$", "", key))
    if info is not None and info.spec is not None and info.spec.own_student:
        return f"{info.method}_pre"
    return "student"


def further_seed(col: Collected, key: str) -> bool:
    """Whether run ``key`` is a further training seed of a method (its row belongs to the method's)."""
    info = col.runs.get(key)
    return info is not None and info.method in col.seeds and key != info.method


def _trained_runs(col: Collected, *, own: bool) -> list[str]:
    """Runs that train their own student (``own``) or the shared one, that finished and trained; a further
    seed is part of its method's row."""
    return [k for k, i in col.runs.items() if i.spec is not None and i.spec.own_student == own
            and i.status == "complete" and not i.summary.get("did_not_train") and not further_seed(col, k)]


def shared_student_runs(col: Collected, *, methods_only: bool = False) -> list[str]:
    """Runs that train the shared student (paired with its untrained row), that finished and trained; a
    further seed is part of its method's row. ``methods_only``: the methods themselves, sweep variants left out."""
    return [k for k in _trained_runs(col, own=False) if not methods_only or col.runs[k].key == col.runs[k].method]


def own_student_runs(col: Collected) -> list[str]:
    """Runs that train their own student (paired with their own untrained row, ``<key>_pre``), that finished
    and trained; a further seed is part of its method's row."""
    return _trained_runs(col, own=True)


def own_student_page(col: Collected) -> bool:
    """Whether the page is about the methods' own students: some method trained its own and no method that
    trains the shared student ran (finished, failed or part-way: a failed GKD keeps the embedded page about
    the shared student, with the methods that bring their own beside it). One rule for the findings' text
    (findings.answer_runs) and the key table."""
    shared_ran = any(i.spec is not None and not i.spec.own_student and i.status != "not run"
                     for i in col.runs.values())
    return bool(own_student_runs(col)) and not shared_ran


def seed_correct(col: Collected, key: str) -> list[dict]:
    """A row's test outcomes per training seed (one entry for a single-seed row)."""
    if key in col.seeds:
        return [col.correct[k] for _, k in col.seeds[key] if col.correct.get(k)]
    return [col.correct[key]] if col.correct.get(key) else []


def hacking_flag(col: Collected, key: str) -> str | None:
    """The answer-form audit's flag for a trained row against its untrained student (or None); a method
    trained at several seeds is flagged when any seed is."""
    base = col.audits.get(untrained_row(col, key))
    info = col.runs.get(key) or col.runs.get(re.sub(r"-seed\d+$", "", key))
    # "reward hacking" only where a reward was optimised; a run of an unknown method is assumed to have one
    rewarded = info is None or info.spec is None or info.spec.rewarded
    flags = [f for _, k in col.seeds.get(key, [(0, key)])
             if (f := hacking_suspected(col.audits.get(k), base, rewarded=rewarded))]
    return flags[0] if flags else None


def paired_vs(col: Collected, key: str, base: str | None = None) -> stats.Paired | None:
    """Row ``key`` against row ``base`` (default: its untrained student) on the test problems both saw; a
    row with several seeds is compared over problems (:func:`stats.paired_seeds`: sign test, cluster
    bootstrap), never over seed x problem pairs."""
    a, b = seed_correct(col, key), seed_correct(col, base or untrained_row(col, key))
    if not a or not b or not set(a[0]) & set(b[0]):
        return None
    if len(a) == len(b) == 1:
        return stats.paired(a[0], b[0])
    if len(a) != len(b) and 1 not in (len(a), len(b)):  # a seed missing on one side: the seeds both have
        a, b = a[:min(len(a), len(b))], b[:min(len(a), len(b))]
    return stats.paired_seeds(a, b)


def primary_tests(col: Collected) -> dict[tuple[str, str], tuple[stats.Paired, float]]:
    """The declared primary comparisons (``evaluation.comparisons``) that have data: (row, against) ->
    (paired result, Holm-adjusted p over all of them)."""
    methods = [k for k, i in col.runs.items() if i.key == i.method and i.status != "not run"]
    pairs: list[tuple[str, str]] = []
    for c in col.comparisons:
        if c == "methods vs student":
            pairs += [(k, untrained_row(col, k)) for k in methods]
        else:
            a, b = c.split(" vs ")
            if a in methods and (b == "student" or b in methods):
                pairs.append((a, untrained_row(col, a) if b == "student" else b))
    found = {}
    for a, b in dict.fromkeys(pairs):
        if (pr := paired_vs(col, a, b)) is not None:
            found[(a, b)] = pr
    adjusted = stats.holm([pr.p_value for pr in found.values()])
    return {k: (pr, p) for (k, pr), p in zip(found.items(), adjusted, strict=True)}
