"""`atlas check` (atlas_lib/evaluation/pair_check.py) and `models.teacher_prompt` on tiny pairs: a
teacher template that inserts a default system prompt is caught and costs the teacher NLL, an EOS
mismatch and pad = eos masking are caught, GKD's loss under `own` is a teacher forward on the
re-rendered prompt, and the embedded pair passes (marked `embedded`)."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from atlas_lib.core import config, tiny
from atlas_lib.core.config import ParamsError
from atlas_lib.data import splits
from atlas_lib.data.prompts import build_messages, format_solution, render_prompt
from atlas_lib.evaluation import pair_check as pc
from atlas_lib.evaluation.divergence import generalized_jsd
from atlas_lib.methods.gkd import trainer as gkd
from atlas_lib.training import loop

# A teacher template that writes a system turn of its own when the conversation has none (as Qwen2.5's does).
DEFAULT_SYSTEM = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
                  "<|im_end|>\n{% endif %}") + tiny.CHATML
EXAMPLES = [{"question": f"Tom has {i} apples and buys {i + 2} more. How many?", "solution": f"{i} + {i + 2} = {2 * i + 2}.",
             "answer": str(2 * i + 2)} for i in range(8)]


def _variant(src: str, dst: Path, **tok_attrs) -> str:
    """A copy of a tiny model directory with tokenizer attributes changed."""
    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(dst)
    for k, v in tok_attrs.items():
        setattr(tok, k, v)
    tok.save_pretrained(dst)
    return str(dst)


def _params(student: str, teacher: str, **over):
    return config.load("params/smoke.yaml", overrides={"prompt.system": "", "models.student": student,
                                                       "models.teacher": teacher, "tracking.wandb": "disabled",
                                                       "evaluation.reverse_kl": False, **over})


def _trained_teacher(path: str, prompt_cfg) -> torch.nn.Module:
    """The tiny teacher fitted briefly to the reference answers after prompts in its own template, so the
    template it reads matters to it (a random teacher's NLL does not depend on the prompt in a known way)."""
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rows = []
    for ex in EXAMPLES:
        p = tok(render_prompt(tok, build_messages(ex["question"], prompt_cfg)), add_special_tokens=False)["input_ids"]
        a = tok(format_solution(ex["solution"], ex["answer"]), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + a])
        rows.append((ids, ids.masked_fill(torch.arange(ids.shape[1]) < len(p), -100)))
    for _ in range(15):
        for ids, labels in rows:
            model(input_ids=ids, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def system_pair(tiny, tmp_path_factory):
    teacher = _variant(tiny["teacher"], tmp_path_factory.mktemp("sys") / "teacher", chat_template=DEFAULT_SYSTEM)
    p = _params(tiny["student"], teacher)
    return p, tiny["student"], teacher, _trained_teacher(teacher, p.prompt)


def test_a_default_system_prompt_template_is_caught(system_pair):
    p, student, teacher, model = system_pair
    r = pc.check_pair(p, student, teacher, ["gkd", "evaluation"], EXAMPLES, model)
    assert r["templates"]["first_difference"]["kind"] == "default system prompt"


def test_the_default_system_prompt_costs_the_teacher_nll(system_pair):
    p, student, teacher, model = system_pair
    r = pc.check_pair(p, student, teacher, ["gkd", "evaluation"], EXAMPLES, model)
    assert r["cost"]["gap"] > 0


def test_identical_templates_have_no_gap(tiny):
    p = _params(tiny["student"], tiny["teacher"])
    model = AutoModelForCausalLM.from_pretrained(tiny["teacher"])
    r = pc.check_pair(p, tiny["student"], tiny["teacher"], ["gkd", "evaluation"], EXAMPLES, model)
    assert r["templates"]["identical"] and r["cost"]["gap"] == 0.0 and not r["findings"]


def test_student_template_above_the_threshold_is_refused_naming_the_field(system_pair):
    p, student, teacher, model = system_pair
    p = _params(student, teacher, **{"models.teacher_prompt": "student", "models.teacher_prompt_max_gap": 0.0})
    with pytest.raises(ParamsError, match=r"models\.teacher_prompt_max_gap"):
        pc.require_teacher_prompt(p, "gkd", AutoTokenizer.from_pretrained(student), AutoTokenizer.from_pretrained(teacher),
                                  model, EXAMPLES)


def test_own_template_is_not_refused(system_pair):
    p, student, teacher, model = system_pair
    p = _params(student, teacher, **{"models.teacher_prompt_max_gap": 0.0})
    assert pc.require_teacher_prompt(p, "gkd", AutoTokenizer.from_pretrained(student),
                                     AutoTokenizer.from_pretrained(teacher), model, EXAMPLES) is None


def test_teacher_prompt_fields_are_range_checked():
    with pytest.raises(ParamsError, match=r"models\.teacher_prompt"):
        config.load("params/smoke.yaml", overrides={"models.teacher_prompt": "teacher"})
    with pytest.raises(ParamsError, match=r"models\.teacher_prompt_max_gap"):
        config.load("params/smoke.yaml", overrides={"models.teacher_prompt_max_gap": -0.1})


def test_an_eos_mismatch_is_caught(tiny, tmp_path):
    """The teacher closes its turns with <|endoftext|> and stops there only: it never stops where the student does."""
    teacher = _variant(tiny["teacher"], tmp_path / "teacher", eos_token="<|endoftext|>",
                       chat_template=tiny_template_closing_with("<|endoftext|>"))
    GenerationConfig(eos_token_id=0, pad_token_id=0).save_pretrained(teacher)
    r = pc.check_pair(_params(tiny["student"], teacher), tiny["student"], teacher, ["cross_tokenizer"], EXAMPLES)
    assert r["stop_tokens"]["teacher_stops_with_student"] is False
    assert any("EOS mismatch" in f for f in r["findings"])


def tiny_template_closing_with(end: str) -> str:
    return tiny.CHATML.replace("<|im_end|>", end)


def test_pad_equal_to_eos_masks_the_stop_label_and_is_caught(tiny, tmp_path):
    student = _variant(tiny["student"], tmp_path / "student", pad_token="<|im_end|>")
    r = pc.check_pair(_params(student, tiny["teacher"]), student, tiny["teacher"], ["cross_tokenizer"], EXAMPLES)
    assert r["stop_tokens"]["student"]["pad_is_eos"]
    assert r["stop_tokens"]["stop_label_kept"]["hf_lm_collator (plain SFT; not a kit arm)"] is False
    assert any("masks the stop token" in n for n in r["notes"])


def test_the_kits_label_paths_keep_the_stop_label_with_pad_equal_to_eos(tiny, tmp_path):
    student = _variant(tiny["student"], tmp_path / "student", pad_token="<|im_end|>")
    r = pc.check_pair(_params(student, tiny["teacher"]), student, tiny["teacher"], ["cross_tokenizer"], EXAMPLES)
    kept = r["stop_tokens"]["stop_label_kept"]
    assert kept["trl_chatml_collator (gkd dataset batches)"] is True and kept["gkd_on_policy (student samples)"] is True


def test_pad_different_from_eos_keeps_every_stop_label(tiny):
    r = pc.check_pair(_params(tiny["student"], tiny["teacher"]), tiny["student"], tiny["teacher"], ["cross_tokenizer"],
                      EXAMPLES)
    assert all(v is True for v in r["stop_tokens"]["stop_label_kept"].values())


# ---- GKD under models.teacher_prompt = own -----------------------------------------------------------


@pytest.fixture(scope="module")
def own_trainer(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    teacher = _variant(tiny["teacher"], tmp / "teacher", chat_template=DEFAULT_SYSTEM)
    _trained_teacher(teacher, _params(tiny["student"], teacher).prompt).save_pretrained(teacher)  # prompt-sensitive
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATLAS_RUNS", str(tmp / "runs"))
        mp.setenv("ATLAS_CACHE", str(tmp / "cache"))
        p = _params(tiny["student"], teacher, **{"gkd.max_steps": 1})
        prepared = splits.prepare(p)
        parts = gkd._build("gkd")(p, prepared, torch.device("cpu"))
        common = loop.trainer_args(p, "gkd", types.SimpleNamespace(checkpoints=tmp / "checkpoints"), ["none"],
                                   torch.device("cpu"))
        yield parts.make_trainer(common, []), splits.distill_view(prepared.train, p.prompt), parts


def _gkd_batch(tok, rows):
    """Two training prompts (student's rendering, left-padded) and fixed completions; row 0 stops early."""
    ids = [tok(render_prompt(tok, r["messages"][:-1]), add_special_tokens=False)["input_ids"] for r in rows[:2]]
    width = max(map(len, ids))
    prompt = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids])
    pmask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    comp = torch.randint(3, len(tok), (2, 6), generator=torch.Generator().manual_seed(0))
    comp[0, 2], comp[0, 3:] = tok.eos_token_id, tok.pad_token_id
    cmask = torch.ones_like(comp)
    cmask[0, 3:] = 0
    input_ids, mask = torch.cat([prompt, comp], 1), torch.cat([pmask, cmask], 1)
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[:, :width] = -100
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}, comp, cmask


