"""``atlas check``: what a student/teacher pair gets wrong before it trains (issue 42).

For every student/teacher pair a parameter set uses (``models.*`` for GKD, off-policy, GRPO's
reverse-KL column and the baselines; ``cross_tokenizer.*`` and ``gold.*`` when enabled) it reports:

* whether the two share a tokenizer and, across tokenizers, which alignment each arm uses;
* the same conversation (the kit's prompt on a held-out question) rendered by each chat template:
  identical or not, and the first differing span with a guess at its kind (BOS, default system
  prompt, generation prompt, other markup);
* stop tokens: each model's EOS, the id its template closes an assistant turn with, its generation
  config's stop ids; whether the teacher stops where the student does; whether pad = eos masks the
  stop token's label on each label path a trainer uses; the teacher's probability of the student's
  stop token right after a reference answer;
* what a template difference costs: on at most :data:`MAX_ANSWERS` held-out (validation) reference
  answers, the teacher's NLL per answer token with the prompt in its own template and in the
  template it reads in each arm (nats/token; the gap is the second minus the first).

Which template the teacher reads per arm is ``models.teacher_prompt`` (own: the prompt is re-rendered
with the teacher's template, the completion ids are unchanged; student: the student's rendering, as TRL
does). Only the teacher's weights are loaded (once per name); the students' stop ids come from their
tokenizer and generation config. :func:`require_teacher_prompt` is the trainers' refusal above
``models.teacher_prompt_max_gap``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from atlas_lib.core import models, registry
from atlas_lib.core.config import Params
from atlas_lib.core.embedded import EMBEDDED
from atlas_lib.core.validate import ParamsError
from atlas_lib.data.prompts import build_messages, format_solution, has_chat_template, render_prompt
from atlas_lib.evaluation.evaluate import same_tokenizer
from atlas_lib.evaluation.forward import completion_logits, prefix_cache

log = logging.getLogger(__name__)
MAX_ANSWERS = 8  # reference answers scored per pair: the gap is a per-token mean, 8 answers hold ~300 tokens
_PROBE = "PAIRCHECKPROBE"
_NOT_KIT = "hf_lm_collator"  # the label path no kit arm uses  # assistant text whose end marks where a template closes the turn

# The evaluation's reverse-KL column: every same-tokenizer row's answers scored by the teacher on the
# student's own ids, prompt included. Not a method, so it is described here; methods describe themselves
# in the registry (teacher_template, alignment).
EVALUATION = "evaluation"
_EVALUATION_ALIGNMENT = "the evaluation's reverse-KL column (every same-tokenizer row)"


def _kind(arm: str) -> str:
    return "none" if arm == EVALUATION else registry.get(arm).teacher_template


def alignment(arm: str) -> str:
    return _EVALUATION_ALIGNMENT if arm == EVALUATION else registry.get(arm).alignment


def teacher_view(params: Params, arm: str) -> str:
    """``own`` or ``student``: the template whose rendering of the prompt the teacher reads in ``arm``."""
    kind = _kind(arm)
    if kind == "own":
        return "own"
    if kind == "none":
        return "student"  # the evaluator scores the student's own ids, prompt included
    if getattr(params.section(arm), "engine", None) == "distillation":
        return "student"  # TRL's DistillationTrainer builds the teacher's inputs itself
    return params.models.teacher_prompt


def arms(params: Params) -> dict[tuple[str, str], list[str]]:
    """``{(student, teacher): [arm, ...]}`` for every pair the parameter set uses."""
    out: dict[tuple[str, str], list[str]] = {}
    enabled = params.enabled()
    same = [m.key for m in registry.methods() if m.key in enabled and not m.own_student]
    out[(params.models.student, params.models.teacher)] = [*same, EVALUATION]
    for m in registry.methods():
        if m.key in enabled and m.own_student:
            s = params.section(m.key)
            out.setdefault((s.student, s.teacher), []).append(m.key)
    return out


# ---- templates ----------------------------------------------------------------------------------


def first_difference(a: str, b: str, a_bos: str | None = None, b_bos: str | None = None) -> dict | None:
    """Where two renderings first differ: the index, ~70 characters of each from a little before it,
    and a guess at the kind of difference; None when they are identical."""
    if a == b:
        return None
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    tail_a, tail_b = a[i:], b[i:]
    if i == 0 and ((a_bos and a.startswith(a_bos)) or (b_bos and b.startswith(b_bos))):
        kind = "BOS"
    elif "system" in (a[max(0, i - 40):i + 80] + b[max(0, i - 40):i + 80]).lower():
        kind = "default system prompt"  # a system turn the conversation did not write (or a second one)
    elif min(len(tail_a), len(tail_b)) < 40:
        kind = "generation prompt"
    else:
        kind = "template markup"
    lo = max(0, i - 20)
    return {"at": i, "kind": kind, "student": a[lo:i + 70], "teacher": b[lo:i + 70]}


def _gen_stop_ids(name: str, trust_remote_code: bool, model=None) -> list[int]:
    """The generation config's stop ids (with the kit's embedded additions), without loading weights."""
    if model is not None:
        cfg = model.generation_config
    else:
        from transformers import GenerationConfig

        try:
            cfg = GenerationConfig.from_pretrained(models.resolve_path(name), trust_remote_code=trust_remote_code)
        except OSError:  # no generation_config.json: the tokenizer's EOS is all there is
            return list(EMBEDDED[name].stop_ids) if name in EMBEDDED else []
    have = cfg.eos_token_id
    have = [have] if isinstance(have, int) else list(have or [])
    extra = EMBEDDED[name].stop_ids if name in EMBEDDED else ()
    return have + [i for i in extra if i not in have]


def chat_end_id(tok) -> int | None:
    """The first token a chat template writes after an assistant turn's text (``<|im_end|>``), or
    the EOS for a model without a template."""
    if not has_chat_template(tok):
        return tok.eos_token_id
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}],
                                       tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses this shape: fall back to the EOS
        return tok.eos_token_id
    after = text[text.rfind(_PROBE) + len(_PROBE):]
    ids = tok(after, add_special_tokens=False)["input_ids"]
    special = set(tok.all_special_ids) | {i for i, t in getattr(tok, "added_tokens_decoder", {}).items() if t.special}
    return next((i for i in ids if i in special), tok.eos_token_id)


def stop_tokens(name: str, tok, trust_remote_code: bool, model=None) -> dict:
    end = chat_end_id(tok)
    gen = _gen_stop_ids(name, trust_remote_code, model)
    return {"eos": _tok_info(tok, tok.eos_token_id), "chat_end": _tok_info(tok, end),
            "generation_stop_ids": gen, "pad": _tok_info(tok, tok.pad_token_id),
            "pad_is_eos": tok.pad_token_id is not None and tok.pad_token_id in {tok.eos_token_id, end, *gen},
            "stop": end if end is not None else tok.eos_token_id}


def _tok_info(tok, i: int | None) -> dict | None:
    return None if i is None else {"id": int(i), "token": tok.convert_ids_to_tokens(int(i))}


# ---- label paths: does pad = eos take the stop token's label away? -------------------------------


def _collator_labels(tok, messages: list[dict]) -> tuple[list[int], list[int]]:
    """TRL's DataCollatorForChatML (GKD's dataset batches): (input_ids, labels) of one row."""
    from trl.experimental.utils import DataCollatorForChatML

    out = DataCollatorForChatML(tokenizer=tok)([{"messages": messages}])
    return out["input_ids"][0].tolist(), out["labels"][0].tolist()


def _on_policy_labels(tok, prompt_ids: list[int], completion: list[int], stop: int, gen_stop: list[int]):
    """GKDTrainer.generate_on_policy_outputs on a fixed sample (completion, stop, two pads)."""
    from types import SimpleNamespace

    from transformers import GenerationConfig
    from trl.experimental.gkd import GKDTrainer

    seq = torch.tensor([prompt_ids + completion + [stop] + [tok.pad_token_id] * 2])
    fake = SimpleNamespace(generate=lambda **_: SimpleNamespace(sequences=seq))
    inputs = {"prompts": torch.tensor([prompt_ids]), "prompt_attention_mask": torch.ones(1, len(prompt_ids), dtype=torch.long)}
    _, _, labels = GKDTrainer.generate_on_policy_outputs(fake, inputs, GenerationConfig(eos_token_id=gen_stop or [stop]))
    return seq[0].tolist(), labels[0].tolist()


def _lm_collator_labels(tok, ids: list[int]) -> tuple[list[int], list[int]]:
    """transformers' DataCollatorForLanguageModeling (a plain SFT collator; not used by the kit's arms)."""
    from transformers import DataCollatorForLanguageModeling

    out = DataCollatorForLanguageModeling(tok, mlm=False)([{"input_ids": ids}])
    return out["input_ids"][0].tolist(), out["labels"][0].tolist()


def stop_label_paths(tok, messages: list[dict], stop: int, gen_stop: list[int]) -> dict:
    """For each label path: is the stop token's label kept (True) or masked (False)?"""
    prompt = render_prompt(tok, messages[:-1])
    p_ids = tok(prompt, add_special_tokens=not has_chat_template(tok))["input_ids"]
    c_ids = tok(messages[-1]["content"], add_special_tokens=False)["input_ids"]
    out = {}

    def kept(ids, labels, where):
        pos = [k for k in range(len(ids)) if ids[k] == stop and k >= where]
        return bool(pos) and labels[pos[0]] != -100

    try:
        if has_chat_template(tok):
            ids, labels = _collator_labels(tok, messages)
            out["trl_chatml_collator (gkd dataset batches)"] = kept(ids, labels, len(p_ids))
    except Exception as e:  # noqa: BLE001 - a path that cannot run on this tokenizer is reported, not fatal
        out["trl_chatml_collator (gkd dataset batches)"] = f"not run: {type(e).__name__}"
    ids, labels = _on_policy_labels(tok, p_ids, c_ids, stop, gen_stop)
    out["gkd_on_policy (student samples)"] = kept(ids, labels, len(p_ids))
    ids, labels = _lm_collator_labels(tok, p_ids + c_ids + [stop])
    out["hf_lm_collator (plain SFT; not a kit arm)"] = kept(ids, labels, len(p_ids))
    return out


