"""Cross-tokenizer alignment, loss and step: hand-made strings, tiny tokenizers, tiny models."""

from __future__ import annotations

import types
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_lib.data.prompts import render_prompt
from atlas_lib.methods.cross_tokenizer import alignment, objective, step, vocab_map
from atlas_lib.methods.cross_tokenizer.alignment import align_ends, encode_with_completion, ends_from_ids
from atlas_lib.methods.cross_tokenizer.config import CrossTokenizerConfig

TEXT = "Final Answer: 1,250 apples"
MSGS = [{"role": "user", "content": "Tom has 3 apples and buys 5 more. How many apples does he have?"}]


@pytest.fixture(scope="module")
def toks(tiny):
    from transformers import AutoTokenizer

    return {k: AutoTokenizer.from_pretrained(tiny[k]) for k in ("student", "cross_student", "sp_student")}


@pytest.fixture(scope="module")
def models(tiny):
    from transformers import AutoModelForCausalLM

    return {k: AutoModelForCausalLM.from_pretrained(tiny[k]) for k in ("student", "teacher", "cross_student",
                                                                        "sp_student")}


def byte_fallback_tokenizer():
    """A Llama-2/Gemma-style SentencePiece BPE: ``▁`` for spaces, ``<0xNN>`` for unknown chars."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    merges = [("▁", "F"), ("▁F", "i"), ("▁Fi", "n"), ("a", "l"), ("▁Fin", "al"), ("1", "2"), ("▁", "c"),
              ("▁c", "a")]
    for piece in list("▁Finalcae12") + [a + b for a, b in merges]:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>",
                               fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def check_spans(al, text):
    """Two-sided text spans tile the text in order and each side's tokens cover exactly their chars."""
    assert "".join(text[a:b] for a, b in al.chars) == text
    assert [a for a, _ in al.chars[1:]] == [b for _, b in al.chars[:-1]]
    for side in (al.student, al.teacher):
        flat = [i for g in side for i in g]
        assert flat == sorted(flat) == list(range(len(flat)))


# ---- alignment ---------------------------------------------------------------------------------

def test_identical_tokenizers_give_one_to_one_spans(toks):
    tok = toks["student"]
    al = alignment.align_by_offsets(TEXT, tok, tok)
    n = len(tok(TEXT, add_special_tokens=False)["input_ids"])
    assert al.student == al.teacher == [[i] for i in range(n)]
    check_spans(al, TEXT)


def test_merge_and_split_by_hand():
    # student "12" + "3" vs teacher "1" + "23": one span "123"; then " a" vs " " + "a"
    al = align_ends([2, 3, 5], [1, 3, 4, 5], "123 a")
    assert al.student == [[0, 1], [2]] and al.teacher == [[0, 1], [2, 3]]
    assert al.chars == [(0, 3), (3, 5)]
    al = align_ends([1, 2], [2], "12")  # a split: "1","2" vs "12"
    assert al.student == [[0, 1]] and al.teacher == [[0]]


def test_merges_and_splits_between_real_tokenizers(toks):
    s, t = toks["student"], toks["cross_student"]
    al = alignment.align_by_offsets(TEXT, s, t)
    check_spans(al, TEXT)
    s_ids, t_ids = (tok(TEXT, add_special_tokens=False)["input_ids"] for tok in (s, t))
    for sg, tg, (a, b) in zip(al.student, al.teacher, al.chars, strict=True):
        assert s.decode([s_ids[i] for i in sg]) == t.decode([t_ids[i] for i in tg]) == TEXT[a:b]
    assert any(len(sg) > 1 for sg in al.student) and any(len(tg) > 1 for tg in al.teacher)


def test_special_tokens_pair_at_the_end_and_stand_alone_inside():
    al = align_ends([1, None, 3, None], [3, None], "abc")
    assert al.student == [[1], [0, 2], [3]] and al.teacher == [[], [0], [1]]
    assert al.chars[-1] == (3, 3) and al.two_sided() == [1, 2]
    assert al.span_index("student", 4) == [0, -1, 0, 1]


