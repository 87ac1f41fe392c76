"""Parameters: YAML -> typed sections, overrides, and one clear error per bad value."""

from __future__ import annotations

import pytest
import yaml

from atlas_lib.core import config, notebook_params
from atlas_lib.core.config import ParamsError
from atlas_lib.core.paths import data_file


@pytest.mark.parametrize("profile", ["embedded", "smoke", "paper", "study"])
def test_shipped_profiles_load(profile):
    p = config.load(f"params/{profile}.yaml")
    assert p.name == profile
    assert 0 <= p.gkd.lmbda <= 1


def test_paper_profile_matches_the_seed():
    p = config.load("params/paper.yaml")
    assert (p.models.student, p.models.teacher) == ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-14B-Instruct")
    g = p.gkd
    assert (g.max_steps, g.per_device_train_batch_size, g.gradient_accumulation_steps) == (500, 2, 4)
    assert (g.learning_rate, g.lmbda, g.beta, g.temperature, g.max_completion_length) == (2e-5, 1.0, 0.5, 0.9, 256)
    r = p.grpo
    assert (r.max_steps, r.per_device_train_batch_size, r.gradient_accumulation_steps, r.learning_rate) == (
        300, 2, 32, 1e-6)
    assert r.reward_funcs == ["exact_match"]
    assert p.data.source == "metamathqa" and p.data.eval_limit == 1000 and p.data.train_limit == 2048
    assert p.cross_tokenizer.student == "meta-llama/Llama-3.2-1B-Instruct"