def test_gkd_loss_under_own_equals_a_teacher_forward_on_the_rerendered_prompt(own_trainer):
    trainer, rows, parts = own_trainer
    assert trainer.teacher_prompts is not None  # the templates differ, so the teacher's prompt is re-rendered
    tok, t_tok = parts.tokenizer, parts.teacher_tokenizer
    inputs, comp, cmask = _gkd_batch(tok, rows)
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, dict(inputs)))
        total, n = 0.0, 0
        for b in range(2):
            k = int(cmask[b].sum())
            c = comp[b, :k].tolist()
            s_prompt = tok(render_prompt(tok, rows[b]["messages"][:-1]), add_special_tokens=False)["input_ids"]
            t_prompt = t_tok(render_prompt(t_tok, rows[b]["messages"][:-1]), add_special_tokens=False)["input_ids"]
            assert t_prompt != s_prompt
            s_logits = trainer.model(input_ids=torch.tensor([s_prompt + c])).logits[0, len(s_prompt) - 1:-1]
            t_logits = parts.teacher(input_ids=torch.tensor([t_prompt + c])).logits[0, len(t_prompt) - 1:-1]
            v = len(tok)
            total += float(generalized_jsd(s_logits[:, :v], t_logits[:, :v], trainer.beta))
            n += k
    assert loss == pytest.approx(total / n, rel=1e-5)


