"""TRL's GOLD as a registry arm on tiny models: it trains, reports its own loss on held-out answers,
and refuses a SentencePiece pair where the kit's alignment runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atlas_lib.core import config, registry
from atlas_lib.methods.gold import trainer as gold


def _params(**over):
    base = {"tracking.wandb": "disabled", "gold.enabled": True, "gold.student": "tiny-llama-cross",
            "gold.teacher": "tiny-qwen2-teacher", "gold.max_steps": 2, "gold.eval_steps": 1, "gold.save_steps": 1,
            "gold.per_device_train_batch_size": 2, "gold.gradient_accumulation_steps": 1,
            "gold.max_completion_length": 8, "gold.learning_rate": 1e-3}
    return config.load("params/smoke.yaml", overrides={**base, **over})


def test_gold_is_a_registered_cross_tokenizer_arm_off_by_default():
    m = registry.get("gold")
    assert m.notebook == "04_cross_tokenizer" and m.divergence == "aligned" and m.own_student and m.distills
    assert config.load("params/smoke.yaml").gold.enabled is False


def test_gold_trains_on_tiny_models_and_reports_its_own_objective(env):
    from atlas_lib.data import splits

    p = _params()
    splits.prepare(p)
    s = gold.run_gold(p)
    run = Path(env / "runs" / "smoke" / "gold")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 2 and all(x > 0 for x in losses)
    assert s["training"]["weights_changed"] is True and s["did_not_train"] is None
    assert s["gold_supported"] is True and s["tokenizers"] == {"student": "bytelevel", "teacher": "bytelevel"}
    for when in ("initial", "distilled"):  # before and after, on the test split
        m = s[when]
        assert m["heldout_objective"] is not None and m["heldout_objective"] > 0, when
        assert m["aligned_divergence"] is not None and m["mean_logratio_per_char"] is not None, when
    recs = [json.loads(line) for line in (run / "eval" / "final_full.records.jsonl").read_text().splitlines()]
    assert all("aligned_objective" in r for r in recs)  # the kit's loss beside GOLD's, per answer
    ledger = [r for r in rows if r["kind"] == "ledger"]
    assert ledger and ledger[-1]["sampling_seconds"] > 0 and ledger[-1]["teacher_seconds"] > 0


def test_gold_refuses_a_sentencepiece_student_with_trls_reason(env):
    from atlas_lib.data import splits

    p = _params(**{"gold.student": "tiny-llama-sp"})
    splits.prepare(p)
    with pytest.raises(gold.GOLDRefusedError, match="not ByteLevel BPE.*cross_tokenizer section"):
        gold.run_gold(p)


def test_gold_heldout_objective_is_trls_compute_loss(tiny):
    """The per-answer objective is TRL's own ``compute_loss`` on that answer: a trainer's loss on a
    batch of one, built the way TRL builds its on-policy batches."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gold import GOLDConfig

    from atlas_lib.data.prompts import render_prompt

    s_tok = AutoTokenizer.from_pretrained(tiny["cross_student"])
    s_tok.pad_token = s_tok.pad_token or s_tok.eos_token
    student = AutoModelForCausalLM.from_pretrained(tiny["cross_student"])
    teacher = AutoModelForCausalLM.from_pretrained(tiny["teacher"])
    from datasets import Dataset

    prompt = render_prompt(s_tok, [{"role": "user", "content": "What is 12 times 4?"}])
    ds = Dataset.from_list([{"prompt": prompt, "completion": "Final Answer: 48"}])
    args = GOLDConfig(output_dir=str(Path(tiny["teacher"]).parent / "gold-out"), use_uld_loss=True,
                      use_extended_uld=True, uld_use_hybrid_loss=True, teacher_tokenizer_name_or_path=tiny["teacher"],
                      per_device_train_batch_size=1, report_to=[], max_completion_length=8, use_cpu=True,
                      remove_unused_columns=False)
    trainer = gold._trainer_class()(model=student, teacher_model=teacher, args=args, train_dataset=ds,
                                    processing_class=s_tok)
    recs = [{"prompt": prompt, "completion": c, "truncated": t}
            for c, t in (("12 * 4 = 48\nFinal Answer: 48", False), ("Final Answer: 4", True), ("", True))]
    out = gold.heldout_objective(trainer, student, s_tok, recs)

    def trl_loss(completion_ids: list[int]) -> float:
        """TRL's compute_loss on a batch built here by hand: prompt masked, the answer's tokens as labels."""
        p_ids = s_tok(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + completion_ids])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "prompts": torch.tensor([p_ids]),
                 "labels": torch.tensor([[-100] * len(p_ids) + completion_ids]), "original_prompt_text": [prompt],
                 "original_completion_text": [s_tok.decode(completion_ids, clean_up_tokenization_spaces=False)]}
        trainer._maybe_add_completion_byte_offsets(batch)
        student.eval()
        with torch.no_grad():
            return float(trainer.compute_loss(student, batch))

    answer_ids = s_tok("12 * 4 = 48\nFinal Answer: 48", add_special_tokens=False)["input_ids"]
    # the finished answer is scored with its stop token, the truncated one without
    assert out[0] == pytest.approx(trl_loss(answer_ids + [s_tok.eos_token_id]), rel=1e-5)
    assert out[1] == pytest.approx(trl_loss(s_tok("Final Answer: 4", add_special_tokens=False)["input_ids"]), rel=1e-5)
    assert out[0] != pytest.approx(trl_loss(answer_ids), rel=1e-3)  # the stop token changes the value
    assert out[0] > 0 and out[1] > 0 and out[2] is None
    assert out[0] != pytest.approx(out[1])
    again = gold.heldout_objective(trainer, student, s_tok, recs[:1])
    assert again[0] == pytest.approx(out[0])  # deterministic: eval mode, no sampling
    student.train()
    gold.heldout_objective(trainer, student, s_tok, recs[:1])
    assert student.training
    assert torch.is_grad_enabled()


def test_the_cli_refuses_a_sentencepiece_pair_with_one_message_and_exit_2(env, capsys):
    from atlas_lib import cli
    from atlas_lib.data import splits

    splits.prepare(_params())
    rc = cli.main(["train", "gold", "--params", "params/smoke.yaml", "--set", "gold.student=tiny-llama-sp",
                   "--set", "gold.teacher=tiny-qwen2-teacher", "--set", "tracking.wandb=disabled"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "GOLD refuses 'tiny-llama-sp'" in err and "Traceback" not in err
    assert not (env / "runs" / "smoke" / "gold" / "checkpoints").exists()  # refused before any training