@pytest.mark.parametrize("override, field", [
    ({"gkd.lmbda": 1.5}, "gkd.lmbda"),
    ({"gkd.max_steps": 0}, "gkd.max_steps"),
    ({"gkd.beta": -0.1}, "gkd.beta"),
    ({"gkd.temperature": 0}, "gkd.temperature"),
    ({"grpo.num_generations": 1}, "grpo.num_generations"),
    ({"gkd.max_steps": "many"}, "gkd.max_steps"),
    ({"gkd.seq_kd": "yes"}, "gkd.seq_kd"),
    ({"run.device": "tpu"}, "run.device"),
    ({"data.source": "web"}, "data.source"),
    ({"grpo.loss_type": "ppo"}, "grpo.loss_type"),
    ({"evaluation.max_new_tokens": 0}, "evaluation.max_new_tokens"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ParamsError, match=field.replace(".", r"\.")):
        config.load("params/smoke.yaml", overrides=override)


def test_unknown_keys_are_rejected_with_a_suggestion(tmp_path):
    with pytest.raises(ParamsError, match="did you mean 'max_steps'"):
        config.load("params/smoke.yaml", overrides={"gkd.max_step": 3})
    with pytest.raises(ParamsError, match="unknown parameter 'gdk'"):
        config.from_dict({"gdk": {}})
    with pytest.raises(ParamsError, match="max_stepz"):
        config.load("params/smoke.yaml", stage="gkd", max_stepz=3)


def test_flat_overrides_resolve_to_the_stage_first():
    p = config.load("params/smoke.yaml", stage="gkd", max_steps=3, temperature=0.5, max_new_tokens=None)
    assert p.gkd.max_steps == 3 and p.gkd.temperature == 0.5
    assert p.grpo.max_steps == 2  # untouched
    q = config.load("params/smoke.yaml", stage="grpo", max_steps=5)
    assert q.grpo.max_steps == 5 and q.gkd.max_steps == 2
    r = config.load("params/smoke.yaml", stage="gkd", eval_limit=10)  # shared section
    assert r.data.eval_limit == 10


def test_papermill_f_sections_replace_the_file(tmp_path):
    raw = yaml.safe_load(open("params/smoke.yaml"))
    raw["gkd"]["max_steps"] = 9
    p = config.load("params/embedded.yaml", stage="gkd", sections=raw, max_steps=None)
    assert p.name == "smoke" and p.gkd.max_steps == 9
    partial = config.load("params/smoke.yaml", sections={"gkd": {"beta": 1.0}})
    assert partial.gkd.beta == 1.0 and partial.gkd.max_steps == 2


def test_injected_sections_pick_only_params_names():
    ns = {"gkd": {"beta": 0.1}, "np": pytest, "max_steps": 3, "name": "x", "In": [], "_i1": ""}
    assert notebook_params.injected_sections(ns, "02_gkd") == {"gkd": {"beta": 0.1}, "name": "x"}


def test_an_undeclared_notebook_parameter_is_refused_with_a_hint():
    with pytest.raises(ParamsError, match=r"'lerning_rate' \(did you mean 'learning_rate'\?\) for notebooks/02_gkd"):
        notebook_params.injected_sections({"lerning_rate": 1e-6}, "02_gkd")


def test_a_parameter_of_another_notebook_is_refused():
    with pytest.raises(ParamsError, match="'num_generations'"):
        notebook_params.injected_sections({"num_generations": 8}, "02_gkd")


def test_missing_file_and_local_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="available: .*embedded.yaml"):
        config.load("params/nope.yaml")
    with pytest.raises(ParamsError, match="data.path"):
        config.load("params/smoke.yaml", overrides={"data.source": "local"})
    with pytest.raises(ParamsError, match="does not exist"):
        config.load("params/smoke.yaml", overrides={"data.source": "local", "data.path": str(tmp_path / "x.jsonl")})


def test_eval_limit_consistency():
    with pytest.raises(ParamsError, match="evaluation.limit"):
        config.load("params/smoke.yaml", overrides={"evaluation.limit": 999})


def test_sweeps_validate_and_expand():
    p = config.load("params/smoke.yaml")
    (name, v), = config.sweep_variants(p)
    assert name == "t0.6" and v.gkd.temperature == 0.6 and v.gkd.run_name == "smoke/sweep-t0.6"
    assert v.gkd.max_steps == p.gkd.max_steps
    with pytest.raises(ParamsError, match="gkd.temperature"):
        config.from_dict({"name": "t", "sweeps": [{"name": "bad", "gkd": {"temperature": -1}}]})


def test_hashes_are_stable_and_stage_scoped():
    a, b = config.load("params/smoke.yaml"), config.load("params/smoke.yaml", overrides={"grpo.max_steps": 3})
    assert a.params_hash() == config.load("params/smoke.yaml").params_hash()
    assert a.stage_hash("gkd") == b.stage_hash("gkd") and a.stage_hash("grpo") != b.stage_hash("grpo")


def test_describe_documents_every_field():
    table = config.describe("gkd")
    for name in ("lmbda", "beta", "temperature", "max_completion_length", "seq_kd", "max_steps"):
        assert f"`{name}`" in table


def _profile_with_local_data(tmp_path, data_path: str):
    """tmp/p/mine.yaml naming tmp/p/d/good.jsonl as ``data_path``."""
    (tmp_path / "p" / "d").mkdir(parents=True)
    (tmp_path / "p" / "d" / "good.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n')
    f = tmp_path / "p" / "mine.yaml"
    f.write_text(f"name: mine\ndata: {{source: local, path: {data_path}}}\n")
    return f


def test_a_relative_data_path_is_read_relative_to_the_params_file(tmp_path, monkeypatch):
    f = _profile_with_local_data(tmp_path, "d/good.jsonl")
    monkeypatch.chdir(tmp_path)  # not where the params file is (notebooks run from the project root)
    assert data_file(config.load(f)) == tmp_path / "p" / "d" / "good.jsonl"


def test_a_relative_data_path_reads_the_same_file_from_any_directory(tmp_path, monkeypatch):
    from pathlib import Path

    f = _profile_with_local_data(tmp_path, "d/good.jsonl")
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # where atlas report runs notebooks
    assert data_file(config.load(f.resolve())).read_text().startswith('{"question"')


def test_a_path_relative_to_the_working_directory_is_told_what_to_write(tmp_path, monkeypatch):
    _profile_with_local_data(tmp_path, "p/d/good.jsonl")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match=r"relative to the params file.*write data.path: d/good.jsonl"):
        config.load("p/mine.yaml")


def test_a_relative_model_directory_is_read_relative_to_the_params_file(tmp_path, monkeypatch):
    (tmp_path / "p" / "models" / "mine").mkdir(parents=True)
    f = tmp_path / "p" / "mine.yaml"
    f.write_text("name: mine\nmodels: {student: models/mine, teacher: Qwen/Qwen2.5-7B-Instruct}\n"
                 "cross_tokenizer: {student: models/mine}\n")
    monkeypatch.chdir(tmp_path)  # atlas report runs notebooks from the project root, not beside the file
    p = config.load(f)
    assert p.models.student == str((tmp_path / "p" / "models" / "mine").resolve())
    assert p.cross_tokenizer.student == str((tmp_path / "p" / "models" / "mine").resolve())
    assert p.models.teacher == "Qwen/Qwen2.5-7B-Instruct"  # a hub id stays one


def test_a_data_path_typed_on_the_command_line_is_relative_to_where_it_ran(tmp_path, monkeypatch):
    _profile_with_local_data(tmp_path, "d/good.jsonl")
    monkeypatch.chdir(tmp_path / "p")
    p = config.load("params/smoke.yaml", overrides={"data.source": "local", "data.path": "d/good.jsonl"})
    assert data_file(p) == tmp_path / "p" / "d" / "good.jsonl"


def test_a_run_named_by_hand_takes_its_notebooks_other_arm_along():
    p = config.load("params/smoke.yaml", overrides={"gkd.run_name": "smoke/gkd-alt"})
    assert p.run_name("off_policy") == "smoke/gkd-alt-off_policy"


def test_a_run_named_by_hand_leaves_other_notebooks_runs_alone():
    p = config.load("params/smoke.yaml", overrides={"gkd.run_name": "smoke/gkd-alt"})
    assert p.run_name("grpo") == "smoke/grpo"


def test_an_arm_named_by_hand_keeps_its_own_name():
    p = config.load("params/smoke.yaml", overrides={"gkd.run_name": "a/x", "off_policy.run_name": "a/y"})
    assert p.run_name("off_policy") == "a/y"