def test_gkd_loss_under_own_differs_from_the_students_template(own_trainer, monkeypatch):
    """The comparison above can fail: scoring the student's rendering gives another loss."""
    trainer, rows, parts = own_trainer
    inputs, _, _ = _gkd_batch(parts.tokenizer, rows)
    with torch.no_grad():
        own = float(trainer.compute_loss(trainer.model, dict(inputs)))
        monkeypatch.setattr(trainer, "teacher_prompts", None)
        student = float(trainer.compute_loss(trainer.model, dict(inputs)))
    assert abs(own - student) / own > 1e-3  # 100x the tolerance of the equality above


# ---- the embedded pair ------------------------------------------------------------------------------


@pytest.mark.embedded
def test_the_embedded_pair_passes(tmp_path, monkeypatch):
    from atlas_lib.core import embedded

    for n in ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"):
        if not (embedded.cache_root() / "models" / n).exists():
            pytest.skip(f"{n} is not prepared (make models)")
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path / "runs"))
    p = config.load("params/embedded.yaml")
    r = pc.run_check(p)
    same = r["pairs"][0]
    assert same["same_tokenizer"] and same["templates"]["identical"] and same["findings"] == []


def test_batched_answer_nll_equals_one_row_at_a_time(tiny):
    """The check scores all answers in one forward over a shared prefix cache; each row alone agrees."""
    model, tok = AutoModelForCausalLM.from_pretrained(tiny["teacher"]), AutoTokenizer.from_pretrained(tiny["teacher"])
    p = _params(tiny["student"], tiny["teacher"], **{"prompt.system": "You are a careful math tutor."})
    prompts = [tok(render_prompt(tok, build_messages(ex["question"], p.prompt)), add_special_tokens=False)["input_ids"]
               for ex in EXAMPLES[:3]]
    answers = [tok(format_solution(ex["solution"], ex["answer"]), add_special_tokens=False)["input_ids"]
               for ex in EXAMPLES[:3]]
    whole = pc.answer_nll(model, prompts, answers, tok.eos_token_id, tok.pad_token_id)
    alone = [pc.answer_nll(model, [q], [a], tok.eos_token_id, tok.pad_token_id) for q, a in zip(prompts, answers, strict=True)]
    assert whole[0] == pytest.approx(sum(x[0] for x in alone), rel=1e-4)
    assert whole[2] == pytest.approx([x[2][0] for x in alone], rel=1e-4)


