"""Problems in, a leak-free train/eval split out (``runs/<profile>/data/``).

Every source becomes records ``{id, question, solution (str | None), answer, source, group}`` with
``answer`` canonical (:func:`atlas_lib.data.answers.normalize_reference`). ``group`` ties problems that must
stay on one side of the split: the reasoning-gym template a problem was generated from
(``gsm_symbolic``) or its id; MetaMathQA's ``original_question``; a ``group`` column for local files.

The split is seeded and by group, in three parts. Groups are shuffled; the test split (``eval``,
the reported numbers) takes ``data.eval_per_group`` problems (default one) from each of the first
groups until it holds ``data.eval_limit``; the validation split (``val``: the eval points during
training: the curves) does the same with the next groups up to ``data.val_limit``;
train gets every other group, minus any question whose text also appears in val or test, capped at
``data.train_limit``. The rest of a held-out group is dropped, never moved to train. A question
text is held out once: a problem whose text (case and whitespace aside) is already in val or test
is passed over, since generators repeat questions under new ids. One problem per group, each a
distinct question, keeps held-out problems independent (problems from one template or one
original question are not, nor are copies of one question), which the paired tests and intervals
assume. GSM8K keeps its official split
(val and test from ``test``, train from ``train``). :class:`Prepared` holds plain lists of record
dicts (JSON-ready; ``datasets.Dataset.from_list`` turns them into a dataset).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import pandas as pd

from atlas_lib.core.config import Params
from atlas_lib.core.files import atomic_write_json, atomic_write_text
from atlas_lib.core.paths import data_file, relative_to_root, runs_root
from atlas_lib.core.rundir import move_aside
from atlas_lib.core.sections import PromptConfig
from atlas_lib.data.answers import normalize_reference
from atlas_lib.data.prompts import build_messages, format_solution
from atlas_lib.data.sources import DataError, load_source

log = logging.getLogger(__name__)
# 2: a validation split (val.jsonl) and one test problem per group; 3: held-out question texts are
# distinct. A new version makes load_prepared refuse an older split, so it is prepared again (and the
# stages fingerprinted on its content follow) rather than silently reused.
SCHEMA_VERSION = 3
BAD_CLASSES = ("missing_question", "missing_answer", "bad_answer", "duplicate_id")
__all__ = ["DataError", "Prepared", "prepare", "load_prepared", "split_by_group", "distill_view", "grpo_view",
           "summary_frame", "length_stats"]


@dataclass
class Prepared:
    """A prepared split: ``train``/``val``/``eval`` (test) are lists of record dicts, in the order
    they are used."""

    train: list[dict]
    eval: list[dict]
    manifest: dict
    dir: Path
    val: list[dict] = field(default_factory=list)


def _normalize(rows: list[dict], source: str) -> tuple[list[dict], dict[str, list[str]]]:
    """Records in the common schema, and the ids of bad rows per problem class."""
    bad: dict[str, list[str]] = {c: [] for c in BAD_CLASSES}
    seen: set[str] = set()
    out = []
    for i, r in enumerate(rows):
        rid = str(r["id"]) if r.get("id") not in (None, "") else f"row-{i}"
        question = r.get("question").strip() if isinstance(r.get("question"), str) else ""
        answer = r.get("answer")
        problem = None
        if not question:
            problem = "missing_question"
        elif answer is None or not str(answer).strip():
            problem = "missing_answer"
        elif rid in seen:
            problem = "duplicate_id"
        else:
            try:
                answer = normalize_reference(str(answer))
            except ValueError:
                problem = "bad_answer"
        if problem:
            bad[problem].append(rid)
            continue
        seen.add(rid)
        group = r.get("group")
        solution = r.get("solution")
        out.append({"id": rid, "question": question, "answer": answer, "source": r.get("source") or source,
                    "solution": solution.strip() if isinstance(solution, str) and solution.strip() else None,
                    "group": str(group) if group not in (None, "") else rid})
    return out, bad


def _report_bad(bad: dict[str, list[str]], mode: str) -> dict[str, int]:
    counts = {k: len(v) for k, v in bad.items() if v}
    lines = [f"{k}: {len(v)} (e.g. ids {', '.join(v[:5])})" for k, v in bad.items() if v]
    if lines and mode == "fail":
        raise DataError(f"{sum(counts.values())} bad rows and data.on_bad_rows = 'fail': {'; '.join(lines)}. "
                        "Fix those rows or set data.on_bad_rows: drop")
    for line in lines:
        log.warning("dropped bad rows, %s", line)
    return counts


# -- split --------------------------------------------------------------------------------------
def _qkey(question: str) -> str:
    return " ".join(question.lower().split())


def split_by_group(records: list[dict], seed: int, eval_limit: int, val_limit: int = 0,
                   per_group: int = 1) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, val, eval): in seeded group order, eval then val take ``per_group`` problems from
    each group until full; every other group is train. The rest of a held-out group is dropped.

    Held-out problems are distinct: a problem whose question text (case and whitespace aside) is
    already held out is passed over, so no question appears twice in val and test together (a
    generator can produce ``Calculate -8 + 8.`` under several ids, hence several groups); a group
    left with no new question goes to train, where :func:`_finish` drops the held-out texts."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    order = sorted(groups)
    rng = random.Random(seed)
    rng.shuffle(order)
    train, val, eval_ = [], [], []
    held: set[str] = set()  # question texts already held out: no text is held out twice
    for g in order:
        members = sorted(groups[g], key=lambda r: r["id"])
        rng.shuffle(members)
        part = eval_ if len(eval_) < eval_limit else val if len(val) < val_limit else None
        fresh = []
        for r in members if part is not None else ():
            if len(fresh) < per_group and _qkey(r["question"]) not in held:
                held.add(_qkey(r["question"]))
                fresh.append(r)
        if fresh:
            part.extend(fresh)
        else:  # a train group, or one whose every question is already held out (_finish drops those texts)
            train.extend(groups[g])
    for part in (eval_, val, train):
        rng.shuffle(part)
    return train, val[:val_limit], eval_[:eval_limit]


def _finish(train: list[dict], held_out: list[dict], train_limit: int) -> tuple[list[dict], dict]:
    """Drop train questions that also appear in val or test, cap train, and report the overlap."""
    eval_q = {_qkey(r["question"]) for r in held_out}
    dupes = [r["id"] for r in train if _qkey(r["question"]) in eval_q]
    if dupes:
        log.warning("removed %d train problems whose question text is also held out (e.g. ids %s)",
                    len(dupes), ", ".join(dupes[:5]))
    train = [r for r in train if _qkey(r["question"]) not in eval_q][:train_limit]
    eval_groups = {r["group"] for r in held_out}
    overlap = {"groups": len({r["group"] for r in train} & eval_groups),
               "questions": sum(_qkey(r["question"]) in eval_q for r in train),
               "removed_from_train": len(dupes), "removed_examples": dupes[:5],
               "held_out_repeats": len(held_out) - len(eval_q)}  # 0: every held-out question is distinct
    return train, overlap


def _data_hash(params: Params) -> str:
    """What the prepared files depend on (not models/evaluation, which share the data stage hash)."""
    d = params.to_dict()["data"] | {"seed": params.run.seed}
    if params.data.source == "local":
        d["file_sha256"] = hashlib.sha256(data_file(params).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def data_dir(params: Params) -> Path:
    return runs_root() / params.name / "data"


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)


def _more_problems(params: Params, usable: int, bad: dict[str, int], groups: int | None = None) -> str:
    """What to change when the source leaves too few problems, for the source the params name."""
    d = params.data
    dropped = f" ({', '.join(f'{k}: {n}' for k, n in bad.items())} rows dropped)" if bad else ""
    if d.source == "local" and not usable:
        return (f"no row of data.path {d.path!r} has a usable question and answer{dropped}: check its columns "
                "(data.columns maps yours onto question, answer, solution, id, group) and its answer values")
    if groups is not None and usable and groups < 3:  # the cause is the grouping, not the number of problems
        return (f"every usable row is in {'one group' if groups == 1 else f'{groups} groups'}: the split is by "
                "group (a group stays on one side), so train, validation and test need at least 3 groups. Give "
                "the rows their own groups (the column data.columns.group names, or none: each row its own group)"
                f"{dropped}")
    more = {"reasoning_gym": "raise data.size", "local": f"add problems to data.path {d.path!r}"}.get(
        d.source, "use a larger source")
    return f"lower the limits or {more}{dropped}"


def prepare(params: Params) -> Prepared:
    """Load the source, drop or refuse bad rows, split by group, write train/eval/manifest."""
    d, seed = params.data, params.run.seed
    pools = load_source(params)
    if not any(pools):
        raise DataError(f"data.source = {d.source!r} produced no rows")
    normalized, bad = _normalize([r for pool in pools for r in pool], d.source)
    counts_bad = _report_bad(bad, d.on_bad_rows)
    if len(pools) == 2:  # an official split (GSM8K): val and test from test, train from train
        ids = {r["id"] for r in pools[0]}
        rng = random.Random(seed)
        train = [r for r in normalized if r["id"] in ids]
        held = [r for r in normalized if r["id"] not in ids]
        rng.shuffle(train)
        _, val, eval_ = split_by_group(held, seed, d.eval_limit, d.val_limit, d.eval_per_group)
    else:
        train, val, eval_ = split_by_group(normalized, seed, d.eval_limit, d.val_limit, d.eval_per_group)
    train, overlap = _finish(train, eval_ + val, d.train_limit)
    if not train or not eval_ or not val:
        raise DataError(f"{len(normalized)} usable problems in {len({r['group'] for r in normalized})} groups leave "
                        f"{len(train)} for training, {len(val)} for validation and {len(eval_)} for test "
                        f"(data.eval_limit = {d.eval_limit}, data.val_limit = {d.val_limit}, "
                        f"data.eval_per_group = {d.eval_per_group}); {_more_problems(params, len(normalized), counts_bad, len({r['group'] for r in normalized}))}")
    for name, got, want in (("test", len(eval_), d.eval_limit), ("validation", len(val), d.val_limit)):
        if got < want:
            log.warning("the %s split holds %d problems, fewer than the %d asked: the source has too few "
                        "groups for %d per group", name, got, want, d.eval_per_group)
    out = data_dir(params)
    texts = {"train.jsonl": _jsonl(train), "val.jsonl": _jsonl(val), "eval.jsonl": _jsonl(eval_)}
    sha = {n: hashlib.sha256(t.encode()).hexdigest() for n, t in texts.items()}
    old = out / "manifest.json"
    if old.exists() and (json.loads(old.read_text()).get("sha256") or {}) != sha:
        # another split: the old one and the baselines evaluated on it go aside, never overwritten in place
        for stale in (out, out.parent / "baseline"):
            if stale.exists():
                move_aside(stale, out.parent)
    for name, text in texts.items():
        atomic_write_text(out / name, text)
    manifest = {
        "schema_version": SCHEMA_VERSION, "source": d.source, "task": d.task if d.source == "reasoning_gym" else None,
        "path": relative_to_root(data_file(params)) if d.path else None, "seed": seed,
        "counts": {"raw": sum(map(len, pools)), "usable": len(normalized), "train": len(train), "val": len(val),
                   "eval": len(eval_), "train_groups": len({r["group"] for r in train}),
                   "val_groups": len({r["group"] for r in val}), "eval_groups": len({r["group"] for r in eval_})},
        "bad_rows": counts_bad, "on_bad_rows": d.on_bad_rows, "overlap": overlap,
        "sha256": sha,
        "params_hash": params.stage_hash("data"), "data_hash": _data_hash(params),
    }
    atomic_write_json(out / "manifest.json", manifest)
    log.info("prepared %d train / %d validation / %d test problems in %s", len(train), len(val), len(eval_),
             relative_to_root(out))
    return Prepared(train=train, eval=eval_, manifest=manifest, dir=out, val=val)


def load_prepared(params: Params) -> Prepared:
    """The split :func:`prepare` wrote for this profile; refuses missing, stale or altered files."""
    out = data_dir(params)
    how = f"run notebook 01_data.ipynb or `atlas data --params {params.source_path or params.name}`"
    if not (out / "manifest.json").exists():
        raise DataError(f"no prepared data for profile {params.name!r} in {relative_to_root(out)}; {how} first")
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"the data in {relative_to_root(out)} was prepared by an older version of the kit's split "
                        f"(schema {manifest.get('schema_version')}, now {SCHEMA_VERSION}: held-out questions are "
                        f"distinct); {how} again")
    if manifest.get("data_hash") != _data_hash(params):
        raise DataError(f"the data in {relative_to_root(out)} was prepared with other data parameters "
                        f"(data.* or run.seed changed); {how} again")
    parts = {}
    for name in ("train.jsonl", "val.jsonl", "eval.jsonl"):
        raw = (out / name).read_bytes() if (out / name).exists() else b""
        if hashlib.sha256(raw).hexdigest() != manifest["sha256"].get(name):
            raise DataError(f"{relative_to_root(out / name)} is missing or changed since it was prepared; {how} again")
        parts[name] = [json.loads(line) for line in raw.decode().split("\n") if line.strip()]
    return Prepared(train=parts["train.jsonl"], eval=parts["eval.jsonl"], manifest=manifest, dir=out,
                    val=parts["val.jsonl"])


# -- views for the trainers and notebook 01 -----------------------------------------------------
def distill_view(records: list[dict], prompt_cfg: PromptConfig) -> list[dict]:
    """``{"messages"}`` rows for TRL GKD: the prompt, then the reference solution ending
    ``Final Answer: X`` (just that line for records without a solution)."""
    return [{"messages": build_messages(r["question"], prompt_cfg)
             + [{"role": "assistant", "content": format_solution(r.get("solution"), r["answer"])}]}
            for r in records]


def grpo_view(records: list[dict], prompt_cfg: PromptConfig) -> list[dict]:
    """``{"prompt", "answer"}`` rows for TRL GRPO (the answer reaches the reward function)."""
    return [{"prompt": build_messages(r["question"], prompt_cfg), "answer": r["answer"]}
            for r in records]


def summary_frame(prepared: Prepared):
    """One row per split: problems, groups, problems with a worked solution."""
    rows = [{"split": name, "problems": len(recs), "groups": len({r["group"] for r in recs}),
             "with_solution": sum(r.get("solution") is not None for r in recs)}
            for name, recs in (("train", prepared.train), ("val", prepared.val), ("test", prepared.eval))]
    return pd.DataFrame(rows).set_index("split")


def length_stats(prepared: Prepared):
    """Per problem: split, question length in words, answer value and its magnitude (log10 |x|)."""
    rows = []
    for name, recs in (("train", prepared.train), ("val", prepared.val), ("test", prepared.eval)):
        for r in recs:
            value = float(Fraction(r["answer"]))
            rows.append({"split": name, "question_words": len(r["question"].split()), "answer": value,
                         "answer_log10_abs": math.log10(abs(value)) if value else 0.0})
    return pd.DataFrame(rows)
