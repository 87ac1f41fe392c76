"""Field-level validation for the typed parameter sections (types, ranges, choices, unknown keys)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from atlas_lib.core.errors import KitMessage

# Shapes of access tokens (Hugging Face, 40-hex W&B-style keys, OpenAI-style, GitHub): refused in every
# params field (:func:`refuse_secrets`), scrubbed from shared HTML.
TOKEN_LIKE = re.compile(r"\b(?:hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|[0-9a-f]{40})\b")
# Where each kind of secret belongs instead: the environment variable the library reading it looks at.
SECRET_HOMES = {"tracking": "WANDB_API_KEY", "hf_": "HF_TOKEN"}
# Fields people reach for to hold a key, per section; refused with the variable to set instead.
SECRET_FIELDS = {"tracking": {"api_key", "key", "token", "wandb_api_key", "secret"},
                 "models": {"token", "hf_token", "api_key", "use_auth_token"}}


class ParamsError(KitMessage, ValueError):
    """A parameter is unknown, of the wrong type or out of range; the message names the field."""


def fld(default: Any, doc: str, *, ge: float | None = None, le: float | None = None,
        gt: float | None = None, choices: tuple | None = None) -> Any:
    """A documented dataclass field with its allowed range."""
    meta = {"doc": doc, "ge": ge, "le": le, "gt": gt, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata=meta)
    return field(default=default, metadata=meta)


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        tp = origin
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def check_field(section: str, f: dataclasses.Field, value: Any, tp: Any) -> Any:
    where = f"{section}.{f.name}"
    if isinstance(value, str) and tp in (float, int) and not isinstance(value, bool):
        # YAML reads 2e-5 as a string; accept numeric strings for numeric fields.
        try:
            value = tp(float(value)) if tp is int and float(value).is_integer() else tp(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not _type_ok(value, tp):
        raise ParamsError(f"{where} = {value!r}: expected {_type_name(tp)} ({f.metadata.get('doc', '')})")
    m = f.metadata
    if m.get("choices") and value not in m["choices"]:
        raise ParamsError(f"{where} = {value!r}: allowed values are {', '.join(map(str, m['choices']))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, ok, text in (("ge", lambda v, b: v >= b, ">="), ("le", lambda v, b: v <= b, "<="),
                              ("gt", lambda v, b: v > b, ">")):
            bound = m.get(key)
            if bound is not None and not ok(value, bound):
                raise ParamsError(f"{where} = {value!r}: must be {text} {bound} ({m.get('doc', '')})")
    return value


def secret_home(where: str, token: str = "") -> str:
    """The environment variable a secret found at ``where`` (a field name) belongs in."""
    if token.startswith("hf_") or where.split(".")[0] == "models":
        return "HF_TOKEN"
    return "WANDB_API_KEY" if where.split(".")[0] == "tracking" or re.fullmatch(r"[0-9a-f]{40}", token) else (
        "the environment (WANDB_API_KEY for W&B, HF_TOKEN for the Hugging Face hub)")


def _names_a_path(value: str) -> bool:
    """A local path that exists (a hub snapshot directory's 40-hex name is a commit, not a key)."""
    try:
        return len(value) < 4096 and Path(value).expanduser().exists()
    except (OSError, ValueError):
        return False


def refuse_secrets(raw: Any, where: str = "") -> None:
    """Refuse a key-like string anywhere in a params dict, naming the field and the variable it belongs
    in: params are copied into config.json, summary.json, executed notebooks and W&B, so a key typed
    there would be written (and synced) everywhere. The key itself is never echoed."""
    if isinstance(raw, dict):
        for k, v in raw.items():
            refuse_secrets(v, f"{where}.{k}" if where else str(k))
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            refuse_secrets(v, f"{where}[{i}]")
    elif isinstance(raw, str):
        m = TOKEN_LIKE.search(raw)
        if m and not _names_a_path(raw):
            home = secret_home(where, m.group(0))
            where_to = home if home.startswith("the ") else f"the environment variable {home}"
            raise ParamsError(f"{where} looks like it holds an access token ({m.group(0)[:3]}...); params are copied "
                              "into run files, executed notebooks and W&B, so a secret never belongs there: remove it "
                              f"and put the key in {where_to}")


def secret_field(section: str, key: str) -> ParamsError | None:
    """A field meant to hold a key (``tracking.api_key``): refused, pointing at the variable to set."""
    if key.lower() in SECRET_FIELDS.get(section, ()):
        var = secret_home(section)
        return ParamsError(f"{section}.{key}: the kit never reads a key from params (they are written to run files "
                           f"and W&B); remove {section}.{key} and set the environment variable {var} instead")
    return None


def unknown_key(section: str, key: str, known: list[str]) -> ParamsError:
    hint = difflib.get_close_matches(key, known, n=1)
    did = f"; did you mean {hint[0]!r}?" if hint else ""
    return ParamsError(f"unknown parameter {section + '.' if section else ''}{key!r}{did} "
                       f"(known: {', '.join(known)})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys silently; a params file must not (which one applies?)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ParamsError(f"key {key!r} appears twice in one section (line {key_node.start_mark.line + 1}); "
                              "keep one")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(text: str):
    """``yaml.safe_load`` that refuses a key written twice in one mapping (YAML keeps the last silently)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def check_runs_fields(seeds: list, comparisons: list, method_keys, controls: list = (), known_controls=()) -> None:
    """``run.seeds``: distinct integers >= 0; ``evaluation.comparisons``: 'methods vs student' or 'A vs B';
    ``evaluation.controls``: names among ``known_controls``."""
    keys = list(method_keys)
    if bad := [c for c in controls if c not in known_controls]:
        raise ParamsError(f"evaluation.controls: unknown control {bad[0]!r} (known: {', '.join(known_controls)})")
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds) or len(set(seeds)) != len(seeds):
        raise ParamsError(f"run.seeds = {seeds!r}: a list of distinct integers >= 0 (e.g. [42, 43, 44]), or [] for "
                          "run.seed alone")
    for c in comparisons:
        parts = c.split(" vs ") if isinstance(c, str) else []
        if c == "methods vs student" or (len(parts) == 2 and parts[0] in keys and parts[1] in (*keys, "student")):
            continue
        raise ParamsError(f"evaluation.comparisons: {c!r} is not a comparison: use 'methods vs student' or "
                          f"'A vs B' with A, B among {', '.join(keys)} (B may be 'student')")


def hash_neutral(d: dict, stage: str) -> dict:
    """``d`` (a params dict) without what cannot change ``stage``'s result: the FLOP budget for the data
    stage, the prompt controls for training stages, ``evaluation.kl_seeds`` always, and any of them (a
    method's max_seeds too) at its default, so runs and stages from before these fields existed keep their
    hashes."""
    run, ev = d.get("run") or {}, d.get("evaluation") or {}
    if stage == "data" or not run.get("flop_budget"):
        d["run"] = {k: v for k, v in run.items() if k != "flop_budget"}
    if stage != "data" or not ev.get("controls"):
        d["evaluation"] = {k: v for k, v in ev.items() if k != "controls"}
    # evaluation.kl_seeds never enters a hash: a further seed it leaves unscored carries reverse_kl: false in its
    # own params (core/seeds.py), so changing it re-runs only the runs it changes
    d["evaluation"] = {k: v for k, v in (d.get("evaluation") or {}).items() if k != "kl_seeds"}
    if isinstance(d.get(stage), dict) and not d[stage].get("max_seeds"):
        d[stage] = {k: v for k, v in d[stage].items() if k != "max_seeds"}
    # models.teacher_prompt(_max_gap) (issue 42): nothing in the data stage reads them, and at their defaults
    # (own; 0.05) a pair whose templates render alike trains exactly as before the fields existed
    models_ = d.get("models") or {}
    neutral = {"teacher_prompt": "own", "teacher_prompt_max_gap": 0.05}
    d["models"] = {k: v for k, v in models_.items() if k not in neutral or (stage != "data" and v != neutral[k])}
    return d