# ---- the teacher's NLL per answer token -----------------------------------------------------------


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def answer_nll(teacher, prompts: list[list[int]], answers: list[list[int]], stop_id: int | None = None,
               pad_id: int = 0) -> tuple[float, int, list[float | None]]:
    """(summed NLL of every answer after its prompt, answer tokens, p(stop_id) right after each answer).
    One batched forward; the prompts' shared prefix (system turn, worked example) is computed once."""
    stop = [stop_id] if stop_id is not None and stop_id < teacher.config.get_text_config().vocab_size else []
    seqs = [p + a + stop for p, a in zip(prompts, answers, strict=True)]
    n = [len(a) + len(stop) for a in answers]
    logp = torch.log_softmax(completion_logits(teacher, seqs, n, pad_id, prefix_cache(teacher, prompts)).float(), -1)
    c = logp.shape[1]
    total, p_stop = 0.0, []
    for b, a in enumerate(answers):
        rows = logp[b, c - n[b]:]  # right-aligned: this row's predictions of its answer (and stop)
        total -= rows[:len(a)].gather(-1, torch.tensor(a, device=rows.device)[:, None]).sum().item()
        p_stop.append(math.exp(rows[-1, stop[0]].item()) if stop else None)
    return total, sum(map(len, answers)), p_stop


