"""Data preparation: every source via local fixtures, the by-group split, bad rows, persistence, views."""

from __future__ import annotations

import hashlib
import json
import logging

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_lib.core import config
from atlas_lib.core.config import ParamsError
from atlas_lib.core.sections import PromptConfig
from atlas_lib.data import sources as data_sources
from atlas_lib.data import splits as data
from atlas_lib.data.answers import is_correct
from atlas_lib.data.splits import DataError


@pytest.fixture(autouse=True)
def _runs(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path / "runs"))


def _params(name="t", seed=0, **data_cfg):
    base = {"source": "reasoning_gym", "task": "gsm_symbolic", "size": 60, "eval_limit": 15, "val_limit": 5,
            "train_limit": 100}
    return config.load({"name": name, "run": {"seed": seed}, "data": {**base, **data_cfg},
                        "evaluation": {"limit": 1, "during_training_limit": 1}})


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _problems(n, groups=None):
    return [{"uid": f"p{i}", "problem": f"Tom has {i} apples and buys {i + 1} more. How many now?",
             "sol": f"{i} + {i + 1} = {2 * i + 1}.\n#### {2 * i + 1:,}", "family": f"g{i % groups}" if groups else None}
            for i in range(n)]


def _disjoint(prep):
    train_g, eval_g = {r["group"] for r in prep.train}, {r["group"] for r in prep.eval + prep.val}
    return not (train_g & eval_g) and not ({r["id"] for r in prep.train} & {r["id"] for r in prep.eval + prep.val})


# -- sources ---------------------------------------------------------------------------------------
def test_reasoning_gym_groups_by_template_and_is_deterministic():
    a = data.prepare(_params())
    b = data.prepare(_params(name="again"))
    c = data.prepare(_params(name="other", seed=1))
    assert a.manifest["counts"]["eval"] == 15 and a.manifest["counts"]["raw"] == 60
    assert all(r["group"].startswith("gsm_symbolic-template-") for r in a.train + a.eval)
    assert len({r["group"] for r in a.eval}) == len(a.eval) == 15  # one problem per template: independent
    assert len({r["group"] for r in a.train}) < len(a.train)  # train keeps whole templates
    assert _disjoint(a) and a.manifest["overlap"]["groups"] == 0 and a.manifest["overlap"]["questions"] == 0
    assert a.manifest["sha256"] == b.manifest["sha256"] and a.eval == b.eval
    assert a.manifest["sha256"]["eval.jsonl"] != c.manifest["sha256"]["eval.jsonl"]
    assert all(r["solution"] and r["answer"] for r in a.train)


@pytest.mark.parametrize("task", ["basic_arithmetic", "chain_sum"])
def test_reasoning_gym_other_tasks(task):
    prep = data.prepare(_params(task=task, size=30, eval_limit=10))
    assert len(prep.eval) == 10 and len(prep.val) == 5 and len(prep.train) == 15 and _disjoint(prep)


def test_unknown_task_lists_valid_names():
    with pytest.raises(ParamsError, match="did you mean gsm_symbolic.*basic_arithmetic, chain_sum"):
        data.prepare(_params(task="gsm_symbolc"))


def test_gsm8k_schema_uses_official_split(tmp_path, monkeypatch):
    files = {s: _write_jsonl(tmp_path / f"{s}.jsonl", [{"question": r["problem"] + f" ({s})", "answer": r["sol"]}
                                                        for r in _problems(n)])
             for s, n in (("train", 40), ("test", 12))}
    monkeypatch.setattr(data_sources, "hub_dataset",
                        lambda name, cfg, split: data_sources.load_file(files[split]))
    prep = data.prepare(_params(source="gsm8k", eval_limit=10))
    assert all(r["id"].startswith("gsm8k-test-") for r in prep.eval) and len(prep.eval) == 10
    assert all(r["id"].startswith("gsm8k-train-") for r in prep.train) and len(prep.train) == 40
    big = next(r for r in prep.train + prep.eval if r["id"].endswith("-train-39"))
    assert big["answer"] == "79" and big["solution"].endswith("#### 79")


