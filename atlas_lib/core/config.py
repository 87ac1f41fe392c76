"""Typed, validated parameters: YAML in ``params/`` -> :class:`Params` -> runners.

The sections are dataclasses (:mod:`atlas_lib.core.sections`) whose fields carry a doc string and
their allowed range; the training methods' sections come from the registry
(:mod:`atlas_lib.core.registry`). :func:`load` reads a YAML file, deep-merges overrides (papermill
``-f`` sections and ``-p name value`` flat overrides), rejects unknown keys, checks types, ranges
and cross-field rules, and only then returns. Nothing here loads a model or touches the disk beyond
reading the params file, so bad parameters fail before anything expensive happens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from atlas_lib.core import paths, registry, validate, versions
from atlas_lib.core.paths import data_file, resolve_params_path
from atlas_lib.core.sections import CONTROL_NAMES, RENAMED, SHARED_SECTIONS, TrainSection, field_names
from atlas_lib.core.validate import ParamsError, check_field, fld, load_yaml, unknown_key

log = logging.getLogger(__name__)
__all__ = ["ParamsError", "Params", "load", "from_dict", "build_section", "describe", "fld"]


def section_types() -> dict[str, type]:
    """Every section a params file may hold: the shared ones, then each registered method's."""
    return {**SHARED_SECTIONS, **{m.key: m.section for m in registry.methods()}}


def stages() -> tuple[str, ...]:
    """The pipeline's stages: data, each method, report."""
    return ("data", *registry.keys(), "report")


@dataclass
class Params:
    """A whole parameter set (one YAML file). Method sections are attributes too: ``params.gkd``."""

    name: str
    description: str = ""
    run: Any = None
    models: Any = None
    data: Any = None
    prompt: Any = None
    evaluation: Any = None
    tracking: Any = None
    methods: dict[str, TrainSection] = field(default_factory=dict)
    sweeps: list = field(default_factory=list)
    source_path: str | None = None  # the params file this came from (for provenance)
    base_dir: str | None = None  # where relative paths in it are read from: the params file's directory

    def __getattr__(self, item: str):
        methods = self.__dict__.get("methods") or {}
        if item in methods:
            return methods[item]
        raise AttributeError(f"Params has no section {item!r}")

    def section(self, key: str):
        return getattr(self, key)

    def enabled(self) -> list[str]:
        """Registered methods this parameter set runs, in registry order."""
        return [k for k in registry.keys() if k in self.methods and self.methods[k].enabled]

    def to_dict(self) -> dict:
        d = {"name": self.name, "description": self.description}
        d.update({k: dataclasses.asdict(getattr(self, k)) for k in SHARED_SECTIONS})
        d.update({k: dataclasses.asdict(v) for k, v in self.methods.items()})
        d["sweeps"] = json.loads(json.dumps(self.sweeps))
        return d

    def params_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def stage_hash(self, stage: str) -> str:
        """Hash of what a stage's result depends on (its section plus the shared sections, and the grader's
        version, :data:`atlas_lib.core.versions.GRADER_VERSION`)."""
        d = self.to_dict()
        if stage == "data" or not d["run"]["seeds"]:  # the split and baselines do not depend on training seeds;
            d["run"].pop("seeds", None)  # a single-seed file hashes as it did before run.seeds existed
        keep = validate.hash_neutral({k: d[k] for k in (*SHARED_SECTIONS, stage) if k in d}, stage)
        keep["grader"] = versions.GRADER_VERSION  # every stage's accuracy is graded: a new grader re-runs it on resume
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    def run_name(self, stage: str) -> str:
        """``<profile>/<stage>``, or the section's ``run_name``. A method that shares its notebook with one
        named by hand goes along: ``<that run_name>-<stage>`` (papermill ``-p run_name x`` on notebook 02
        names the off-policy arm ``x-off_policy`` too, as its sweep variants ``x-sweep-<name>``, instead of
        running into the profile's finished ``off_policy``)."""
        custom = getattr(self.methods.get(stage), "run_name", None)
        if custom:
            return custom
        lead = registry.notebook_lead(stage)
        named = getattr(self.methods.get(lead), "run_name", None) if lead else None
        return f"{named}-{stage}" if named else f"{self.name}/{stage}"


def _renamed(section: str, key: str, fields: list[str]) -> ParamsError | None:
    return ParamsError(f"{section}.{key} was renamed {section}.{RENAMED[key]} (tokens sampled per training completion; "
                       "evaluation.max_new_tokens is the evaluation's budget)") if RENAMED.get(key) in fields else None