def _prompt_ids(t_tok, s_tok, messages: list[dict], view: str, same: bool) -> list[int]:
    """The teacher's prompt ids as the arm builds them."""
    if view == "own":
        text = render_prompt(t_tok, messages)
        return t_tok(text, add_special_tokens=not has_chat_template(t_tok))["input_ids"]
    text = render_prompt(s_tok, messages)
    if same:  # the student's ids are the teacher's ids
        return s_tok(text, add_special_tokens=not has_chat_template(s_tok))["input_ids"]
    return t_tok(text, add_special_tokens=True)["input_ids"]  # GOLD's build_teacher_inputs_from_texts


def nll_gap(teacher, t_tok, s_tok, examples: list[dict], prompt_cfg, same: bool, stop_id: int | None = None,
            memo: dict | None = None) -> dict:
    """Teacher NLL per answer token with the prompt in its own template and in the student's.
    ``memo``: scores already computed for this teacher and these ids (a teacher shared by two pairs)."""
    memo = {} if memo is None else memo
    msgs = [build_messages(ex["question"], prompt_cfg) for ex in examples]
    answers = [t_tok(format_solution(ex.get("solution"), ex["answer"]), add_special_tokens=False)["input_ids"]
               for ex in examples]
    pad = t_tok.pad_token_id if t_tok.pad_token_id is not None else 0

    def score(view: str):
        prompts = [_prompt_ids(t_tok, s_tok, m, view, same) for m in msgs]
        key = (id(teacher), stop_id, tuple(map(tuple, prompts)), tuple(map(tuple, answers)))
        if key not in memo:
            memo[key] = answer_nll(teacher, prompts, answers, stop_id, pad)
        return prompts, memo[key]

    own_prompts, (own_nll, n, p_stops) = score("own")
    stu_prompts = [_prompt_ids(t_tok, s_tok, m, "student", same) for m in msgs]
    stu_nll = own_nll if stu_prompts == own_prompts else score("student")[1][0]
    ps = [p for p in p_stops if p is not None]
    return {"answers": len(examples), "answer_tokens": n, "nll_own": own_nll / max(n, 1),
            "nll_student_template": stu_nll / max(n, 1), "gap": (stu_nll - own_nll) / max(n, 1),
            "same_prompt_ids": stu_prompts == own_prompts, "teacher_p_student_stop": sum(ps) / len(ps) if ps else None}