def test_metamathqa_schema_groups_rephrasings_and_drops_non_numeric(tmp_path, monkeypatch):
    rows = []
    for i in range(20):
        orig = f"Sam has {i} cats and gets {i} more. How many?"
        for k in range(3):
            rows.append({"query": f"(v{k}) {orig}", "response": f"{i} + {i} = {2 * i}\nThe answer is: {2 * i}",
                         "type": "GSM_Rephrased", "original_question": orig})
    rows.append({"query": "Simplify sqrt 8.", "response": "It is 2\\sqrt{2}.\nThe answer is: 2\\sqrt{2}",
                 "type": "MATH_AnsAug", "original_question": "Simplify sqrt 8."})
    path = _write_jsonl(tmp_path / "mmqa.jsonl", rows)
    monkeypatch.setattr(data_sources, "hub_dataset", lambda *a: data_sources.load_file(path))
    prep = data.prepare(_params(source="metamathqa", eval_limit=12))
    assert prep.manifest["bad_rows"] == {"bad_answer": 1}
    assert _disjoint(prep) and len(prep.eval) == 12
    assert {r["source"] for r in prep.train} == {"metamathqa/GSM_Rephrased"}
    assert len({r["group"] for r in prep.train}) * 3 == len(prep.train)  # whole groups only in train


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_local_formats_with_column_mapping_and_derived_answer(tmp_path, fmt):
    frame = pd.DataFrame(_problems(30, groups=10))
    path = tmp_path / f"p.{fmt}"
    {"jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     "json": lambda: frame.to_json(path, orient="records"), "csv": lambda: frame.to_csv(path, index=False),
     "parquet": lambda: frame.to_parquet(path)}[fmt]()
    cols = {"question": "problem", "solution": "sol", "id": "uid", "group": "family"}
    prep = data.prepare(_params(source="local", path=str(path), columns=cols, eval_limit=4, val_limit=2))
    # 3 problems per group: test and validation take one from each of 4 + 2 groups, the rest of those
    # groups is dropped (not put in train); train gets the other 4 groups whole
    assert _disjoint(prep) and len(prep.eval) == 4 and len(prep.val) == 2 and len(prep.train) == 12
    by_id = {r["id"]: r for r in prep.train + prep.eval}
    assert by_id["p29"]["answer"] == "59" and by_id["p29"]["group"] == "g9"


def test_local_gsm8k_style_answer_column(tmp_path):
    path = _write_jsonl(tmp_path / "g.jsonl", [{"question": r["problem"], "answer": r["sol"]} for r in _problems(20)])
    prep = data.prepare(_params(source="local", path=path, eval_limit=5))
    assert sorted(int(r["answer"]) for r in prep.train + prep.val + prep.eval) == [2 * i + 1 for i in range(20)]
    assert all(r["solution"].endswith("#### " + f"{int(r['answer']):,}") for r in prep.train)


def test_local_bad_column_mapping_names_the_columns(tmp_path):
    path = _write_jsonl(tmp_path / "g.jsonl", [{"q": "x?", "a": "1"}])
    with pytest.raises(ParamsError, match="its columns: q, a"):
        data.prepare(_params(source="local", path=path, columns={"question": "problem"}))


