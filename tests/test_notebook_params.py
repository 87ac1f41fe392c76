"""The notebooks' parameters cells and method leads come from one source (``python -m
atlas_lib.core.notebook_params --write``): a drifted cell, or a later cell rebinding an injected name,
fails here."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import shutil
import tomllib

import pytest

from atlas_lib.core import config, notebook_params, registry
from atlas_lib.core.paths import notebooks_dir, project_root

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


# --- the method leads: each method's Markdown lives in its folder, its notebook's cell is written from it ---------

LEADS = [m for m in registry.methods() if m.lead_md is not None]


def _lead_cells(notebook: str, directory=None) -> list[tuple[str, str]]:
    return [(c["metadata"].get("method"), "".join(c["source"])) for c in _cells(notebook, directory)
            if "method-lead" in c["metadata"].get("tags", [])]


def _lead_file(method: registry.Method):
    package, _, name = method.lead_md.partition(":")
    return project_root().joinpath(*package.split("."), name)


def test_every_method_with_a_notebook_has_a_lead():
    assert [m.key for m in LEADS] == registry.keys()


@pytest.mark.parametrize("method", LEADS, ids=lambda m: m.key)
def test_a_methods_lead_lives_beside_its_config(method):
    """methods/<folder>/: the package its section comes from (off_policy's is gkd's folder)."""
    assert method.lead_md.partition(":")[0] == str(method.config).partition(":")[0].rpartition(".")[0]


@pytest.mark.parametrize("method", LEADS, ids=lambda m: m.key)
def test_the_notebooks_lead_cell_is_the_methods_lead_md(method):
    cells = dict(_lead_cells(method.notebook))
    assert cells[method.key] == _lead_file(method).read_text(encoding="utf-8").rstrip("\n")


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_lead_cells_come_in_registration_order_right_after_the_title(notebook):
    cells = _cells(notebook)
    want = [m.key for m in LEADS if m.notebook == notebook]
    assert [k for k, _ in _lead_cells(notebook)] == want
    assert [c["metadata"].get("method") for c in cells[1:1 + len(want)]] == want


def test_the_lead_files_ship_in_the_wheel():
    """setuptools copies a package's non-Python files only where package-data names them."""
    data = tomllib.loads((project_root() / "pyproject.toml").read_text(encoding="utf-8"))
    globs = data["tool"]["setuptools"]["package-data"]
    for method in LEADS:
        path = _lead_file(method)
        shipped = [pkg for pkg, patterns in globs.items()
                   if path.is_relative_to(root := project_root().joinpath(*pkg.split(".")))
                   and any(fnmatch.fnmatch(str(path.relative_to(root)), p) for p in patterns)]
        assert shipped, f"{path.relative_to(project_root())} is in no [tool.setuptools.package-data] pattern"


def _leads_edited(directory, notebook, edit):
    path = directory / f"{notebook}.ipynb"
    nb = json.loads(path.read_text(encoding="utf-8"))
    nb["cells"] = edit(nb["cells"])
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _committed(directory, notebook) -> bool:
    return (directory / f"{notebook}.ipynb").read_bytes() == (notebooks_dir() / f"{notebook}.ipynb").read_bytes()


def test_a_lead_edited_in_the_notebook_is_drift_and_write_restores_it(copies):
    def edit(cells):
        cell = next(c for c in cells if c["metadata"].get("method") == "gkd")
        cell["source"] = [*cell["source"], " A sentence typed in the notebook."]
        return cells

    _leads_edited(copies, "02_gkd", edit)
    assert notebook_params.drift("02_gkd", copies) == [
        f"{copies / '02_gkd.ipynb'}: the method-lead cell of 'gkd' is not atlas_lib.methods.gkd:lead.md "
        "(edit that file, not the notebook)"]
    assert notebook_params.write("02_gkd", copies) is True
    assert _committed(copies, "02_gkd")


def test_missing_lead_cells_are_drift_and_written_after_the_title(copies):
    _leads_edited(copies, "03_grpo", lambda cells: [c for c in cells if c["metadata"].get("method") is None])
    assert notebook_params.drift("03_grpo", copies) == [
        f"{copies / '03_grpo.ipynb'}: its method-lead cells are for [], the methods it runs that have a lead are "
        "['grpo']"]
    assert notebook_params.write("03_grpo", copies) is True
    assert _committed(copies, "03_grpo")


def test_lead_cells_out_of_order_are_drift_and_write_puts_them_back(copies):
    def swap(cells):
        i = next(i for i, c in enumerate(cells) if c["metadata"].get("method") == "cross_tokenizer")
        cells[i], cells[i + 1] = cells[i + 1], cells[i]
        return cells

    _leads_edited(copies, "04_cross_tokenizer", swap)
    assert notebook_params.drift("04_cross_tokenizer", copies) == [
        f"{copies / '04_cross_tokenizer.ipynb'}: its method-lead cells are for ['gold', 'cross_tokenizer'], the "
        "methods it runs that have a lead are ['cross_tokenizer', 'gold']"]
    assert notebook_params.write("04_cross_tokenizer", copies) is True
    assert _committed(copies, "04_cross_tokenizer")


def test_a_changed_lead_md_is_drift_until_written(copies):
    gkd = registry.get("gkd")
    registry.register(dataclasses.replace(gkd, lead_md="atlas_lib.methods.gkd:lead_off_policy.md"))
    try:
        assert notebook_params.drift("02_gkd", copies) == [
            f"{copies / '02_gkd.ipynb'}: the method-lead cell of 'gkd' is not atlas_lib.methods.gkd:lead_off_policy.md "
            "(edit that file, not the notebook)"]
        assert notebook_params.write("02_gkd", copies) is True
        assert dict(_lead_cells("02_gkd", copies))["gkd"] == registry.get("off_policy").lead_text().rstrip("\n")
    finally:
        registry.register(gkd)


def test_a_new_method_in_an_existing_notebook_gets_its_lead_cell_after_the_others(copies):
    registry.register(dataclasses.replace(registry.get("grpo"), key="toy", lead_md="atlas_lib.methods.gold:lead.md"))
    try:
        assert notebook_params.write("03_grpo", copies) is True
        assert [k for k, _ in _lead_cells("03_grpo", copies)] == ["grpo", "toy"]
        assert _cells("03_grpo", copies)[2]["id"] == "lead-toy"
    finally:
        registry.unregister("toy")


def test_a_lead_file_that_is_missing_is_one_message_and_exit_2(copies, monkeypatch, caplog):
    monkeypatch.setattr(notebook_params, "notebooks_dir", lambda: copies)
    grpo = registry.get("grpo")
    registry.register(dataclasses.replace(grpo, lead_md="atlas_lib.methods.grpo:lede.md"))
    try:
        assert notebook_params.main([]) == 2
    finally:
        registry.register(grpo)
    assert "method 'grpo': its lead 'atlas_lib.methods.grpo:lede.md' cannot be read" in caplog.text