def build_section(name: str, values: dict | None) -> Any:
    """Validate one section's dict into its dataclass (unknown keys rejected)."""
    cls = section_types()[name]
    values = values or {}
    if not isinstance(values, dict):
        raise ParamsError(f"section {name!r} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise (validate.secret_field(name, key) or _renamed(name, key, list(fields))
                   or unknown_key(name, key, list(fields)))
        out[key] = check_field(name, fields[key], value, hints[key])
    return cls(**out)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("columns", "task_config"):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _check_sweeps(raw: dict) -> list:
    sweeps = raw.get("sweeps") or []
    if not isinstance(sweeps, list):
        raise ParamsError("sweeps: expected a list of {name: ..., label: ..., gkd: {...}} variants")
    for i, s in enumerate(sweeps):
        if not isinstance(s, dict) or "name" not in s:
            raise ParamsError(f"sweeps[{i}]: each variant needs a 'name' and section overrides")
        paths.contained(str(s["name"]), f"sweeps[{i}].name", what="sweep name (its runs' folder is sweep-<name>)")
        swept = [k for k in s if k in registry.keys()]
        if len(swept) != 1:
            raise ParamsError(f"sweeps[{i}] ({s['name']}): override exactly one method's section (one of "
                              f"{', '.join(registry.keys())}); found {swept or 'none'}")
        for k, v in s.items():
            if k in ("name", "label"):
                continue
            if k not in section_types():
                raise unknown_key(f"sweeps[{i}]", k, ["name", "label", *section_types()])
            build_section(k, _deep_merge(raw.get(k) or {}, v))  # validate the variant too
    return sweeps


def from_dict(raw: dict, source_path: str | None = None, base_dir: str | None = None) -> Params:
    """Validate a whole parameter-set dict. Without ``name``, the profile is the file's stem."""
    if not isinstance(raw, dict):
        raise ParamsError("a params file must be a YAML mapping of sections")
    validate.refuse_secrets(raw)  # first: no later message may echo the key
    top_known = ["name", "description", *section_types(), "sweeps"]
    for key in raw:
        if key not in top_known:
            raise unknown_key("", key, top_known)
    name = raw.get("name") or (Path(source_path).stem if source_path and source_path != "papermill -f" else None)
    paths.contained(name, "name")  # a name, not a path: `name: ..` would write over the project itself
    sweeps = _check_sweeps(raw)
    shared = {k: build_section(k, raw.get(k)) for k in SHARED_SECTIONS}
    methods = {m.key: build_section(m.key, raw.get(m.key)) for m in registry.methods()}
    params = Params(name=name, description=str(raw.get("description", "")), sweeps=sweeps,
                    source_path=source_path, methods=methods, **shared,
                    base_dir=str(base_dir or paths.base_dir_of(source_path)))
    paths.resolve_model_dirs(params)  # local model directories, like data.path, relative to the params file
    paths.check_run_names(params, list(methods))  # every run folder a method may write, before anything loads
    e, d = params.evaluation, params.data
    if e.limit > d.eval_limit:
        raise ParamsError(f"evaluation.limit = {e.limit}: must be <= data.eval_limit = {d.eval_limit}")
    if e.during_training_limit > d.val_limit:
        raise ParamsError(f"evaluation.during_training_limit = {e.during_training_limit}: must be "
                          f"<= data.val_limit = {d.val_limit} (eval points use the validation split)")
    if e.kl_seeds and not e.reverse_kl and len(params.run.seeds) > 1:  # a seed variant turns reverse_kl off itself
        raise ParamsError(f"evaluation.kl_seeds = {e.kl_seeds}: needs evaluation.reverse_kl: true (set kl_seeds: 0 "
                          "or turn reverse_kl on)")
    validate.check_runs_fields(params.run.seeds, e.comparisons, registry.keys(), e.controls, CONTROL_NAMES)
    for key, section in methods.items():  # a disabled method may still be run by hand (atlas train <key>)
        section.check(key, e.max_new_tokens)
    if d.source == "local" and not d.path:
        raise ParamsError("data.path: required when data.source = 'local' (a .jsonl/.json/.parquet/.csv file)")
    if d.source == "local" and not data_file(params).exists():
        raise ParamsError(f"data.path = {d.path!r}: file does not exist{paths.relative_hint(d.path, params.base_dir)}")
    return params


def read_yaml(path: str | Path) -> dict:
    p = resolve_params_path(path)
    try:
        raw = load_yaml(p.read_text()) or {}
    except ParamsError as e:
        raise ParamsError(f"{p.name}: {e}") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{p.name}: not valid YAML: {e}") from e
    return raw


