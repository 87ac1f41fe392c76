"""The shared evaluator on tiny random models: batched greedy == one-at-a-time, EOS handling,
reverse KL against an independent float64 formula, Wilson intervals, records on disk."""

from __future__ import annotations

import math
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from atlas_lib.core.sections import PromptConfig
from atlas_lib.data import answers
from atlas_lib.evaluation import evaluate as ev
from atlas_lib.evaluation import forward, generation

PROMPTS = ["Tom has 3 apples.", "What is 7 times 6? Answer with one number please, step by step.",
           "0 1 2", "A shop sells 12 pens at $2 each. How much do 5 pens cost in total?", "Anna reads"]
HEAD = "You are a careful math tutor. Solve the problem step by step, briefly. Tom has 3 apples. 7 * 6 = 42. "
EXAMPLES = [{"id": f"ex{i}", "question": q, "answer": a} for i, (q, a) in
            enumerate([("Tom has 3 apples and buys 5 more. How many?", "8"), ("What is 7 times 6?", "42"),
                       ("Anna reads 15 pages a day for 4 days. How many pages?", "60")])]


def _load(path):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def pair(tiny):
    (s, tok), (t, t_tok) = _load(tiny["student"]), _load(tiny["teacher"])
    return s, tok, t, t_tok


def _reference_greedy(model, ids: list[int], n: int) -> list[int]:
    """Independent greedy: full forward on the unpadded sequence each step, no cache, no EOS."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]


def _kl64(s_T_V: torch.Tensor, t_T_V: torch.Tensor) -> torch.Tensor:
    ps, pt = torch.softmax(s_T_V.double(), -1), torch.softmax(t_T_V.double(), -1)
    return (ps * (ps.log() - pt.log())).sum(-1)


def test_batched_left_padded_greedy_equals_one_at_a_time(pair):
    s, tok, _, _ = pair
    n = 12
    out = generation.generate_greedy(s, tok, PROMPTS, max_new_tokens=n, batch_size=3)
    assert len({len(o["prompt_ids"]) for o in out}) > 2  # batches really needed padding
    for p, o in zip(PROMPTS, out, strict=True):
        assert o["prompt_ids"] == tok(p, add_special_tokens=False)["input_ids"]  # order kept, unpadded
        assert o["prompt_tokens"] == len(o["prompt_ids"])
        ref = _reference_greedy(s, o["prompt_ids"], n)
        eos = set(forward.eos_token_ids(s, tok))
        stop = next((j for j, t in enumerate(ref) if t in eos), None)
        assert o["completion_ids"] == (ref if stop is None else ref[:stop + 1])
        assert o["n_tokens"] == len(o["completion_ids"])
        assert o["text"] == tok.decode(o["completion_ids"], skip_special_tokens=True)
    single = generation.generate_greedy(s, tok, PROMPTS, max_new_tokens=n, batch_size=1)
    assert [o["completion_ids"] for o in single] == [o["completion_ids"] for o in out]


def test_shared_prefix_is_encoded_once_and_changes_no_token(pair):
    s, tok, _, _ = pair
    prompts = [HEAD + p for p in PROMPTS]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    n_pre = len(os.path.commonprefix(ids))
    assert n_pre >= forward.PREFIX_MIN_TOKENS
    widths = []
    hook = s.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        out = generation.generate_greedy(s, tok, prompts, max_new_tokens=8, batch_size=2)
    finally:
        hook.remove()
    assert widths[0] == (1, n_pre)  # the prefix once; each batch's prefill then feeds only the rest
    assert widths[1][1] == max(len(x) for x in sorted(ids, key=len)[:2]) - n_pre
    plain = generation.generate_greedy(s, tok, prompts, max_new_tokens=8, batch_size=2, prefix_cache=False)
    for o, p, x in zip(out, plain, ids, strict=True):
        assert o["prompt_ids"] == x == p["prompt_ids"]
        assert o["completion_ids"] == p["completion_ids"] == _reference_greedy(s, x, 8)[:len(o["completion_ids"])]


def test_output_order_follows_input_not_length(pair):
    s, tok, _, _ = pair
    out = generation.generate_greedy(s, tok, PROMPTS, max_new_tokens=4, batch_size=2)
    rev = generation.generate_greedy(s, tok, PROMPTS[::-1], max_new_tokens=4, batch_size=2)
    assert [o["completion_ids"] for o in rev] == [o["completion_ids"] for o in out][::-1]
    assert generation.generate_greedy(s, tok, [], max_new_tokens=4, batch_size=2) == []


def _greedy_with_extra_eos(s, tok, prompts, stop_tok: int, max_new_tokens: int, batch_size: int):
    """``generate_greedy`` with ``stop_tok`` as the generation config's EOS (besides the tokenizer's)."""
    old = s.generation_config.eos_token_id
    s.generation_config.eos_token_id = [stop_tok]
    try:
        out = generation.generate_greedy(s, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    finally:
        s.generation_config.eos_token_id = old
    return out, {stop_tok, tok.eos_token_id}


def test_eos_from_generation_config_list_stops_and_is_included(pair):
    s, tok, _, _ = pair
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    free = [_reference_greedy(s, x, 10) for x in ids]  # what greedy would say with no EOS at all
    stop_tok = free[0][2]  # make prompt 0's third token an extra EOS id, next to the tokenizer's
    out, eos = _greedy_with_extra_eos(s, tok, PROMPTS, stop_tok, 10, 5)
    assert not out[0]["truncated"] and out[0]["n_tokens"] <= 3 and out[0]["completion_ids"][-1] in eos
    for o, full in zip(out, free, strict=True):  # each row stops at its own first EOS (kept), or runs on
        cut = next((j + 1 for j, t in enumerate(full) if t in eos), None)
        assert o["completion_ids"] == full[:cut] and o["truncated"] == (cut is None)
        assert o["n_tokens"] == (10 if cut is None else cut)
    short = generation.generate_greedy(s, tok, PROMPTS, max_new_tokens=1, batch_size=5)  # config restored
    for o, full in zip(short, free, strict=True):
        assert o["n_tokens"] == 1 and o["truncated"] == (full[0] != tok.eos_token_id)


def test_rows_that_stopped_leave_the_batch(pair):
    """A row that produced EOS is dropped from later forwards (no compute on finished rows), and
    the rows still decoding produce exactly what they produce alone."""
    s, tok, _, _ = pair
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    free = [_reference_greedy(s, x, 10) for x in ids]
    stop_tok = free[0][2]
    rows_per_forward = []
    hook = s.register_forward_pre_hook(lambda m, a, kw: rows_per_forward.append(kw["input_ids"].shape[0]),
                                       with_kwargs=True)
    try:
        out, eos = _greedy_with_extra_eos(s, tok, PROMPTS, stop_tok, 10, 5)
    finally:
        hook.remove()
    ends = [next((j + 1 for j, t in enumerate(f) if t in eos), 10) for f in free]
    # forward k (0 = prefill) computes the rows whose completion is longer than k tokens
    assert rows_per_forward == [sum(e > k for e in ends) for k in range(max(ends))]
    assert rows_per_forward[-1] < len(PROMPTS)
    for o, full, e in zip(out, free, ends, strict=True):
        assert o["completion_ids"] == full[:e]


def test_continuous_batching_refills_slots_and_changes_no_token(pair, monkeypatch):
    """Batch of 2 over 5 prompts whose rows stop at different steps: waiting prompts are admitted
    into running batches (caches merged, left-padded) and every completion is still exactly the
    unbatched greedy one."""
    s, tok, _, _ = pair
    # similar lengths, so a running row can be longer than the next admitted prompt (both sides
    # of a merge get padded), behind the shared-prefix cache
    prompts = [HEAD + p for p in ("Tom has 3 apples.", "Sam has 12 pens.", "Anna reads 4 pages.", "0 1 2 3 4",
                                  "A shop sells pens.", "What is 7 times 6?")]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    free = [_reference_greedy(s, x, 9) for x in ids]
    stop_tok = free[1][3]
    merges = []
    real_merge = generation._merge
    monkeypatch.setattr(generation, "_merge", lambda a, b: merges.append((a.attn_B_L.shape[1], b.attn_B_L.shape[1]))
                        or real_merge(a, b))
    monkeypatch.setattr(generation, "REFILL_FRACTION", 2)  # refill as soon as one of the 2 slots is free
    out, eos = _greedy_with_extra_eos(s, tok, prompts, stop_tok, 9, 2)
    ends = [next((j + 1 for j, t in enumerate(f) if t in eos), 9) for f in free]
    assert len(set(ends)) > 1 and any(wa > wb for wa, wb in merges)  # refilled; the newcomers got padded
    for o, full, e, x in zip(out, free, ends, ids, strict=True):
        assert o["prompt_ids"] == x and o["completion_ids"] == full[:e] and o["truncated"] == (e == 9 and
                                                                                           full[8] not in eos)


@torch.inference_mode()
def test_merged_and_trimmed_batches_give_every_row_its_unbatched_logits(pair):
    """The batch surgery of continuous batching, checked on logits (not just argmax tokens): admit
    two groups of different widths, merge them (the narrower one is left-padded), drop the widest
    row (masked leading columns are cut), step twice; each row's logits equal a plain unpadded,
    uncached forward of its own sequence."""
    s, tok, _, _ = pair
    enc = [tok(HEAD + p, add_special_tokens=False)["input_ids"] for p in
           ("Tom has 3 apples.", "What is 7 times 6? Answer with one number please.", "0 1", "Anna reads")]
    prefix = generation.shared_prefix([s], enc)
    cache = forward.prefill(s, prefix, decoding=True)  # the evaluator's in-place cache layers
    assert prefix and cache is not None
    a, _ = generation._admit(s, [0, 1], enc, tok.pad_token_id, prefix, cache)
    b, _ = generation._admit(s, [2, 3], enc, tok.pad_token_id, prefix, cache)
    assert b.attn_B_L.shape[1] < a.attn_B_L.shape[1]
    state = generation._merge(a, b)
    seqs = {r: enc[r] + [int(t)] for r, t in zip(state.rows, state.next_B, strict=True)}

    def step_and_compare(state):
        state, logits_B_V = generation._step(s, state)
        for j, r in enumerate(state.rows):
            ref_V = s(torch.tensor([seqs[r]])).logits[0, -1]
            torch.testing.assert_close(logits_B_V[j], ref_V, atol=1e-5, rtol=1e-5)
            seqs[r].append(int(state.next_B[j]))
        return state

    state = step_and_compare(state)
    state = generation._keep(state, [0, 2, 3])  # row 1 (the longest prompt) leaves
    assert state.rows == [0, 2, 3]
    state = step_and_compare(state)
    width = state.attn_B_L.shape[1]
    state = generation._keep(state, [1, 2])  # only the left-padded newcomers stay
    assert state.rows == [2, 3] and state.attn_B_L.shape[1] < width  # columns masked for both were cut
    assert all(layer.keys.shape[-2] == state.attn_B_L.shape[1] for layer in state.cache.layers)
    for _ in range(2):
        state = step_and_compare(state)


def test_sliding_window_model_falls_back_to_generate_and_matches_reference(tiny):
    from transformers import Qwen2Config

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny["student"])
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=6,
                      max_window_layers=0, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    assert not forward.full_attention(model) and forward.shared_prefix([model], [[1] * 40, [1] * 40 + [2]]) == []
    out = generation.generate_greedy(model, tok, PROMPTS, max_new_tokens=6, batch_size=5)
    for o in out:
        ref = _reference_greedy(model, o["prompt_ids"], 6)
        stop = next((j + 1 for j, t in enumerate(ref) if t == tok.eos_token_id), None)
        assert o["completion_ids"] == ref[:stop]


def test_train_mode_restored_and_backward_still_works(pair):
    s, tok, _, _ = pair
    s.train()
    try:
        generation.generate_greedy(s, tok, PROMPTS[:2], max_new_tokens=3, batch_size=2)
        assert s.training
        ids = torch.tensor([tok("Tom has 3 apples")["input_ids"]])
        s(ids, labels=ids).loss.backward()  # nothing created under inference_mode leaks into autograd
        assert s.model.embed_tokens.weight.grad is not None
    finally:
        s.zero_grad(set_to_none=True)
        s.eval()
    generation.generate_greedy(s, tok, PROMPTS[:1], max_new_tokens=2, batch_size=1)
    assert not s.training


def test_reverse_kl_matches_float64_formula_and_masks():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 11, generator=g) * 3, torch.randn(3, 5, 11, generator=g) * 3
    mask = torch.ones(3, 5)
    mask[1, 3:] = 0
    mask[2, :] = 0
    s[2] = float("nan")  # garbage under the mask must not leak
    kl = ev.reverse_kl_per_token(s, t, mask)
    assert kl.dtype == torch.float32 and kl.shape == (3, 5)
    assert torch.all(kl[mask == 0] == 0)
    ref = _kl64(s, t)
    assert torch.allclose(kl[mask == 1].double(), ref[mask == 1], atol=1e-5)
    assert torch.all(kl[mask == 1] > 0)
    assert torch.allclose(ev.reverse_kl_per_token(t, t, torch.ones(3, 5)), torch.zeros(3, 5), atol=1e-6)
    assert torch.allclose(ev.reverse_kl_per_token(s.bfloat16()[:2], t.bfloat16()[:2], torch.ones(2, 5)),
                          _kl64(s.bfloat16()[:2], t.bfloat16()[:2]).float(), atol=1e-4)


def test_reverse_kl_cuts_padding_rows_to_tokenizer_length():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 12, generator=g), torch.randn(2, 4, 16, generator=g)
    kl = ev.reverse_kl_per_token(s, t, torch.ones(2, 4), vocab_size=10)
    assert torch.allclose(kl.double(), _kl64(s[..., :10], t[..., :10]), atol=1e-5)
    with pytest.raises(ValueError, match="vocab_size"):
        ev.reverse_kl_per_token(s, t, torch.ones(2, 4))
    with pytest.raises(ValueError, match="vocab_size"):
        ev.reverse_kl_per_token(s, t, torch.ones(2, 4), vocab_size=13)


@pytest.mark.parametrize("head", ["", HEAD])
def test_mean_reverse_kl_against_unpadded_float64_and_teacher_sees_student_ids(pair, head):
    s, tok, t, _ = pair
    gens = generation.generate_greedy(s, tok, [head + p for p in PROMPTS], max_new_tokens=6, batch_size=5)
    gens[1] = {**gens[1], "completion_ids": gens[1]["completion_ids"][:2]}  # ragged completions too
    seen = []
    hook = t.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((kwargs["input_ids"].clone(), kwargs.get("attention_mask"))),
        with_kwargs=True)
    try:
        kls = ev.mean_reverse_kl(s, t, gens, batch_size=3, vocab_size=len(tok))
    finally:
        hook.remove()
    prefix, fed = [], []
    for ids, mask in seen:  # a maskless call is the shared prefix, encoded once; batches continue it
        if mask is None:
            prefix = ids[0].tolist()
            continue
        full = torch.cat([torch.tensor([prefix] * len(ids), dtype=torch.long), ids], 1)
        fed += [row[m.bool()].tolist() for row, m in zip(full, mask, strict=True)]
    assert len(prefix) == (len(os.path.commonprefix([g["prompt_ids"] for g in gens])) if head else 0)
    seqs = [g["prompt_ids"] + g["completion_ids"] for g in gens]
    assert fed == sorted(seqs, key=len)  # every row exactly once, batched by length (less padding)
    for g, kl in zip(gens, kls, strict=True):
        seq = torch.tensor([g["prompt_ids"] + g["completion_ids"]])
        p, c = len(g["prompt_ids"]), len(g["completion_ids"])
        with torch.no_grad():  # positions p-1 .. p+c-2 predict the c generated tokens (the last included)
            ref = _kl64(s(seq).logits[0, p - 1:p + c - 1], t(seq).logits[0, p - 1:p + c - 1]).mean()
        assert kl > 0 and math.isclose(kl, float(ref), rel_tol=1e-4, abs_tol=1e-6)
    assert ev.mean_reverse_kl(s, t, gens, batch_size=1, vocab_size=len(tok)) == pytest.approx(kls, rel=1e-4)
    assert ev.mean_reverse_kl(s, s, gens, batch_size=5) == pytest.approx([0.0] * len(gens), abs=1e-5)
    empty = [{**gens[0], "completion_ids": []}]
    assert ev.mean_reverse_kl(s, t, empty, batch_size=2) == [None]


def test_same_tokenizer(pair, tiny):
    _, tok, _, t_tok = pair
    assert ev.same_tokenizer(tok, t_tok)
    assert not ev.same_tokenizer(tok, AutoTokenizer.from_pretrained(tiny["cross_student"]))


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634),
                                                  (10, 10, 0.7225, 1.0), (1, 20, 0.0089, 0.2361)])
def test_wilson_interval_known_values(k, n, lo, hi):
    got = ev.wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)
    mirror = ev.wilson_interval(n - k, n)
    assert got == pytest.approx((1 - mirror[1], 1 - mirror[0]), abs=1e-12)


def test_wilson_interval_edges():
    assert ev.wilson_interval(0, 0) == (0.0, 1.0)
    a, b = ev.wilson_interval(30, 100), ev.wilson_interval(300, 1000)
    assert a[0] < b[0] < 0.3 < b[1] < a[1]  # more data, narrower interval around the same rate
    with pytest.raises(ValueError, match="k <= n"):
        ev.wilson_interval(11, 10)


def test_evaluate_same_tokenizer_records_and_round_trip(pair, tmp_path):
    s, tok, t, t_tok = pair
    cfg = PromptConfig(few_shot=1)
    res = ev.evaluate(s, tok, EXAMPLES, prompt_cfg=cfg, max_new_tokens=8, batch_size=2, teacher=t,
                      teacher_tokenizer=t_tok, divergence_fn=lambda recs: [float(i) for i in range(len(recs))])
    m = res.metrics
    keys = {"accuracy", "ci_low", "ci_high", "n", "n_correct", "avg_generated_tokens", "avg_prompt_tokens",
            "truncation_rate", "format_rate", "mean_reverse_kl", "kl_note", "aligned_divergence",
            "wall_seconds", "generated_tokens_per_second"}
    assert keys <= set(m)
    assert [r["id"] for r in res.records] == [e["id"] for e in EXAMPLES]
    for r, e in zip(res.records, EXAMPLES, strict=True):
        assert r["correct"] == answers.is_correct(r["completion"], e["answer"], r["truncated"])  # the one grader
        assert r["extracted"] == answers.extract_answer(r["completion"], r["truncated"])
        assert r["reference"] == e["answer"] and r["reverse_kl"] > 0 and e["question"] in r["prompt"]
    assert m["n"] == 3 and m["n_correct"] == sum(r["correct"] for r in res.records)
    assert m["kl_note"] is None
    assert m["mean_reverse_kl"] == pytest.approx(sum(r["reverse_kl"] for r in res.records) / 3)
    assert m["aligned_divergence"] == pytest.approx(1.0)
    ratios = [r["logratio_per_char"] for r in res.records if r["completion"]]
    assert ratios and all(isinstance(x, float) for x in ratios)  # every answer with text has one
    assert m["logratio_version"] == 2 and {r["logratio_version"] for r in res.records if r["completion"]} == {2}
    assert m["mean_logratio_per_char"] == pytest.approx(sum(ratios) / len(ratios))
    itself = ev.evaluate(s, tok, EXAMPLES, prompt_cfg=cfg, max_new_tokens=8, batch_size=2, teacher=s,
                         teacher_tokenizer=tok)
    assert abs(itself.metrics["mean_logratio_per_char"] or 0.0) < 1e-6  # a model against itself
    assert m["avg_generated_tokens"] == pytest.approx(sum(r["generated_tokens"] for r in res.records) / 3)
    assert (m["ci_low"], m["ci_high"]) == ev.wilson_interval(m["n_correct"], 3)
    assert m["generated_tokens_per_second"] > 0 and m["wall_seconds"] > 0

    ev.save_eval(res, tmp_path / "eval", "step_0")
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["step_0.json", "step_0.records.jsonl"]
    back = ev.load_eval(tmp_path / "eval", "step_0")
    assert back.metrics == m
    assert [{k: v for k, v in r.items() if k != "messages"} for r in res.records] == back.records
    assert ev.aggregate(back.records) == {k: m[k] for k in ev.aggregate(back.records)}


def test_evaluate_cross_tokenizer_has_no_kl_but_a_note(pair, tiny):
    _, _, t, t_tok = pair
    cross, c_tok = _load(tiny["cross_student"])
    res = ev.evaluate(cross, c_tok, EXAMPLES[:2], prompt_cfg=PromptConfig(few_shot=0), max_new_tokens=4,
                      batch_size=2, teacher=t, teacher_tokenizer=t_tok)
    assert res.metrics["mean_reverse_kl"] is None and res.metrics["kl_note"] == ev.KL_UNDEFINED
    assert all(r["reverse_kl"] is None for r in res.records)


def test_evaluate_plain_text_prompt_gets_bos(tiny):
    from tokenizers.processors import TemplateProcessing

    sp, sp_tok = _load(tiny["sp_student"])  # a base model's tokenizer adds BOS; give the tiny one that habit
    sp_tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", sp_tok.bos_token_id)])
    res = ev.evaluate(sp, sp_tok, EXAMPLES[:2], prompt_cfg=PromptConfig(few_shot=1), max_new_tokens=3,
                      batch_size=2)
    assert res.records[0]["prompt"].rstrip().endswith("Answer:")
    gens = generation.generate_greedy(sp, sp_tok, [res.records[0]["prompt"]], max_new_tokens=1, batch_size=1)
    assert gens[0]["prompt_ids"][0] == sp_tok.bos_token_id
    with pytest.raises(ValueError, match="no examples"):
        ev.evaluate(sp, sp_tok, [], prompt_cfg=PromptConfig(), max_new_tokens=3, batch_size=2)


@pytest.mark.embedded
@pytest.mark.slow
def test_real_student_batched_equals_naive_and_kl_layouts_agree(monkeypatch):
    """The real 0.5B student (fp32): batched + prefix-cached greedy (8 rows: the weight-major decode
    layout is on) == one-at-a-time ``generate``; its reverse KL to the bf16 1.5B teacher is the same
    with and without the shared-prefix cache."""
    import reasoning_gym

    from atlas_lib.core import models
    from atlas_lib.data.prompts import build_messages, render_prompt

    model, tok = models.load_model("qwen2.5-coder-0.5b-instruct", dtype=torch.float32, device="cpu")
    data = reasoning_gym.create_dataset("gsm_symbolic", seed=0, size=8)
    prompts = [render_prompt(tok, build_messages(x["question"], PromptConfig())) for x in data]
    out = generation.generate_greedy(model, tok, prompts, max_new_tokens=16, batch_size=8)
    kwargs = generation.greedy_kwargs(model, tok, 16)
    for p, o in zip(prompts, out, strict=True):
        assert o["prompt_ids"] == tok(p, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([o["prompt_ids"]])
        with torch.no_grad():
            alone = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)[0, ids.shape[1]:]
        assert o["completion_ids"] == alone.tolist()
    teacher, t_tok = models.load_model("qwen2.5-coder-1.5b-instruct", dtype=torch.bfloat16, device="cpu")
    assert ev.same_tokenizer(tok, t_tok)
    cached = ev.mean_reverse_kl(model, teacher, out, batch_size=4, vocab_size=len(tok))
    monkeypatch.setattr(forward, "PREFIX_MIN_TOKENS", 10**9)
    plain = ev.mean_reverse_kl(model, teacher, out, batch_size=4, vocab_size=len(tok))
    assert all(k > 0 for k in cached) and cached == pytest.approx(plain, rel=0.02, abs=1e-4)


def test_records_carry_each_tokens_reverse_kl_for_the_per_problem_page(pair):
    s, tok, t, t_tok = pair
    res = ev.evaluate(s, tok, EXAMPLES, prompt_cfg=PromptConfig(few_shot=1), max_new_tokens=8, batch_size=2,
                      teacher=t, teacher_tokenizer=t_tok)
    for r in res.records:
        pieces = [p for p, _ in r["token_kl"]]
        assert "".join(pieces) == r["completion"]  # the shaded tokens spell the completion
        assert len(pieces) == r["generated_tokens"]
        assert sum(k for _, k in r["token_kl"]) / len(pieces) == pytest.approx(r["reverse_kl"], abs=1e-3)


def test_token_pieces_complete_split_characters(pair):
    _, tok, _, _ = pair
    ids = tok("7 × 8 = 56 ✓", add_special_tokens=False)["input_ids"]
    assert "".join(ev.token_pieces(tok, ids)) == tok.decode(ids, skip_special_tokens=True)


def _closed_form_logp(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """Sum of log p(token | everything before it) over the completion, one unbatched float64 forward."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + completion_ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[len(prompt_ids) + j - 1, t] for j, t in enumerate(completion_ids)))