def test_bytelevel_vs_sentencepiece_whitespace(toks):
    s, t = toks["cross_student"], toks["sp_student"]
    assert (alignment.tokenizer_kind(s), alignment.tokenizer_kind(t)) == ("bytelevel", "sentencepiece")
    al = alignment.align_by_offsets(TEXT, s, t)
    check_spans(al, TEXT)
    assert al.chars == [(0, 5), (5, 13), (13, 19), (19, 26)]  # SentencePiece pieces end at word ends
    al2 = alignment.align_by_offsets(TEXT, t, s, student_ids=t(TEXT, add_special_tokens=False)["input_ids"])
    assert al2.chars == al.chars


def test_byte_fallback_pieces_merge_into_their_character(toks):
    bf, bl = byte_fallback_tokenizer(), toks["student"]
    assert alignment.tokenizer_kind(bf) == "sentencepiece"
    text = " Final café 12😀"
    ids = bf(text, add_special_tokens=False)["input_ids"]
    assert sum(p.startswith("<0x") for p in bf.convert_ids_to_tokens(ids)) == 7  # f, é (2), 😀 (4)
    al = alignment.align_by_offsets(text, bl, bf)
    check_spans(al, text)
    assert al.chars[-1] == (len(text) - 1, len(text))
    assert len(al.teacher[-1]) == 4 and len(al.student[-1]) == 4
    by_ids = alignment.align_by_offsets(text, bf, bl, student_ids=ids)  # incremental decoding of byte pieces
    assert by_ids.chars == al.chars and by_ids.student == al.teacher


def test_incremental_decoding_matches_offsets(toks):
    for tok in [*toks.values(), byte_fallback_tokenizer()]:
        for text in (TEXT, "x é😀 y\n\nz", "12 * 2 = 24."):
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ends, decoded = ends_from_ids(enc["input_ids"] + [tok.eos_token_id], tok)
            if decoded != text:  # e.g. <unk> for chars outside a tiny vocabulary
                continue
            assert ends == [e for _, e in enc["offset_mapping"]] + [None]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(list("ab 12,.:\n\té€😀ñ") + ["Final", " Answer", "apples"]),
                    min_size=1, max_size=20).map("".join).filter(str.strip))
def test_any_text_tiles_between_bytelevel_and_byte_fallback(toks, text):
    bl, bf = toks["cross_student"], byte_fallback_tokenizer()
    al = alignment.align_by_offsets(text, bl, bf)
    check_spans(al, text)
    assert al.two_sided() == list(range(len(al.chars)))
    ids = bf(text, add_special_tokens=False)["input_ids"]
    assert alignment.align_by_offsets(text, bf, bl, student_ids=ids).chars == al.chars


def test_decoding_in_context_keeps_the_sentencepiece_space(toks):
    tok = toks["sp_student"]
    ids = tok("Answer: 8", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids[-1:]) == ["▁8"]
    assert ends_from_ids(ids[-1:], tok)[1] == "8"
    assert ends_from_ids(ids[-1:], tok, context=ids[:-1]) == ([2], " 8")


def test_teacher_rendering_finds_the_completion(toks):
    tok = toks["student"]
    prompt = render_prompt(tok, MSGS)
    ids, first, ends = encode_with_completion(tok, prompt, TEXT)
    assert tok.decode(ids[first:]) == TEXT and ends[-1] == len(TEXT)


def test_gold_supported_mirrors_trl(toks):
    assert step.gold_supported(toks["student"], toks["cross_student"])[0]
    ok, reason = step.gold_supported(toks["cross_student"], toks["sp_student"])
    assert not ok and "teacher" in reason and "sentencepiece" in reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.utils import encode_with_byte_offsets
    with pytest.raises(NotImplementedError):  # what GOLD does with the pair we refuse
        encode_with_byte_offsets(toks["sp_student"].backend_tokenizer, [TEXT])


# ---- loss --------------------------------------------------------------------------------------