def test_the_pair_card_shows_each_arms_template_and_gap(tiny):
    from atlas_lib.report import pair_card

    p = _params(tiny["student"], tiny["teacher"])
    r = {"pairs": [pc.check_pair(p, tiny["student"], tiny["teacher"], ["gkd", "evaluation"], EXAMPLES)], "max_gap": 0.05}
    run = types.SimpleNamespace(summary={"teacher_prompt": "own", "teacher_prompt_gap": 0.25})
    card = pair_card.pair_card(types.SimpleNamespace(profile="x", runs={"gkd": run}), r)
    assert "| gkd | own | +0.2500 |" in card and "| evaluation | student template | n/a |" in card


def test_teacher_prompt_at_its_defaults_keeps_every_stage_hash():
    """Runs from before the fields existed keep their hashes; `student` changes the training stages' only."""
    import hashlib
    import json

    from atlas_lib.core.sections import SHARED_SECTIONS

    p = config.load("params/embedded.yaml")
    d = p.to_dict()
    d["models"] = {k: v for k, v in d["models"].items() if not k.startswith("teacher_prompt")}
    d["run"].pop("seeds")  # as stage_hash does for a single-seed file
    from atlas_lib.core import validate
    from atlas_lib.core.versions import GRADER_VERSION

    old = validate.hash_neutral({k: d[k] for k in (*SHARED_SECTIONS, "gkd")}, "gkd")
    old["grader"] = GRADER_VERSION  # the grader's version, in every stage hash since GRADER_VERSION 2
    assert p.stage_hash("gkd") == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    q = config.load("params/embedded.yaml", overrides={"models.teacher_prompt": "student"})
    assert q.stage_hash("data") == p.stage_hash("data") and q.stage_hash("gkd") != p.stage_hash("gkd")


def test_stage_01_writes_the_pair_check_beside_the_baselines(env):
    import json

    from atlas_lib.evaluation import baselines

    p = config.load("params/smoke.yaml", overrides={"tracking.wandb": "disabled", "evaluation.reverse_kl": False})
    splits.prepare(p)
    baselines.evaluate_baselines(p, which=("student",))
    check = json.loads((baselines.baseline_dir(p) / "pair_check.json").read_text())
    assert [(x["student"], x["teacher"]) for x in check["pairs"]] == [
        ("tiny-qwen2-student", "tiny-qwen2-teacher"), ("tiny-llama-cross", "tiny-qwen2-teacher")]


def test_gold_under_own_gives_the_teacher_its_own_rendering(tiny, tmp_path):
    """GOLD's teacher re-tokenizes ``original_prompt_text``; under `own` that text is the teacher's
    rendering of the same messages (left padding decoded in front of it is ignored)."""
    from atlas_lib.methods.gold.trainer import TeacherPromptText

    teacher = _variant(tiny["teacher"], tmp_path / "teacher", chat_template=DEFAULT_SYSTEM)
    s_tok, t_tok = AutoTokenizer.from_pretrained(tiny["student"]), AutoTokenizer.from_pretrained(teacher)
    msgs = build_messages(EXAMPLES[0]["question"], _params(tiny["student"], teacher).prompt)
    to_teacher = TeacherPromptText(s_tok, t_tok)
    to_teacher.add(msgs)
    student_text = render_prompt(s_tok, msgs)
    assert to_teacher(s_tok.pad_token * 2 + student_text) == render_prompt(t_tok, msgs) != student_text
    assert to_teacher("an unknown prompt") == "an unknown prompt" and to_teacher.misses == 1


def test_every_collated_training_prompt_is_found_for_re_rendering(own_trainer):
    """The prompts GKD's collator cuts from prompt + reference decode to the rendered prompt the lookup
    knows, so no training row falls back to the student's template."""
    trainer, rows, _ = own_trainer
    collated = trainer.data_collator(rows[:8])
    for ids, m in zip(collated["prompts"], collated["prompt_attention_mask"], strict=True):
        trainer.teacher_prompts(ids[m.bool()].tolist())
    assert trainer.teacher_prompts.misses == 0
