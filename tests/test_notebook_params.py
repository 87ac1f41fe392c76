"""The notebooks' parameters cells come from one source (``python -m atlas_lib.core.notebook_params
--write``): a drifted cell, or a later cell rebinding an injected name, fails here."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from atlas_lib.core import config, notebook_params, registry
from atlas_lib.core.paths import notebooks_dir

NOTEBOOKS = notebook_params.notebooks()


def _cells(notebook: str, directory=None) -> list[dict]:
    return json.loads(((directory or notebooks_dir()) / f"{notebook}.ipynb").read_text(encoding="utf-8"))["cells"]


def _stage(notebook: str) -> str | None:
    if notebook == notebook_params.DATA_NOTEBOOK:
        return "data"
    return next((m.key for m in registry.methods() if m.notebook == notebook), None)


def test_the_pipeline_has_five_notebooks():
    assert NOTEBOOKS == ["01_data", "02_gkd", "03_grpo", "04_cross_tokenizer", "05_comparison"]


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_committed_parameters_cell_is_the_generated_one(notebook):
    assert notebook_params.drift(notebook) == []


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_section_is_declared_in_every_notebook(notebook):
    """papermill -f injects every section of the params file, whichever notebook runs."""
    assert set(notebook_params.section_names()) <= notebook_params.declared_parameters(notebook)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_notebook_is_committed_without_outputs(notebook):
    code = [c for c in _cells(notebook) if c["cell_type"] == "code"]
    assert [c["metadata"].get("tags") for c in code[:1]] == [["parameters"]]
    assert [(c["outputs"], c["execution_count"]) for c in code] == [([], None)] * len(code)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_each_flat_parameter_is_a_field_and_reaches_config_load(notebook):
    code = "\n".join("".join(c["source"]) for c in _cells(notebook)
                     if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", []))
    for name, _, _ in notebook_params.flat_parameters(notebook):
        if name in notebook_params.NOTEBOOK_ONLY:
            assert re.search(rf"\b{name}\b", code), f"{notebook}: {name} is never read"
        else:
            config.resolve_flat(_stage(notebook), name)  # raises on a name no section has
            assert re.search(rf"\b{name}={name}\b", code), f"{notebook}: {name} is not passed to config.load"


@pytest.fixture
def copies(tmp_path):
    for nb in NOTEBOOKS:
        shutil.copy(notebooks_dir() / f"{nb}.ipynb", tmp_path)
    return tmp_path


def _edit(directory, notebook, index, source):
    path = directory / f"{notebook}.ipynb"
    nb = json.loads(path.read_text(encoding="utf-8"))
    nb["cells"][index]["source"] = source
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def test_a_hand_edited_parameters_cell_is_drift_and_write_restores_only_that_cell(copies):
    cells = _cells("04_cross_tokenizer", copies)
    i = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    source = "".join(cells[i]["source"])
    _edit(copies, "04_cross_tokenizer", i, source.replace("\ngold = None", ""))
    assert notebook_params.drift("04_cross_tokenizer", copies) == [
        f"{copies / '04_cross_tokenizer.ipynb'}: its parameters cell is not the generated one"]
    assert notebook_params.write("04_cross_tokenizer", copies) is True
    assert notebook_params.drift("04_cross_tokenizer", copies) == []
    assert (copies / "04_cross_tokenizer.ipynb").read_bytes() == (
        notebooks_dir() / "04_cross_tokenizer.ipynb").read_bytes()  # the next cell's run check kept too
    assert notebook_params.write("04_cross_tokenizer", copies) is False


def test_a_cell_rebinding_an_injected_section_is_reported(copies):
    cells = _cells("04_cross_tokenizer", copies)
    last = len(cells) - 1
    _edit(copies, "04_cross_tokenizer", last, 'gold = run_gold(cfg)["training"]\n[beta for beta in (1, 2)]')
    assert notebook_params.drift("04_cross_tokenizer", copies) == [
        f"{copies / '04_cross_tokenizer.ipynb'}: cell {last} assigns 'gold', a parameter papermill injects: "
        "rename it"]  # the comprehension's own `beta` is not a rebinding


def test_check_mode_exits_nonzero_on_drift(copies, monkeypatch):
    monkeypatch.setattr(notebook_params, "notebooks_dir", lambda: copies)
    assert notebook_params.main([]) == 0
    cells = _cells("03_grpo", copies)
    i = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    _edit(copies, "03_grpo", i, "".join(cells[i]["source"]).replace("beta = None", "beta = 0.04"))
    assert notebook_params.main([]) == 1
    assert notebook_params.main(["--write"]) == 0
    assert "beta = None  # KL coefficient" in notebook_params.parameters_source("03_grpo")


def test_a_registered_method_is_declared_everywhere_and_its_notebook_joins():
    registry.register(registry.Method("toy", registry.get("gkd").section, "x:y", "06_toy", "Toy", "Toy", "C7",
                                      "Toy loss"))
    try:
        assert notebook_params.notebooks()[-2:] == ["06_toy", "05_comparison"]
        assert notebook_params.parameters_source("01_data").endswith("\ngold = None\ntoy = None")
        assert "\nrun_name = None  # run directory under runs/\n" in notebook_params.parameters_source("06_toy")
    finally:
        registry.unregister("toy")