def resolve_flat(stage: str | None, key: str) -> tuple[str, str]:
    """Map a flat override name (``max_steps``) or dotted one (``gkd.max_steps``) to a section."""
    types_ = section_types()
    if "." in key:
        section, name = key.split(".", 1)
        if section not in types_:
            raise unknown_key("", section, list(types_))
        if name not in field_names(types_[section]):
            known = field_names(types_[section])
            raise validate.secret_field(section, name) or _renamed(section, name, known) or unknown_key(section, name, known)
        return section, name
    if stage in registry.keys() and RENAMED.get(key) in field_names(types_[stage]):
        raise ParamsError(f"{key!r} is ambiguous since the rename: {stage}.{RENAMED[key]} (tokens sampled per training "
                          f"completion) or evaluation.{key} (the evaluation's budget)? Name the section")
    order = ([stage] if stage in types_ else []) + [s for s in SHARED_SECTIONS if s != stage]
    for section in order:
        if key in field_names(types_[section]):
            return section, key
    known = sorted({n for s in order for n in field_names(types_[s])})
    raise unknown_key(stage or "", key, known)


def load(params: str | Path | dict = "params/embedded.yaml", stage: str | None = None,
         sections: dict | None = None, overrides: dict | None = None, **flat: Any) -> Params:
    """Load and validate a parameter set.

    ``params``: a YAML path or profile name (or an already-read dict). ``sections``: whole-section
    overrides, e.g. what ``papermill -f file.yaml`` injects (if it carries ``name``, it *is* the
    parameter set). ``overrides``: ``{"gkd.max_steps": 8}``. ``flat``: ``max_steps=8`` resolved
    against ``stage`` first, then the shared sections; ``None`` values mean "keep the file's".
    """
    sections = {k: v for k, v in (sections or {}).items() if v is not None}
    if "name" in sections:
        raw, source = dict(sections), "papermill -f"
    else:
        raw = dict(params) if isinstance(params, dict) else read_yaml(params)
        source = None if isinstance(params, dict) else str(params)
        raw = _deep_merge(raw, sections)
    updates = {**(overrides or {}), **{k: v for k, v in flat.items() if v is not None}}
    for key, value in updates.items():
        if key in ("name", "description"):  # the two top-level fields
            raw[key] = value
            continue
        section, name = resolve_flat(stage, key)
        if (section, name) == ("data", "path") and isinstance(value, str) and not Path(value).expanduser().is_absolute():
            value = str(Path.cwd() / Path(value).expanduser())  # typed on a command line: where it ran
        raw.setdefault(section, {})
        raw[section] = {**(raw.get(section) or {}), name: value}
    return from_dict(raw, source_path=source)


def sweep_method(sweep: dict) -> str:
    """The method a sweep variant varies: the one method section it overrides."""
    return next(k for k in sweep if k in registry.keys())


def sweep_variants(params: Params, method: str | None = None) -> list[tuple[str, Params]]:
    """Each sweep variant (of ``method``, or all) as a full Params; its runs go to <profile>/sweep-<name>
    (or <run_name>-sweep-<name> when the method's run is named by hand)."""
    base = params.to_dict()
    out = []
    for s in params.sweeps:
        key = sweep_method(s)
        if method is not None and key != method:
            continue
        raw = dict(base)
        raw["run"] = {**base["run"], "seeds": base["run"]["seeds"][:1]}  # a sweep variant runs at the first seed
        for k, v in s.items():
            if k not in ("name", "label"):
                raw[k] = _deep_merge(base.get(k) or {}, v)
        custom = params.section(key).run_name  # a run named by hand takes its variants along: <run_name>-sweep-<name>
        raw[key] = {**raw[key], "run_name": f"{custom}-sweep-{s['name']}" if custom else f"{params.name}/sweep-{s['name']}"}
        out.append((str(s["name"]), from_dict(raw, params.source_path, params.base_dir)))
    return out


def sweep_label(params: Params, name: str) -> str:
    """A sweep variant's row label: its own ``label``, else "<method name> variant <name>"."""
    for s in params.sweeps:
        if str(s.get("name")) == name:
            return str(s.get("label") or f"{registry.get(sweep_method(s)).name} variant {name}")
    return f"variant {name}"


def section_fields(section: str) -> list[tuple[str, Any, dict]]:
    """``(name, default, metadata)`` of each field of a section, in declaration order."""
    return [(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory(), f.metadata)
            for f in dataclasses.fields(section_types()[section])]


def describe(section: str) -> str:
    """A Markdown table of a section's fields (docs are generated from the code, never copied)."""
    rows = ["| field | default | allowed | meaning |", "|---|---|---|---|"]
    for name, default, m in section_fields(section):
        allowed = ", ".join(map(str, m["choices"])) if m.get("choices") else " ".join(
            f"{op}{m[k]}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<=")) if m.get(k) is not None)
        rows.append(f"| `{name}` | `{default}` | {allowed} | {m.get('doc', '')} |")
    return "\n".join(rows)