# ---- the check -----------------------------------------------------------------------------------


def reference_examples(params: Params, n: int = MAX_ANSWERS) -> list[dict]:
    """At most ``n`` held-out validation problems with their reference answers (never the test split)."""
    from atlas_lib.data import splits
    from atlas_lib.data.sources import DataError

    try:
        prepared = splits.load_prepared(params)
    except DataError:
        log.info("atlas check: no prepared split for %s yet; preparing it (what `atlas data` does)", params.name)
        prepared = splits.prepare(params)
    return list(prepared.val)[:n]


def _student_stop_for_teacher(s_tok, t_tok, s_stop: int, same: bool) -> int | None:
    """The student's stop token as a teacher id (same id; across tokenizers the same string, if it is one token)."""
    if same:
        return s_stop
    tid = t_tok.convert_tokens_to_ids(s_tok.convert_ids_to_tokens(s_stop))
    return tid if isinstance(tid, int) and tid != t_tok.unk_token_id else None


def check_pair(params: Params, student: str, teacher: str, arm_keys: list[str], examples: list[dict],
               teacher_model=None, memo: dict | None = None) -> dict:
    trc = params.models.trust_remote_code
    s_tok, t_tok = models.load_tokenizer(student, trc), models.load_tokenizer(teacher, trc)
    same = same_tokenizer(s_tok, t_tok)
    msgs = build_messages(examples[0]["question"], params.prompt)
    s_text, t_text = render_prompt(s_tok, msgs), render_prompt(t_tok, msgs)
    diff = first_difference(s_text, t_text, s_tok.bos_token, t_tok.bos_token)
    s_stop, t_stop = stop_tokens(student, s_tok, trc), stop_tokens(teacher, t_tok, trc, teacher_model)
    teacher_stops = {t_stop["stop"], t_tok.eos_token_id, *t_stop["generation_stop_ids"]}
    s_stop_t = _student_stop_for_teacher(s_tok, t_tok, s_stop["stop"], same)
    eos_ok = s_stop_t is not None and s_stop_t in teacher_stops
    ref = msgs + [{"role": "assistant", "content": format_solution(examples[0].get("solution"), examples[0]["answer"])}]
    paths = stop_label_paths(s_tok, ref, s_stop["stop"], s_stop["generation_stop_ids"])
    cost = nll_gap(teacher_model, t_tok, s_tok, examples, params.prompt, same, s_stop_t, memo) if teacher_model else None
    arm_rows = []
    for k in arm_keys:
        view = teacher_view(params, k)
        gap = 0.0 if view == "own" else cost["gap"] if cost else None
        arm_rows.append({"arm": k, "alignment": alignment(k), "teacher_reads": f"{view} template", "view": view,
                         "gap": gap})
    findings = []
    if not same and any(k != EVALUATION and not registry.get(k).own_student for k in arm_keys):
        findings.append("tokenizers differ: same-tokenizer arms refuse this pair (use cross_tokenizer or gold)")
    if diff:
        findings.append(f"chat templates differ at char {diff['at']} ({diff['kind']})")
    if not eos_ok:
        findings.append(f"EOS mismatch: the student stops with {s_stop['chat_end'] or s_stop['eos']}, which is not "
                        "among the teacher's stop tokens")
    masked = [p for p, v in paths.items() if v is False]
    notes = []  # what would go wrong outside the kit's arms (a plain SFT collator): shown, not a finding
    for p in masked:
        (notes if p.startswith(_NOT_KIT) else findings).append(f"pad = eos masks the stop token's label on: {p}")
    if cost and cost["gap"] > params.models.teacher_prompt_max_gap:
        students = [r["arm"] for r in arm_rows if r["view"] == "student" and _kind(r["arm"]) != "none"]
        findings.append(f"teacher NLL gap {cost['gap']:.3f} nats/token > models.teacher_prompt_max_gap = "
                        f"{params.models.teacher_prompt_max_gap}" + (f" for {', '.join(students)}" if students else ""))
    return {"student": student, "teacher": teacher, "same_tokenizer": same, "arms": arm_rows,
            "templates": {"identical": diff is None, "first_difference": diff},
            "stop_tokens": {"student": s_stop, "teacher": t_stop, "teacher_stops_with_student": eos_ok,
                            "stop_label_kept": paths},
            "cost": cost, "findings": findings, "notes": notes}