@pytest.mark.parametrize("beta,temperature", [(0.0, 1.0), (0.3, 1.0), (1.0, 2.0), (0.5, 0.7)])
def test_identity_loss_is_trl_generalized_jsd(beta, temperature):
    from trl.experimental.gkd import GKDTrainer

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 6, 11, generator=g), torch.randn(2, 6, 11, generator=g) * 2
    ids = torch.randint(0, 11, (2, 6), generator=g)
    span = torch.arange(6).repeat(2, 1)
    span[1, 4:] = -1  # padding
    loss, st = objective.aligned_loss(s, t, ids, ids, span, span, vocab_map.VocabMap("identity"), beta=beta,
                               temperature=temperature)
    labels = ids.masked_fill(span < 0, -100)
    ref = GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=temperature)
    assert st["spans"] == 10 and st["span_term"] == 0.0
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    same, _ = objective.aligned_loss(s, s, ids, ids, span, span, vocab_map.VocabMap("identity"), beta=beta)
    assert abs(same.item()) < 1e-6


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_objective_uses_the_evaluators_generalized_jsd(beta):
    """One GJSD in the kit: per row, and through the whole identity-vocabulary loss, the
    cross-tokenizer objective equals ``evaluation.divergence.generalized_jsd`` on the same logits."""
    from atlas_lib.evaluation.divergence import generalized_jsd

    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 13, generator=g) * 2, torch.randn(5, 13, generator=g) * 2
    rows = objective.gjsd_logprobs(torch.log_softmax(s, -1), torch.log_softmax(t, -1), beta)
    want = [generalized_jsd(s[i:i + 1], t[i:i + 1], beta).item() for i in range(5)]
    assert rows.tolist() == pytest.approx(want, rel=1e-6, abs=1e-7)
    ids = torch.randint(0, 13, (1, 5), generator=g)
    span = torch.arange(5)[None]  # one token per span: the loss is the mean per-position GJSD
    loss, _ = objective.aligned_loss(s[None], t[None], ids, ids, span, span, vocab_map.VocabMap("identity"),
                                     beta=beta)
    assert loss.item() == pytest.approx(generalized_jsd(s, t, beta).item() / 5, rel=1e-6, abs=1e-7)


def _consistent_logits(al, side, ids, bucket_V, eos, eps, decoys):
    """Logits of a model that reads the text the same way under any tokenization: at a span start
    it continues the text with prob 1 - eps[k] and otherwise stops or jumps to ``decoys`` buckets
    (same masses on both sides); inside a span the text continues with certainty."""
    groups = al.student if side == "student" else al.teacher
    probs = torch.full((len(ids), len(bucket_V)), 1e-30)
    rep = {}  # one token per bucket carries that bucket's decoy mass
    for i, c in enumerate(bucket_V.tolist()):
        rep.setdefault(c, i)
    for k, g in enumerate(al.two_sided()):
        first, rest = groups[g][0], groups[g][1:]
        probs[first, ids[first]] = 1 - eps[k]
        probs[first, eos] = eps[k] / 2
        for d in decoys[k]:
            probs[first, rep[d]] += eps[k] / 2 / len(decoys[k])
        for j in rest:
            probs[j, ids[j]] = 1.0
    return probs.log()[None]


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_zero_loss_when_both_models_read_the_same_text_distribution(toks, beta):
    s_tok, t_tok = toks["student"], toks["sp_student"]
    text = " " + TEXT  # SentencePiece's prefix space is then real text on both sides
    al = alignment.align_by_offsets(text, s_tok, t_tok)
    s_ids, t_ids = (tok(text, add_special_tokens=False)["input_ids"] for tok in (s_tok, t_tok))
    vm = vocab_map.build_vocab_map(s_tok, t_tok, student_eos=(s_tok.eos_token_id,),
                            teacher_eos=(t_tok.eos_token_id,))
    assert vm.mode == "first_byte"
    k = len(al.two_sided())
    g = torch.Generator().manual_seed(1)
    eps = (0.05 + 0.5 * torch.rand(k, generator=g)).tolist()
    both = sorted(set(vm.student_bucket_V.tolist()) & set(vm.teacher_bucket_V.tolist()) - {256, 257})
    decoys = [[both[(3 * j + 7) % len(both)], both[(5 * j + 1) % len(both)]] for j in range(k)]
    for j, g_ in enumerate(al.two_sided()):  # a decoy must not be the true next byte
        true = int(vm.student_bucket_V[s_ids[al.student[g_][0]]])
        decoys[j] = [d for d in decoys[j] if d != true] or [both[0] if both[0] != true else both[1]]
    s_lg = _consistent_logits(al, "student", s_ids, vm.student_bucket_V, s_tok.eos_token_id, eps, decoys)
    t_lg = _consistent_logits(al, "teacher", t_ids, vm.teacher_bucket_V, t_tok.eos_token_id, eps, decoys)
    s_span = torch.tensor([al.span_index("student", len(s_ids))])
    t_span = torch.tensor([al.span_index("teacher", len(t_ids))])
    ids = torch.tensor([s_ids]), torch.tensor([t_ids])
    loss, st = objective.aligned_loss(s_lg, t_lg, *ids, s_span, t_span, vm, beta=beta)
    assert st["spans"] == k >= 4 and abs(loss.item()) < 1e-5
    padded = [torch.nn.functional.pad(x, (0, 7), value=-80.0) for x in (s_lg, t_lg)]  # padded embedding rows
    assert abs(objective.aligned_loss(*padded, *ids, s_span, t_span, vm, beta=beta)[0].item()) < 1e-5
    assert any(len(al.student[j]) != len(al.teacher[j]) for j in al.two_sided())  # really two tokenizations
    eps[1] = 0.9  # the teacher now doubts one span: the loss sees it
    t_lg = _consistent_logits(al, "teacher", t_ids, vm.teacher_bucket_V, t_tok.eos_token_id, eps, decoys)
    bad, _ = objective.aligned_loss(s_lg, t_lg, *ids, s_span, t_span, vm, beta=beta)
    assert bad.item() > 1e-3


