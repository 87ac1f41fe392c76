"""Problem sources -> raw rows ``{id, question, solution, answer, group?, source?}``.

One loader per ``data.source``: reasoning-gym (offline, generated), GSM8K and MetaMathQA (Hugging Face
hub, via ``datasets.load_dataset``) and local files. Answers here are still raw text; checking and
canonicalising them (and counting bad rows) is :mod:`atlas_lib.data.splits`'s job.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from atlas_lib.core.config import Params, ParamsError
from atlas_lib.core.errors import KitMessage
from atlas_lib.core.paths import data_file
from atlas_lib.core.sections import DataConfig
from atlas_lib.data.answer_text import final_marker_text

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_COLUMN_KEYS = ("question", "solution", "answer", "id", "group")
_MATH_TASKS = ("gsm_symbolic", "basic_arithmetic", "chain_sum", "decimal_arithmetic")


class DataError(KitMessage, ValueError):
    """The data cannot be prepared or loaded as asked; the message says what to change."""


# -- sources ------------------------------------------------------------------------------------
def hub_dataset(name: str, config: str | None, split: str):
    """A split of a Hugging Face hub dataset (needs internet on first use; cached by ``datasets``)."""
    import datasets

    return datasets.load_dataset(name, config, split=split)


def _check_utf8(p: Path, shown: str) -> None:
    """Text files must be UTF-8: name the first line that is not, instead of a decoder traceback."""
    with p.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"data.path = {shown!r}: line {n} is not UTF-8 (byte 0x{line[e.start]:02x} at column "
                                f"{e.start + 1}); save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in > out`") from None


def _check_jsonl(p: Path, shown: str) -> None:
    """Every line of a .jsonl file one JSON object: the first that is not is named by its line number in the
    file (as an editor shows it) with the parser's reason, before ``datasets`` reads it (whose error counts
    rows from 0 and comes after its own ERROR log lines)."""
    import json

    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"data.path = {shown!r}: line {n} is not valid JSON ({e.msg} at column {e.colno}); "
                                "fix that line (one JSON object per line)") from None
            if not isinstance(row, dict):
                raise DataError(f"data.path = {shown!r}: line {n} is a JSON {type(row).__name__}, not an object "
                                "({\"question\": ..., \"answer\": ...}); fix that line") from None


def load_file(path: str | Path):
    """A local .jsonl/.json/.parquet/.csv file as a ``datasets.Dataset`` (clear error when empty)."""
    import datasets

    p = Path(path).expanduser()
    builder = _BUILDERS.get(p.suffix.lower())
    if builder is None:
        raise DataError(f"data.path = {str(path)!r}: unsupported file type {p.suffix!r}; use one of "
                        f"{', '.join(_BUILDERS)}")
    if not p.is_file():
        raise DataError(f"data.path = {str(path)!r}: file does not exist")
    if p.stat().st_size == 0 or (builder != "parquet" and not p.read_text(errors="ignore").strip()):
        raise DataError(f"data.path = {str(path)!r}: the file is empty; it needs one problem per row")
    if builder != "parquet":
        _check_utf8(p, str(path))
    if p.suffix.lower() == ".jsonl":
        _check_jsonl(p, str(path))
    try:
        ds = datasets.load_dataset(builder, data_files=str(p), split="train")
    except Exception as e:  # datasets wraps parser errors in DatasetGenerationError
        raise DataError(f"data.path = {str(path)!r}: cannot read it as {builder} ({e.__cause__ or e})") from e
    if len(ds) == 0:
        raise DataError(f"data.path = {str(path)!r}: the file has no rows")
    return ds


def _worked(text) -> tuple[str | None, str | None]:
    """(solution, answer) from a worked solution ending in ``#### X`` / ``The answer is: X``."""
    text = text if isinstance(text, str) else None
    return text, final_marker_text(text) if text else None


