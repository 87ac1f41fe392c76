"""Fault and bad-input suite: every parameter field, mismatched tokenizers, trust_remote_code."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from atlas_lib.core import config
from atlas_lib.core.config import ParamsError, section_types


def _wrong_value(tp):
    """A value of the wrong type for a field annotation."""
    if tp is bool:
        return "yes"
    if tp in (int, float):
        return "lots"
    if tp is list:
        return "not-a-list"
    if tp is dict:
        return ["not", "a", "dict"]
    return 12345  # str / str | None


FIELDS = [(s, f.name, typing.get_type_hints(cls)[f.name]) for s, cls in section_types().items()
          for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("section, name, tp", FIELDS, ids=[f"{s}.{n}" for s, n, _ in FIELDS])
def test_every_field_rejects_a_wrong_type_naming_it(section, name, tp, tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path / "runs"))
    with pytest.raises(ParamsError, match=rf"{section}\.{name}"):
        config.load("params/smoke.yaml", overrides={f"{section}.{name}": _wrong_value(tp)})
    assert not (tmp_path / "runs").exists()  # nothing created on disk


RANGED = [(s, f.name, f.metadata) for s, cls in section_types().items() for f in dataclasses.fields(cls)
          if any(f.metadata.get(k) is not None for k in ("ge", "le", "gt", "choices"))]


@pytest.mark.parametrize("section, name, meta", RANGED, ids=[f"{s}.{n}" for s, n, _ in RANGED])
def test_every_ranged_field_rejects_out_of_range(section, name, meta):
    if meta.get("choices"):
        bad = "__not_a_choice__"
    elif meta.get("ge") is not None:
        bad = meta["ge"] - 1
    elif meta.get("gt") is not None:
        bad = meta["gt"]
    else:
        bad = meta["le"] + 1
    with pytest.raises(ParamsError, match=rf"{section}\.{name}"):
        config.load("params/smoke.yaml", overrides={f"{section}.{name}": bad})


def test_same_tokenizer_gkd_with_a_foreign_teacher_points_to_notebook_04(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path / "cache"))
    from atlas_lib.training.common import TokenizerMismatchError, load_pair

    p = config.load("params/smoke.yaml", overrides={"models.teacher": "tiny-llama-cross"})
    with pytest.raises(TokenizerMismatchError, match="04_cross_tokenizer"):
        load_pair(p, require_same_tokenizer=True)


def test_trust_remote_code_is_off_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path / "cache"))
    import transformers

    from atlas_lib.core import models

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*a, **k):
        seen.append(k.get("trust_remote_code"))
        return real(*a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    models.load_model("tiny-qwen2-student", device="cpu")
    assert seen and all(v is False for v in seen)
    assert config.load("params/embedded.yaml").models.trust_remote_code is False
    assert config.load("params/paper.yaml").models.trust_remote_code is False


def test_report_cli_rejects_bad_params_before_running(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path / "runs"))
    from atlas_lib.cli import main

    assert main(["train", "gkd", "--params", "params/smoke.yaml", "--set", "gkd.lmbda=1.5"]) == 2
    assert "gkd.lmbda = 1.5" in capsys.readouterr().err
    assert main(["report", "--params", "params/missing.yaml"]) == 2
    assert not (tmp_path / "runs").exists()