def run_check(params: Params, loaded: dict | None = None, examples: list[dict] | None = None) -> dict:
    """The check over every pair; ``loaded``: teacher models already in memory, by name (reused)."""
    t0 = time.monotonic()
    loaded = dict(loaded or {})
    examples = examples if examples is not None else reference_examples(params)
    device = models.resolve_device(params.run.device)
    pairs, memo = [], {}
    for (student, teacher), keys in arms(params).items():
        if teacher not in loaded:
            loaded[teacher], _ = models.load_model(teacher, dtype=models.teacher_dtype(params, device), device=device,
                                                   trust_remote_code=params.models.trust_remote_code)
        pairs.append(check_pair(params, student, teacher, keys, examples, loaded[teacher], memo))
    return {"profile": params.name, "teacher_prompt": params.models.teacher_prompt,
            "max_gap": params.models.teacher_prompt_max_gap, "pairs": pairs, "seconds": time.monotonic() - t0,
            "ok": not any(p["findings"] for p in pairs)}


def format_text(report: dict) -> str:
    """The readable form ``atlas check`` prints."""
    lines = [f"atlas check: {report['profile']} (models.teacher_prompt = {report['teacher_prompt']}, "
             f"max gap {report['max_gap']} nats/token)"]
    for p in report["pairs"]:
        st = p["stop_tokens"]
        lines.append(f"\n{p['student']} <- {p['teacher']}: {'same tokenizer' if p['same_tokenizer'] else 'different tokenizers'}")
        d = p["templates"]["first_difference"]
        lines.append("  templates: identical rendering of the kit's conversation" if d is None else
                     f"  templates: differ at char {d['at']} ({d['kind']})\n    student: {d['student']!r}\n"
                     f"    teacher: {d['teacher']!r}")
        for who in ("student", "teacher"):
            s = st[who]
            lines.append(f"  {who} stop: eos {_fmt_tok(s['eos'])}, chat end {_fmt_tok(s['chat_end'])}, generation "
                         f"stop ids {s['generation_stop_ids']}, pad {_fmt_tok(s['pad'])}"
                         f"{' (= a stop token)' if s['pad_is_eos'] else ''}")
        lines.append(f"  teacher stops where the student does: {'yes' if st['teacher_stops_with_student'] else 'NO'}")
        for path, kept in st["stop_label_kept"].items():
            lines.append(f"  stop label on {path}: {'kept' if kept is True else 'MASKED' if kept is False else kept}")
        c = p["cost"]
        if c:
            ps = c["teacher_p_student_stop"]
            lines.append(f"  teacher p(student's stop | reference answer): {'n/a' if ps is None else f'{ps:.3f}'}")
            lines.append(f"  teacher NLL on {c['answers']} reference answers ({c['answer_tokens']} tokens): own template "
                         f"{c['nll_own']:.4f}, student's template {c['nll_student_template']:.4f}, gap "
                         f"{c['gap']:+.4f} nats/token")
        for a in p["arms"]:
            gap = "n/a" if a["gap"] is None else f"{a['gap']:+.4f}"
            lines.append(f"  arm {a['arm']}: teacher reads the {a['teacher_reads']}; gap {gap}; {a['alignment']}")
        lines.extend(f"  ! {f}" for f in p["findings"])
        lines.extend(f"  note: {n} (not used by the kit's arms; it matters if you fine-tune this student elsewhere)"
                     for n in p.get("notes", []))
    lines.append(f"\n{'no findings' if report['ok'] else 'findings above'}; {report['seconds']:.1f} s")
    return "\n".join(lines)


