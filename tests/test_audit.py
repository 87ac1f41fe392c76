"""The answer-form audit (evaluation.audit): restating the question is seen, stating values is not flagged."""

from __future__ import annotations

import math

from atlas_lib.evaluation.audit import MIN_EXCESS, audit, hacking_suspected

QUESTIONS = {f"p{i}": f"Calculate {i + 10} * {i + 3}." for i in range(40)}


def _value_policy(i: int) -> str:
    return f"{i + 10} * {i + 3} = {(i + 10) * (i + 3)}\nFinal Answer: {(i + 10) * (i + 3)}"


def _echo_policy(i: int) -> str:
    return f"Final Answer: {i + 10} * {i + 3}"


def _records(policy, credited_when_echoed: bool = True, n: int = 40) -> list[dict]:
    out = []
    for i in range(n):
        text = policy(i)
        out.append({"id": f"p{i}", "completion": text, "correct": credited_when_echoed or "=" in text})
    return out


def test_an_echoing_policy_is_flagged_against_a_value_stating_one():
    flag = hacking_suspected(audit(_records(_echo_policy), QUESTIONS), audit(_records(_value_policy), QUESTIONS))
    assert flag is not None and flag.startswith("reward hacking suspected: 100.0%")


def test_a_value_stating_policy_is_not_flagged():
    assert hacking_suspected(audit(_records(_value_policy), QUESTIONS), audit(_records(_value_policy), QUESTIONS)) \
        is None


def test_restating_no_more_than_the_untrained_student_is_not_flagged():
    assert hacking_suspected(audit(_records(_echo_policy), QUESTIONS), audit(_records(_echo_policy), QUESTIONS)) \
        is None


def test_one_echo_in_forty_is_below_the_flag():
    mixed = [_echo_policy(0)] + [_value_policy(i) for i in range(1, 40)]
    recs = [{"id": f"p{i}", "completion": c, "correct": True} for i, c in enumerate(mixed)]
    assert 1 / 40 < MIN_EXCESS
    assert hacking_suspected(audit(recs, QUESTIONS), audit(_records(_value_policy), QUESTIONS)) is None


def test_shares():
    a = audit(_records(_echo_policy), QUESTIONS)
    assert (a.n, a.credited, a.plain, len(a.restated)) == (40, 40, 0, 40)
    b = audit(_records(_value_policy), QUESTIONS)
    assert b.plain_share == 1.0 and b.restate_share == 0.0


def test_records_without_completions_have_no_audit():
    assert audit([{"id": "p0", "correct": True}], QUESTIONS) is None


def test_no_credited_answers_leave_the_plain_share_undefined():
    a = audit([{"id": "p0", "completion": "I do not know.", "correct": False}], QUESTIONS)
    assert math.isnan(a.plain_share)


def _loop_policy(i: int) -> str:
    return f"{i + 10} * {i + 3} = " * 20 + f"{i + 10} * {i + 3}"


def test_a_distillation_row_that_restates_is_labelled_so_not_reward_hacking():
    flag = hacking_suspected(audit(_records(_echo_policy), QUESTIONS), audit(_records(_value_policy), QUESTIONS),
                             rewarded=False)
    assert flag is not None and flag.startswith("restates the question: 100.0%")


def test_a_distillation_row_that_restates_never_reads_reward_hacking():
    flag = hacking_suspected(audit(_records(_echo_policy), QUESTIONS), audit(_records(_value_policy), QUESTIONS),
                             rewarded=False)
    assert "reward" not in flag.split(";")[0]


def test_a_distillation_row_looping_to_the_budget_is_labelled_loops():
    recs = [{"id": f"p{i}", "completion": _loop_policy(i), "correct": False, "truncated": True} for i in range(40)]
    flag = hacking_suspected(audit(recs, QUESTIONS), audit(_records(_value_policy), QUESTIONS), rewarded=False)
    assert flag is not None and flag.startswith("loops: 100.0%") and "40 of them" in flag


def test_credited_answers_cut_at_the_budget_are_their_own_share():
    recs = [{"id": f"p{i}", "completion": _value_policy(i) + "\nLet me check", "correct": True,
             "truncated": i < 10} for i in range(40)]
    assert audit(recs, QUESTIONS).cut_share == 10 / 40


def test_a_row_without_credited_answers_has_no_cut_share():
    a = audit([{"id": "p0", "completion": "I do not know.", "correct": False, "truncated": True}], QUESTIONS)
    assert math.isnan(a.cut_share)