def test_empty_file_is_a_clear_error(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        data.prepare(_params(source="local", path=str(tmp_path / "e.jsonl")))


def test_a_file_that_is_not_utf8_names_the_line_and_the_fix(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"question": "What is 1 + 1?", "answer": "2"}\n{"question": "Caf\xe9 bill?", "answer": "3"}\n')
    with pytest.raises(DataError, match=r"line 2 is not UTF-8 \(byte 0xe9 at column 18\); save the file as UTF-8"):
        data.prepare(_params(source="local", path=str(path)))


# -- bad rows --------------------------------------------------------------------------------------
def _bad_file(tmp_path):
    rows = [{"id": f"ok{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(20)]
    rows += [{"id": "noq", "question": "", "answer": "3"}, {"id": "noa", "question": "What?", "answer": None},
             {"id": "words", "question": "Name it.", "answer": "blue"}, {"id": "ok3", "question": "Dup?", "answer": "1"}]
    return _write_jsonl(tmp_path / "bad.jsonl", rows)


def test_bad_rows_dropped_counted_and_logged_per_class(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="atlas_lib.data.splits"):
        prep = data.prepare(_params(source="local", path=_bad_file(tmp_path), eval_limit=5))
    assert prep.manifest["bad_rows"] == {"missing_question": 1, "missing_answer": 1, "bad_answer": 1,
                                         "duplicate_id": 1}
    kept = prep.train + prep.val + prep.eval
    assert len(kept) == 20 and all(r["id"].startswith("ok") for r in kept)
    lines = [r.getMessage() for r in caplog.records if "dropped bad rows" in r.getMessage()]
    assert len(lines) == 4 and any("bad_answer: 1 (e.g. ids words)" in m for m in lines)


def test_bad_rows_fail_mode_raises(tmp_path):
    with pytest.raises(DataError, match=r"4 bad rows.*missing_question: 1 \(e.g. ids noq\).*on_bad_rows: drop"):
        data.prepare(_params(source="local", path=_bad_file(tmp_path), on_bad_rows="fail"))
    assert not (data.data_dir(_params()) / "manifest.json").exists()


# -- split -----------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(groups=st.lists(st.integers(0, 15), min_size=2, max_size=80), seed=st.integers(0, 10**6),
       eval_limit=st.integers(1, 40))
def test_split_by_group_never_shares_a_group(groups, seed, eval_limit):
    records = [{"id": str(i), "question": f"q{i}", "group": f"g{g}"} for i, g in enumerate(groups)]
    train, val, eval_ = data.split_by_group(records, seed, eval_limit, val_limit=3)
    parts = [{r["group"] for r in x} for x in (train, val, eval_)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert len(parts[2]) == len(eval_) <= eval_limit and len(parts[1]) == len(val) <= 3  # one per group
    assert len(eval_) == min(eval_limit, len(set(groups)))
    everything = train + val + eval_
    assert len(everything) <= len(records) and len({r["id"] for r in everything}) == len(everything)
    assert (train, val, eval_) == data.split_by_group(records, seed, eval_limit, val_limit=3)


def test_question_duplicated_across_groups_is_removed_from_train(tmp_path):
    rows = [{"id": f"a{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i), "group": f"a{i}"} for i in range(20)]
    rows += [{"id": f"b{i}", "question": f"what is  {i} + {i}?", "answer": str(2 * i), "group": f"b{i}"} for i in range(20)]
    prep = data.prepare(_params(source="local", path=_write_jsonl(tmp_path / "d.jsonl", rows), eval_limit=10))
    ov = prep.manifest["overlap"]
    assert ov["removed_from_train"] >= 1 and ov["questions"] == 0 and ov["groups"] == 0
    held_q = {" ".join(r["question"].lower().split()) for r in prep.eval + prep.val}
    assert not any(" ".join(r["question"].lower().split()) in held_q for r in prep.train)
    assert len(prep.train) == 40 - len(prep.eval) - len(prep.val) - ov["removed_from_train"]


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.integers(0, 6), min_size=2, max_size=60), seed=st.integers(0, 10**6),
       eval_limit=st.integers(1, 10), per_group=st.integers(1, 3))
def test_held_out_questions_are_distinct_when_the_generator_repeats_them(texts, seed, eval_limit, per_group):
    # a generator repeating a few questions under new ids (each id its own group), as reasoning-gym's
    # arithmetic does with ``Calculate -8 + 8.``
    records = [{"id": str(i), "question": f"Calculate  -{t} + {t}." if i % 2 else f"calculate -{t} + {t}.",
                "group": f"g{i % 9}"} for i, t in enumerate(texts)]
    train, val, eval_ = data.split_by_group(records, seed, eval_limit, val_limit=3, per_group=per_group)
    held = [data._qkey(r["question"]) for r in val + eval_]
    assert len(held) == len(set(held))


def test_prepared_split_holds_each_question_once(tmp_path):
    rows = [{"id": f"r{i}", "question": "Calculate -8 + 8." if i % 3 == 0 else f"Calculate {i} + 1.",
             "answer": "0" if i % 3 == 0 else str(i + 1)} for i in range(60)]
    prep = data.prepare(_params(source="local", path=_write_jsonl(tmp_path / "d.jsonl", rows), eval_limit=15,
                                val_limit=5))
    held = [data._qkey(r["question"]) for r in prep.eval + prep.val]
    assert len(held) == len(set(held)) == 20
    assert prep.manifest["overlap"]["held_out_repeats"] == 0
    assert not {data._qkey(r["question"]) for r in prep.train} & set(held)


def test_split_prepared_by_an_older_schema_is_refused_not_reused():
    params = _params()
    prep = data.prepare(params)
    manifest = json.loads((prep.dir / "manifest.json").read_text())
    (prep.dir / "manifest.json").write_text(json.dumps({**manifest, "schema_version": data.SCHEMA_VERSION - 1}))
    with pytest.raises(DataError, match="older version of the kit's split.*again"):
        data.load_prepared(params)


def test_eval_limit_leaving_no_train_is_an_error():
    with pytest.raises(DataError, match="0 for training.*lower the limits"):
        data.prepare(_params(size=10, eval_limit=10))


# -- persistence -----------------------------------------------------------------------------------
def test_manifest_hashes_and_round_trip():
    params = _params(train_limit=20)
    prep = data.prepare(params)
    for name in ("train.jsonl", "eval.jsonl"):
        assert prep.manifest["sha256"][name] == hashlib.sha256((prep.dir / name).read_bytes()).hexdigest()
    assert prep.manifest["params_hash"] == params.stage_hash("data") and len(prep.train) == 20
    assert not list(prep.dir.glob(".*.tmp"))  # atomic writes leave no temp files
    again = data.load_prepared(params)
    assert again.train == prep.train and again.eval == prep.eval and again.manifest == prep.manifest


def test_load_prepared_refuses_missing_stale_or_altered_data():
    params = _params(name="fresh")
    with pytest.raises(DataError, match="01_data.ipynb.*atlas data"):
        data.load_prepared(params)
    prep = data.prepare(params)
    with pytest.raises(DataError, match="other data parameters"):
        data.load_prepared(_params(name="fresh", eval_limit=14))
    data.load_prepared(config.load({**params.to_dict(), "evaluation": {"limit": 2, "during_training_limit": 1}}))
    # (eval settings don't matter)
    (prep.dir / "eval.jsonl").write_text((prep.dir / "eval.jsonl").read_text()[:-50])
    with pytest.raises(DataError, match="changed since it was prepared"):
        data.load_prepared(params)


# -- views -----------------------------------------------------------------------------------------
def test_distill_and_grpo_views():
    params = _params()
    prep = data.prepare(params)
    cfg = PromptConfig(few_shot=1)
    rows = data.distill_view(prep.train, cfg)
    msgs = rows[0]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[-1]["content"].endswith(f"Final Answer: {prep.train[0]['answer']}")
    assert "####" not in msgs[-1]["content"]
    assert all(is_correct(r["messages"][-1]["content"], rec["answer"]) for r, rec in zip(rows, prep.train, strict=True))
    g = data.grpo_view(prep.train, cfg)
    assert g[0]["prompt"] == msgs[:-1] and g[0]["answer"] == prep.train[0]["answer"]


def test_summary_and_length_stats():
    prep = data.prepare(_params())
    frame = data.summary_frame(prep)
    assert frame.loc["test", "problems"] == 15 and frame.loc["val", "problems"] == 5
    assert frame.loc["train", "problems"] == len(prep.train)
    stats = data.length_stats(prep)
    assert len(stats) == len(prep.train) + len(prep.val) + len(prep.eval) and (stats["question_words"] > 5).all()
    assert set(stats["split"]) == {"train", "val", "test"}


def test_task_config_sets_the_generators_difficulty():
    easy = data.prepare(_params(task="basic_arithmetic", size=30, eval_limit=10,
                                task_config={"max_terms": 2, "max_digits": 1, "allow_parentheses": False}))
    hard = data.prepare(_params(name="hard", task="basic_arithmetic", size=30, eval_limit=10))

    def terms(prep) -> list[int]:
        return [sum(t.rstrip(".").lstrip("-").isdigit() for t in r["question"].split())
                for r in prep.train + prep.val + prep.eval]

    assert max(terms(easy)) == 2 and max(terms(hard)) > 2


@pytest.mark.parametrize(("cfg", "match"), [({"max_termz": 3}, "max_termz"), ({"seed": 1}, "run.seed")])
def test_bad_task_config_names_the_field(cfg, match):
    with pytest.raises(ParamsError, match=rf"data.task_config.*{match}"):
        data.prepare(_params(task="basic_arithmetic", size=30, eval_limit=10, task_config=cfg))