def test_shared_string_map_joins_equal_pieces(toks):
    s, t = toks["student"], toks["cross_student"]
    vm = vocab_map.build_vocab_map(s, t, mode="shared_string", student_eos=(s.eos_token_id,),
                            teacher_eos=(t.eos_token_id,))
    sid, tid = s.convert_tokens_to_ids("Ġapples"), t.convert_tokens_to_ids("Ġapp")
    assert vm.student_bucket_V[sid] == vm.num_buckets - 1  # "Ġapples" is not a cross_student piece
    same = s.convert_tokens_to_ids(":"), t.convert_tokens_to_ids(":")
    assert vm.student_bucket_V[same[0]] == vm.teacher_bucket_V[same[1]] < vm.num_buckets - 2
    assert vm.teacher_bucket_V[tid] != vm.student_bucket_V[same[0]]
    with pytest.raises(ValueError, match="vocab map mode"):
        vocab_map.build_vocab_map(s, t, mode="bytes")


def test_aligned_loss_and_trl_gold_uld_decrease_together(models, toks, tiny):
    """SGD on the kit's loss (ByteLevel pair: tiny Qwen2 teacher -> Llama cross student) also lowers
    TRL GOLD's own ULD loss (extended ULD, "bayesian" chain-rule merge) on the same completions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gold.gold_trainer import ULDLoss, build_teacher_inputs_from_texts
    student = AutoModelForCausalLM.from_pretrained(tiny["cross_student"])
    teacher, s_tok = models["teacher"], toks["cross_student"]
    t_tok = AutoTokenizer.from_pretrained(tiny["teacher"])
    comps = ["Tom has 3 + 5 = 8 apples. Final Answer: 8",
             "A shop sells 12 pens at $2 each. 12 * 2 = 24. Final Answer: 24"]
    s_prompts, t_prompts = [render_prompt(s_tok, MSGS)] * 2, [render_prompt(t_tok, MSGS)] * 2
    uld = ULDLoss(types.SimpleNamespace(
        uld_crossentropy_weight=0.0, uld_distillation_weight=1.0, uld_student_temperature=1.0,
        uld_teacher_temperature=1.0, uld_skip_student_eos=True, uld_skip_teacher_eos=True,
        use_extended_uld=True, uld_token_merge_strategy="bayesian", uld_use_hybrid_loss=False), s_tok, t_tok)
    S = build_teacher_inputs_from_texts(s_tok, s_prompts, comps)
    T = build_teacher_inputs_from_texts(t_tok, t_prompts, comps)

    def uld_loss() -> float:
        with torch.no_grad():
            s_logits = student(input_ids=S[0], attention_mask=S[2]).logits
            t_logits = teacher(input_ids=T[0], attention_mask=T[2]).logits
            return float(uld(s_logits, t_logits, S[1], T[1], S[0], T[0], S[3], T[3]))

    cfg = CrossTokenizerConfig(lmbda=0.0, beta=0.5)  # off-policy: the same fixed completions every step
    opt = torch.optim.SGD(student.parameters(), lr=1.0)
    ours, theirs = [], []
    for _ in range(4):
        theirs.append(uld_loss())
        loss, m = step.cross_tokenizer_step(student, s_tok, teacher, t_tok, s_prompts, cfg=cfg,
                                          teacher_prompts=t_prompts, references=comps)
        ours.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m["on_policy"] == 0.0 and m["one_to_one"] < 1.0  # genuinely different tokenizations
    assert ours[-1] < ours[0] and theirs[-1] < theirs[0]


# ---- the step and the divergence ---------------------------------------------------------------

@pytest.mark.parametrize("student_name", ["cross_student", "sp_student"])
def test_step_runs_on_a_different_tokenizer(models, toks, tiny, student_name):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    student, s_tok = models[student_name], toks[student_name]
    t_tok = AutoTokenizer.from_pretrained(tiny["teacher"])
    cfg = CrossTokenizerConfig(max_completion_length=12, beta=0.5)
    student.zero_grad()
    loss, m = step.cross_tokenizer_step(student, s_tok, models["teacher"], t_tok,
                                      [render_prompt(s_tok, MSGS)] * 2, cfg=cfg,
                                      teacher_prompts=[render_prompt(t_tok, MSGS)] * 2)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0 and m["spans"] > 0
    assert sum(float(p.grad.abs().sum()) for p in student.parameters() if p.grad is not None) > 0
    assert m["completion_tokens"] > 0 and m["align_seconds"] >= 0 and m["aligned_divergence"] >= 0
    assert not any(p.requires_grad and p.grad is not None for p in models["teacher"].parameters())


def test_step_with_the_teacher_as_its_own_student_is_zero(models, toks):
    model, tok = models["teacher"], toks["student"]
    prompts = [render_prompt(tok, MSGS)] * 2
    cfg = CrossTokenizerConfig(max_completion_length=8, lmbda=0.0)
    loss, m = step.cross_tokenizer_step(model, tok, model, tok, prompts, cfg=cfg, teacher_prompts=prompts,
                                      references=["3 + 5 = 8", "Final Answer: 8"])
    assert m["on_policy"] == 0.0 and m["one_to_one"] == 1.0
    assert abs(loss.item()) < 1e-6 and abs(m["aligned_divergence"]) < 1e-6


def test_divergence_fn_is_per_record_and_zero_against_itself(models, toks, tiny):
    from transformers import AutoTokenizer

    t_tok = AutoTokenizer.from_pretrained(tiny["teacher"])
    recs = [{"prompt": render_prompt(toks["sp_student"], MSGS), "messages": MSGS, "completion": c}
            for c in ("3 + 5 = 8. Final Answer: 8", "", "Final Answer: 1,250 apples")]
    out = step.aligned_divergence_fn(models["sp_student"], toks["sp_student"], models["teacher"], t_tok)(recs)
    div = [d["aligned_divergence"] for d in out]
    assert len(div) == 3 and div[1] == 0.0 and div[0] > 0 and div[2] > 0
    assert out[1]["logratio_per_char"] is None  # an empty answer has no characters to score
    self_recs = [{**r, "prompt": render_prompt(t_tok, MSGS)} for r in recs]
    same = step.aligned_divergence_fn(models["teacher"], t_tok, models["teacher"], t_tok)(self_recs)
    assert max(abs(d["aligned_divergence"]) for d in same) < 1e-6
    # the tokenizer-independent divergence of a model against itself is zero too
    assert max(abs(d["logratio_per_char"]) for d in same if d["logratio_per_char"] is not None) < 1e-5


def test_divergence_with_the_shared_prefix_cache_equals_the_full_forward(models, toks, tiny, monkeypatch):
    from transformers import AutoTokenizer

    from atlas_lib.core.sections import PromptConfig
    from atlas_lib.data.prompts import build_messages
    from atlas_lib.evaluation import forward

    t_tok = AutoTokenizer.from_pretrained(tiny["teacher"])
    cfg = PromptConfig(few_shot=1)
    questions = ["Tom has 3 apples and buys 5 more. How many?", "What is 12 times 4?", "Add 7 and 9."]
    recs = [{"prompt": render_prompt(toks["cross_student"], build_messages(q, cfg)), "messages": build_messages(q, cfg),
             "completion": c} for q, c in zip(questions, ("3 + 5 = 8. Final Answer: 8", "Final Answer: 48", "16"),
                                               strict=True)]
    s_prompts = forward.encode_prompts(toks["cross_student"], [r["prompt"] for r in recs])
    assert len(forward.shared_prefix([models["cross_student"]], s_prompts)) >= forward.PREFIX_MIN_TOKENS
    fn = step.aligned_divergence_fn(models["cross_student"], toks["cross_student"], models["teacher"], t_tok,
                                    batch_size=2)
    cached = fn(recs)
    monkeypatch.setattr(forward, "PREFIX_MIN_TOKENS", 10**9)  # no prefix is worth caching: full forwards
    full = fn(recs)
    for key in ("aligned_divergence", "logratio_per_char"):
        assert [d[key] for d in cached] == pytest.approx([d[key] for d in full], abs=1e-4), key
    assert all(d["aligned_divergence"] > 0 for d in full)


def test_the_sequence_log_ratio_is_the_same_from_token_ids_and_from_text(models, toks):
    """A same-tokenizer pair scored two ways, the evaluator's (the student's own ids, reverse-KL pass) and
    the cross-tokenizer evaluator's (each model re-tokenizes the answer text), gives one number: the
    log-ratio is a property of the text, not of the path that tokenized it."""
    from atlas_lib.evaluation import evaluate as ev
    from atlas_lib.evaluation import forward, logratio

    tok = toks["student"]
    prompt = render_prompt(tok, MSGS)
    text = "3 + 5 = 8. Final Answer: 8"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tok(prompt + text, add_special_tokens=False)["input_ids"][len(p_ids):]
    gens = [{"prompt_ids": p_ids, "completion_ids": c_ids, "truncated": True}]  # no stop token to leave out
    sc = ev.score_completions(models["student"], models["teacher"], gens, batch_size=1, vocab_size=len(tok))[0]
    from_ids = logratio.per_char(sc["logp_student"], sc["logp_teacher"], text)
    from_text = step.aligned_divergence_fn(models["student"], tok, models["teacher"], tok)(
        [{"prompt": prompt, "messages": MSGS, "completion": text}])[0]["logratio_per_char"]
    assert from_ids == pytest.approx(from_text, abs=1e-4)
    assert abs(from_ids) > 1e-3  # two different models: not trivially zero
    itself = ev.score_completions(models["student"], models["student"], gens, batch_size=1, vocab_size=len(tok))[0]
    assert itself["logp_student"] == pytest.approx(itself["logp_teacher"]) and itself["logp_student"] < 0
    # a finished answer: both paths count the stop token (logratio.VERSION 2) and still agree
    stop = forward.eos_token_ids(models["student"], tok)[0]
    done = [{"prompt_ids": p_ids, "completion_ids": c_ids + [stop], "truncated": False}]
    sc = ev.score_completions(models["student"], models["teacher"], done, batch_size=1, vocab_size=len(tok))[0]
    from_text = step.aligned_divergence_fn(models["student"], tok, models["teacher"], tok)(
        [{"prompt": prompt, "messages": MSGS, "completion": text, "truncated": False}])[0]["logratio_per_char"]
    assert logratio.per_char(sc["logp_student"], sc["logp_teacher"], text) == pytest.approx(from_text, abs=1e-4)


def test_sequence_logprob_matches_the_closed_form():
    import torch

    from atlas_lib.evaluation import logratio

    logits_B_C_V = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])  # uniform, then softmax (e^2, 1)
    ids_B_C = torch.tensor([[1, 0]])
    both = logratio.sequence_logprob_B(logits_B_C_V, ids_B_C, torch.tensor([[True, True]]))
    first = logratio.sequence_logprob_B(logits_B_C_V, ids_B_C, torch.tensor([[True, False]]))
    import math

    assert float(first[0]) == pytest.approx(math.log(0.5))
    assert float(both[0]) == pytest.approx(math.log(0.5) + 2.0 - math.log(math.exp(2.0) + 1.0))
    assert logratio.per_char(-3.0, -5.0, "abcd") == pytest.approx(0.5) and logratio.per_char(0.0, 0.0, "") is None