def _stopped_and_cut(pair):
    s, tok, t, _ = pair
    p_ids = forward.encode_prompts(tok, [PROMPTS[0]])[0]
    text_ids = tok("3 + 5 = 8. Final Answer: 8", add_special_tokens=False)["input_ids"]
    stop = forward.eos_token_ids(s, tok)[0]
    gens = [{"prompt_ids": p_ids, "completion_ids": text_ids + [stop], "truncated": False},
            {"prompt_ids": p_ids, "completion_ids": text_ids, "truncated": True}]
    return ev.score_completions(s, t, gens, batch_size=2, vocab_size=len(tok)), p_ids, text_ids, stop


def test_logratio_of_a_finished_answer_counts_its_stop_token_in_closed_form(pair):
    s, _, t, _ = pair
    (stopped, _), p_ids, text_ids, stop = _stopped_and_cut(pair)
    for model, key in ((s, "logp_student"), (t, "logp_teacher")):
        assert stopped[key] == pytest.approx(_closed_form_logp(model, p_ids, text_ids + [stop]), abs=1e-4)


def test_logratio_of_a_cut_answer_scores_its_text_only_in_closed_form(pair):
    s, _, t, _ = pair
    (_, cut), p_ids, text_ids, _ = _stopped_and_cut(pair)
    for model, key in ((s, "logp_student"), (t, "logp_teacher")):
        assert cut[key] == pytest.approx(_closed_form_logp(model, p_ids, text_ids), abs=1e-4)


def test_a_cut_answer_no_longer_scores_like_a_finished_one(pair):
    (stopped, cut), *_ = _stopped_and_cut(pair)
    assert stopped["logp_student"] - stopped["logp_teacher"] != pytest.approx(
        cut["logp_student"] - cut["logp_teacher"], abs=1e-4)


def test_records_scored_under_the_old_rule_are_never_passed_off_as_current():
    new = {"correct": True, "generated_tokens": 3, "prompt_tokens": 5, "truncated": False, "extracted": "1",
           "logratio_per_char": 0.1, "logratio_version": 2}
    old = {k: v for k, v in new.items() if k != "logratio_version"}
    assert ev.aggregate([new, new])["logratio_version"] == 2
    assert ev.aggregate([new, old])["logratio_version"] == 1
