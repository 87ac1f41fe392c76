"""Prompt controls (evaluation.controls): the untrained student prompted to work step by step is its own
table row, evaluated in notebook 01 with the same grader, problems and decoding as every other row; only
the prompt differs. The report shows it as a control and says how much of each method's gain it reaches."""

from __future__ import annotations

import dataclasses
import json

import pytest

from atlas_lib.core import config, sections
from atlas_lib.core.validate import ParamsError
from atlas_lib.data import answers, prompts


def _params(**over):
    base = {"tracking.wandb": "disabled", "evaluation.controls": ["step_by_step"]}
    return config.load("params/smoke.yaml", overrides={**base, **over})


def test_the_control_names_are_the_prompts_controls():
    assert set(sections.CONTROL_NAMES) == set(prompts.CONTROLS)


def test_an_unknown_control_is_refused_naming_the_field():
    with pytest.raises(ParamsError, match="evaluation.controls: unknown control 'cot'"):
        _params(**{"evaluation.controls": ["cot"]})


def test_the_control_prompt_differs_only_in_its_instruction():
    p = _params()
    c = prompts.control_prompt(p.prompt, "step_by_step")
    diff = {f.name for f in dataclasses.fields(c) if getattr(c, f.name) != getattr(p.prompt, f.name)}
    assert diff == {"instruction"}
    assert "step by step" in c.instruction and "Final Answer: <number>" in c.instruction


@pytest.fixture
def evaluated(env, monkeypatch):
    """notebook 01's baselines on the tiny models, recording every evaluator call."""
    from atlas_lib.data import splits
    from atlas_lib.evaluation import baselines
    from atlas_lib.evaluation import evaluate as ev

    for name, value in (("run_check", lambda *a, **k: {}), ("write", lambda *a, **k: None),
                        ("format_text", lambda *a, **k: "")):  # the pair check is not what this tests
        monkeypatch.setattr(baselines.pair_check, name, value)
    calls, real = [], ev.evaluate

    def spy(model, tok, examples, **kw):
        res = real(model, tok, examples, **kw)
        calls.append({"model": model, "ids": [e["id"] for e in examples], "records": res.records, **kw})
        return res

    monkeypatch.setattr(ev, "evaluate", spy)
    p = _params()
    splits.prepare(p)
    summary = baselines.evaluate_baselines(p)
    return p, summary, {c["desc"]: c for c in calls}, env


def test_the_control_uses_the_same_grader_problems_and_decoding(evaluated):
    p, summary, calls, _ = evaluated
    student, control = calls["eval student"], calls["eval control step_by_step"]
    assert control["model"] is student["model"], "the same untrained student"
    assert control["ids"] == student["ids"] and len(control["ids"]) == p.evaluation.limit, "the same test problems"
    assert control["max_new_tokens"] == student["max_new_tokens"] == p.evaluation.max_new_tokens
    assert control["batch_size"] == student["batch_size"], "the same greedy decoding"
    assert control["prompt_cfg"] == prompts.control_prompt(student["prompt_cfg"], "step_by_step")
    assert control["prompt_cfg"] != student["prompt_cfg"], "the prompt differs"
    for r in control["records"]:  # graded by the kit's one grader, as every row
        assert r["correct"] == answers.is_correct(r["completion"], r["reference"], r["truncated"])
    assert all(p.prompt.instruction not in r["prompt"] for r in control["records"])
    assert all(prompts.CONTROLS["step_by_step"]["instruction"] in r["prompt"] for r in control["records"])
    assert summary["controls"]["step_by_step"]["n"] == summary["student"]["n"]


def test_the_control_is_a_row_of_its_own_not_a_trained_method(evaluated):
    from atlas_lib.report import collect, findings, table

    p, summary, _, env = evaluated
    saved = json.loads((env / "runs" / "smoke" / "baseline" / "summary.json").read_text())
    assert "step_by_step" in saved["controls"]
    col = collect.collect(p)
    t = table.results_table(col)
    row = t.loc["control_step_by_step"]
    assert row["Row kind"] == "control" and "control: no training" in row["Model / Method"]
    assert row["n"] == t.loc["student", "n"]
    pr = collect.paired_vs(col, "control_step_by_step", "student")
    assert pr is not None and row["Diff vs student"] == pytest.approx(pr.diff)
    styled = table.styled_table(t).loc["control_step_by_step"]
    assert styled["Training compute"] == "—" and styled["Steps"] == "—", "no training to show"
    assert styled["Paired diff vs untrained (95% CI)"] != "—", "paired with the student like a trained row"
    text = findings.findings(col)
    assert "Control, Student, step-by-step prompt" in text
    assert "control_step_by_step" in table.baseline_frame(summary).index


def test_findings_say_how_much_of_each_methods_gain_the_control_reaches():
    import pandas as pd

    from atlas_lib.report import collect, controls

    ids = [f"t{i}" for i in range(40)]
    right = lambda k: {i: n < k for n, i in enumerate(ids)}  # noqa: E731 (the first k problems right)
    runs = {k: collect.RunInfo(k, f"synth/{k}", "complete", method=k, name=k.upper()) for k in ("gkd", "grpo")}
    # student 10 right; GKD 30 (+50 points); GRPO 8 (-5); the prompt alone 20 (+25 points: half of GKD's gain)
    col = collect.Collected("synth", None, None, runs, correct={
        "student": right(10), "gkd": right(30), "grpo": right(8), "control_step_by_step": right(20)})
    t = pd.DataFrame({"Row kind": ["control"], "Model / Method": ["Student, step-by-step prompt (control: no training)"],
                      "Avg Generated Tokens": [41.5]}, index=["control_step_by_step"])
    (text,) = controls.control_sentences(col, t)
    assert "+25.0 points" in text and "41.5 tokens per answer" in text
    assert "50% of GKD's +50.0 points" in text
    assert "GRPO: no gain to compare (-5.0 points)" in text


def test_controls_change_notebook_01s_hash_and_no_training_stages():
    off, on = _params(**{"evaluation.controls": []}), _params()
    assert off.stage_hash("data") != on.stage_hash("data"), "stage 01 evaluates them"
    assert off.stage_hash("gkd") == on.stage_hash("gkd"), "a trained run does not depend on them"
