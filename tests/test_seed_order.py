"""Seed-major order: with run.seeds, `atlas report` trains seed 42 of every arm, then 43, then 44, so
an interrupted study already holds complete comparisons (report/seed_order.py), without training."""

from __future__ import annotations

from pathlib import Path

from atlas_lib.core import config, rundir, seeds
from atlas_lib.core.preflight import train_hash
from atlas_lib.report import pipeline, seed_order, stage_run

ARMS = ["gkd", "grpo"]


def _params(**over):
    base = {"run.seeds": [42, 43, 44], "off_policy.enabled": False, "cross_tokenizer.enabled": False,
            "tracking.wandb": "disabled"}
    return config.load("params/smoke.yaml", overrides={**base, **over})


def test_the_plan_trains_every_arm_at_one_seed_before_the_next_seed():
    p = _params()
    order = seed_order.training_order(p, pipeline.steps(p))
    assert order == [(k, s) for s in (42, 43, 44) for k in ARMS]


def test_one_seed_keeps_the_notebooks_own_order():
    p = _params(**{"run.seeds": []})
    assert seed_order.seed_passes(p, pipeline.steps(p)) == []
    assert seed_order.training_order(p, pipeline.steps(p)) == [(k, p.run.seed) for k in ARMS]


def test_a_pass_trains_the_runs_the_full_notebook_reuses():
    p = _params()
    cut = seed_order.pass_params(p, seed_order.seed_passes(p, pipeline.steps(p))[-1])  # seeds 42, 43
    assert cut.run.seeds == [42, 43] and cut.sweeps == []
    for key in ARMS:
        full = [p, *(v for _, v in seeds.seed_variants(p, key))][:2]
        part = [cut, *(v for _, v in seeds.seed_variants(cut, key))]
        assert [q.run_name(key) for q in part] == [q.run_name(key) for q in full]
        assert [train_hash(q, key) for q in part] == [train_hash(q, key) for q in full]


def _record(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []

    def record(step, *a, resume=False, **k):
        calls.append((step.notebook, step.seeds, resume))

    # the notebooks' own steps and the seed passes both run through stage_run.execute
    monkeypatch.setattr(stage_run, "execute", record)
    return calls


def test_the_pipeline_executes_the_notebooks_seed_major(env, monkeypatch):
    p = _params()
    calls = _record(monkeypatch)
    profile = env / "runs" / "smoke"
    pipeline._run_steps(p, Path("params/smoke.yaml"), profile, profile / "notebooks", force=False, only=None)
    assert calls == [("01_data", (), False),
                     ("02_gkd", (42,), True), ("03_grpo", (42,), True),
                     ("02_gkd", (42, 43), True), ("03_grpo", (42, 43), True),
                     ("02_gkd", (), True), ("03_grpo", (), True),  # every seed: the last one trains here
                     ("05_comparison", (), False)]


def test_an_interrupted_study_reuses_its_finished_seeds(env, monkeypatch):
    p = _params()
    calls = _record(monkeypatch)
    finished = {("smoke/gkd", "gkd"), ("smoke/grpo", "grpo")}  # seed 42 of both arms done
    monkeypatch.setattr(rundir, "run_state",
                        lambda q, k: "finished" if (q.run_name(k), k) in finished else "absent")
    profile = env / "runs" / "smoke"
    pipeline._run_steps(p, Path("params/smoke.yaml"), profile, profile / "notebooks", force=False, only=None)
    trained = [(nb, s) for nb, s, _ in calls if nb in ("02_gkd", "03_grpo")]
    assert trained == [("02_gkd", (42, 43)), ("03_grpo", (42, 43)), ("02_gkd", ()), ("03_grpo", ())]


def test_a_pass_injects_the_cut_seed_list_and_no_sweeps(tmp_path, monkeypatch):
    import papermill

    seen = {}
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, parameters=None, **k: seen.update(parameters))
    step = seed_order.seed_passes(_params(), pipeline.steps(_params()))[0]
    from atlas_lib.report import stage_run

    stage_run.execute(step, Path("params/smoke.yaml"), tmp_path / "out.ipynb", resume=True)
    assert seen["run"] == {"seeds": [42]} and seen["sweeps"] == [] and seen["gkd"] == {"resume": True}


def test_an_arm_limited_to_the_first_seed_trains_with_seed_42_and_never_again():
    p = _params(**{"off_policy.enabled": True, "off_policy.max_seeds": 1})
    order = seed_order.training_order(p, pipeline.steps(p))
    assert [x for x in order if x[0] == "off_policy"] == [("off_policy", 42)]
    assert order[:3] == [("gkd", 42), ("off_policy", 42), ("grpo", 42)]
    assert [q.run.seeds for _, q in seeds.seed_variants(p, "off_policy")] == []
    assert [s for s, _ in seeds.seed_variants(p, "gkd")] == [43, 44]


def test_max_seeds_at_its_default_keeps_every_runs_hash():
    from atlas_lib.core import validate

    p = _params()
    d = p.to_dict()
    assert "max_seeds" in d["gkd"] and "max_seeds" not in validate.hash_neutral(d, "gkd")["gkd"]
    assert train_hash(p, "gkd") != train_hash(_params(**{"gkd.max_seeds": 2}), "gkd")


def test_kl_seeds_scores_the_first_seeds_test_answers_only():
    p = _params(**{"evaluation.kl_seeds": 1})
    assert [v.evaluation.reverse_kl for _, v in seeds.seed_variants(p, "gkd")] == [False, False]


def test_kl_seeds_leaves_the_first_seed_scored():
    assert _params(**{"evaluation.kl_seeds": 1}).evaluation.reverse_kl


def test_kl_seeds_at_two_scores_the_second_seed_too():
    p = _params(**{"evaluation.kl_seeds": 2})
    assert [v.evaluation.reverse_kl for _, v in seeds.seed_variants(p, "gkd")] == [True, False]


def test_kl_seeds_at_its_default_keeps_every_runs_hash():
    from atlas_lib.core import validate

    d = _params().to_dict()
    assert "kl_seeds" not in validate.hash_neutral(d, "gkd")["evaluation"]


def test_changing_kl_seeds_keeps_the_first_seeds_training_hash():
    assert train_hash(_params(**{"evaluation.kl_seeds": 1}), "gkd") == train_hash(_params(**{"evaluation.kl_seeds": 2}),
                                                                                  "gkd")


def test_a_pass_gives_each_seed_the_kl_scoring_the_full_study_gives_it():
    p = _params(**{"evaluation.kl_seeds": 1})
    cut = seed_order.pass_params(p, seed_order.seed_passes(p, pipeline.steps(p))[-1])  # seeds 42, 43
    full = [train_hash(v, "gkd") for _, v in seeds.seed_variants(p, "gkd")][:1]
    assert [train_hash(v, "gkd") for _, v in seeds.seed_variants(cut, "gkd")] == full


def test_kl_seeds_without_reverse_kl_is_refused():
    import pytest

    with pytest.raises(config.ParamsError, match="evaluation.kl_seeds"):
        _params(**{"evaluation.kl_seeds": 1, "evaluation.reverse_kl": False})


def test_every_seed_variant_is_a_further_seed():
    assert [seeds.is_further_seed(v) for _, v in seeds.seed_variants(_params(), "gkd")] == [True, True]


def test_the_first_seeds_params_are_not_a_further_seed():
    assert not seeds.is_further_seed(_params())
