"""Behaviour unchanged: the report a tiny-model run rendered when the fixture was made is rendered again.

``tests/fixtures/tiny_report/`` holds real tiny-model run directories (the files the report reads) and
what the code rendered from them then: ``table.json``, the findings and their read-back check. A
refactor of collect, the table, the findings or the registry must reproduce them; an intended change
rewrites them on purpose (``.venv/bin/python tests/fixtures/tiny_report/regen.py``, then review the
diff of ``expected/``). No model is loaded: a second or two."""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import shutil

import pytest

from atlas_lib.core.paths import project_root

FIXTURE = project_root() / "tests" / "fixtures" / "tiny_report"
REGEN = "tests/fixtures/tiny_report/regen.py"
REL_TOL, ABS_TOL = 1e-9, 1e-12  # JSON keeps ten significant digits; a changed formula moves far more


def _regen():
    spec = importlib.util.spec_from_file_location("tiny_report_regen", FIXTURE / "regen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    runs = tmp_path_factory.mktemp("tiny_report") / "runs"
    shutil.copytree(FIXTURE / "run_dirs", runs)  # collect reads only; a copy keeps the fixture untouched anyway
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATLAS_RUNS", str(runs))
        return _regen().render(runs)


def _expected(name: str) -> str:
    return (FIXTURE / "expected" / name).read_text(encoding="utf-8")


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return a == b and type(a) is type(b)


def table_differences(expected: dict, got: dict) -> list[str]:
    """Row by row, column by column: what the current code's table.json says that the fixture's does not."""
    out = [f"row {r!r}: only in the expected table" for r in expected if r not in got]
    out += [f"row {r!r}: not in the expected table" for r in got if r not in expected]
    if [r for r in expected if r in got] != [r for r in got if r in expected]:  # the common rows' order
        out.append(f"row order: expected {list(expected)}, got {list(got)}")
    for row in (r for r in expected if r in got):
        e, g = expected[row], got[row]
        out += [f"row {row!r}, column {c!r}: only in the expected table" for c in e if c not in g]
        out += [f"row {row!r}, column {c!r}: not in the expected table" for c in g if c not in e]
        out += [f"row {row!r}, column {c!r}: expected {e[c]!r}, got {g[c]!r}"
                for c in e if c in g and not _same(e[c], g[c])]
    return out


def _fix() -> str:
    return (f"\nIf the change is intended: .venv/bin/python {REGEN} and review the diff of "
            "tests/fixtures/tiny_report/expected/")


def test_the_fixture_holds_no_path_of_the_machine_that_made_it():
    texts = {p.relative_to(FIXTURE): p.read_text(encoding="utf-8") for p in FIXTURE.rglob("*")
             if p.is_file() and p.suffix in (".json", ".jsonl", ".md")}
    leaks = [str(p) for p, text in texts.items() if "/tmp/" in text or str(project_root()) in text]
    assert leaks == []


def test_the_fixture_holds_no_weights_and_stays_small():
    files = [p for p in FIXTURE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert [p.name for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".gguf")] == []
    assert sum(p.stat().st_size for p in files) < 300_000


def test_the_table_is_the_one_the_fixture_rendered(rendered):
    problems = table_differences(json.loads(_expected("table.json")), json.loads(rendered["table.json"]))
    assert problems == [], "table.json differs from the fixture's:\n" + "\n".join(problems[:40]) + _fix()


def test_the_findings_are_the_ones_the_fixture_rendered(rendered):
    expected, got = _expected("findings.md"), rendered["findings.md"]
    diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True), got.splitlines(keepends=True),
                                        "expected/findings.md", "rendered now"))
    assert got == expected, "the findings differ from the fixture's:\n" + diff + _fix()


def test_the_findings_check_is_the_one_the_fixture_recorded(rendered):
    expected, got = json.loads(_expected("findings_check.json")), json.loads(rendered["findings_check.json"])
    assert got == expected, f"findings_check: expected {expected}, got {got}" + _fix()


def test_the_findings_read_back_against_the_table_without_a_mismatch(rendered):
    assert json.loads(rendered["findings_check.json"])["mismatches"] == []


def test_a_changed_cell_is_named_by_row_and_column():
    """The comparison can fail, and says where: one accuracy moved, one row gone, one column added."""
    expected = json.loads(_expected("table.json"))
    got = json.loads(_expected("table.json"))
    got["gkd"]["Accuracy"] = (got["gkd"]["Accuracy"] or 0.0) + 1e-6
    del got["teacher"]
    got["grpo"]["New column"] = 1
    assert table_differences(expected, got) == [
        "row 'teacher': only in the expected table",
        f"row 'gkd', column 'Accuracy': expected {expected['gkd']['Accuracy']!r}, got {got['gkd']['Accuracy']!r}",
        "row 'grpo', column 'New column': not in the expected table"]


def test_floats_are_compared_with_a_tight_tolerance_and_types_exactly():
    assert _same(0.1 + 0.2, 0.3)
    assert not _same(0.3, 0.3 + 1e-8)
    assert not _same(1, 1.0)
    assert _same(float("nan"), float("nan"))