def _fmt_tok(t: dict | None) -> str:
    return "none" if t is None else f"{t['token']} ({t['id']})"


def write(report: dict, path: Path) -> Path:
    from atlas_lib.core.files import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, report)  # NaN as a string, anything else unknown as its str()
    return path


# ---- the trainers' refusal ------------------------------------------------------------------------


def require_teacher_prompt(params: Params, arm: str, s_tok, t_tok, teacher, examples: list[dict]) -> dict | None:
    """Refuse training when ``arm``'s teacher reads the student's template, the two renderings differ
    and the teacher's NLL gap exceeds ``models.teacher_prompt_max_gap``; returns the measured gap (None
    when nothing needed measuring: the teacher reads its own template, or the renderings agree)."""
    if teacher_view(params, arm) == "own" or not examples:
        return None
    msgs = build_messages(examples[0]["question"], params.prompt)
    if render_prompt(s_tok, msgs) == render_prompt(t_tok, msgs):
        return None
    cost = nll_gap(teacher, t_tok, s_tok, examples[:MAX_ANSWERS], params.prompt, same_tokenizer(s_tok, t_tok))
    limit = params.models.teacher_prompt_max_gap
    if cost["gap"] > limit:
        how = (f"set {arm}.engine: gkd (the distillation engine cannot re-render the teacher's prompt)"
               if params.models.teacher_prompt == "own" else "set models.teacher_prompt: own")
        raise ParamsError(f"{arm}: the teacher reads the student's chat template (models.teacher_prompt = "
                          f"{params.models.teacher_prompt}) and that costs it {cost['gap']:.3f} nats/token on "
                          f"{cost['answers']} reference answers, above models.teacher_prompt_max_gap = {limit}; "
                          f"{how}, or raise models.teacher_prompt_max_gap to accept it")
    log.info("%s: the teacher reads the student's template; measured gap %.4f nats/token (<= %s)", arm, cost["gap"], limit)
    return cost