def reasoning_gym_rows(data: DataConfig, seed: int) -> list[dict]:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if data.task not in DATASETS:
        hint = difflib.get_close_matches(data.task, list(DATASETS), n=3)
        did = f"did you mean {', '.join(hint)}? " if hint else ""
        raise ParamsError(f"data.task = {data.task!r} is not a reasoning-gym task; {did}numeric math tasks "
                          f"include {', '.join(_MATH_TASKS)} ({len(DATASETS)} tasks registered)")
    reserved = {"seed", "size"} & set(data.task_config)
    if reserved:
        raise ParamsError(f"data.task_config: {', '.join(sorted(reserved))} come from run.seed / data.size; remove them")
    try:
        ds = reasoning_gym.create_dataset(data.task, seed=seed, size=data.size, **data.task_config)
    except (TypeError, ValueError, AssertionError) as e:
        raise ParamsError(f"data.task_config = {data.task_config!r} is not valid for reasoning-gym task "
                          f"{data.task!r}: {e}") from e
    templates = getattr(ds, "task_indices", None)  # gsm_symbolic: the GSM8K template per item
    rows = []
    for i in range(len(ds)):
        item = ds[i]
        rid = f"{data.task}-{i}"
        group = f"{data.task}-template-{templates[i]}" if templates is not None else rid
        rows.append({"id": rid, "question": item.get("question"), "answer": item.get("answer"), "group": group,
                     "solution": (item.get("metadata") or {}).get("answer_cot")})
    return rows


def gsm8k_rows(ds, split: str) -> list[dict]:
    """Rows of GSM8K (``question``, ``answer`` = worked solution ending ``#### X``)."""
    rows = []
    for i, r in enumerate(ds):
        sol, ans = _worked(r.get("answer"))
        rows.append({"id": f"gsm8k-{split}-{i}", "question": r.get("question"), "solution": sol, "answer": ans})
    return rows


def metamathqa_rows(ds) -> list[dict]:
    """Rows of MetaMathQA (``query``, ``response`` ending ``The answer is: X``, ``type``,
    ``original_question`` -> group, so rephrasings of one problem share a side of the split)."""
    rows = []
    for i, r in enumerate(ds):
        sol, ans = _worked(r.get("response"))
        rows.append({"id": f"metamathqa-{i}", "question": r.get("query"), "solution": sol, "answer": ans,
                     "group": r.get("original_question") or None,
                     "source": f"metamathqa/{r['type']}" if r.get("type") else "metamathqa"})
    return rows


def local_rows(data: DataConfig, path: str | Path | None = None) -> list[dict]:
    """Rows of ``data.path`` (``path``: that file resolved, :func:`atlas_lib.core.config.data_file`) through
    ``data.columns``; an answer holding a worked solution (``... #### 72``) or a missing answer column is
    read from the solution's final-answer line."""
    unknown = set(data.columns) - set(_COLUMN_KEYS)
    if unknown:
        raise ParamsError(f"data.columns: unknown key(s) {sorted(unknown)}; allowed: {', '.join(_COLUMN_KEYS)}")
    ds = load_file(path or data.path)
    cols = {k: data.columns.get(k, k) for k in _COLUMN_KEYS}
    missing = [f"{k} -> {c!r}" for k, c in cols.items() if k in data.columns and c not in ds.column_names]
    if missing or cols["question"] not in ds.column_names:
        raise ParamsError(f"data.columns: {', '.join(missing) or 'question'} not found in {Path(data.path).name} "
                          f"(its columns: {', '.join(ds.column_names)})")
    if cols["answer"] not in ds.column_names and cols["solution"] not in ds.column_names:
        raise ParamsError(f"data.columns: {Path(data.path).name} has neither an answer nor a solution column "
                          f"(its columns: {', '.join(ds.column_names)}); map one with data.columns")
    rows = []
    for r in ds:
        row = {k: r.get(c) for k, c in cols.items()}
        sol, ans = row["solution"], row["answer"]
        if isinstance(ans, str) and final_marker_text(ans) is not None:
            sol, ans = (sol or ans), final_marker_text(ans)
        elif ans is None and isinstance(sol, str):
            ans = final_marker_text(sol)
        rows.append({**row, "solution": sol, "answer": ans})
    return rows


def load_source(params: Params) -> list[list[dict]]:
    """Raw rows of ``params.data.source``: one pool, or ``[train, test]`` for an official split."""
    d = params.data
    if d.source == "reasoning_gym":
        return [reasoning_gym_rows(d, params.run.seed)]
    if d.source == "gsm8k":
        return [gsm8k_rows(hub_dataset("openai/gsm8k", "main", s), s) for s in ("train", "test")]
    if d.source == "metamathqa":
        return [metamathqa_rows(hub_dataset("meta-math/MetaMathQA", None, "train"))]
    return [local_rows(d, data_file(params))]
