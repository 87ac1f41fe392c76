"""The shared answer checker: one case per supported format, both directions, plus a property test."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_lib.data.answer_text import final_marker_text
from atlas_lib.data.answers import (
    answer_form,
    extract_answer,
    is_correct,
    normalize_reference,
    restates_question,
)
from atlas_lib.methods.grpo.rewards import exact_match_reward

CASES = [  # (completion, reference, expected)
    ("Step 1: 3 + 4 = 7.\nFinal Answer: 7", "7", True),
    ("Step 1: 3 + 4 = 7.\nFinal Answer: 7", "8", False),
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72", True),
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "48", False),
    ("So she pays 9 / 3 = 3 per pack.\nThe answer is: 3", "3", True),
    ("So she pays 9 / 3 = 3 per pack.\nThe answer is: 3", "9", False),
    ("Adding up gives \\boxed{15} marbles.", "15", True),
    ("Adding up gives \\boxed{15} marbles.", "1", False),
    ("Final Answer: 1,000", "1000", True),
    ("Final Answer: 1,000", "1", False),
    ("Final Answer: 1,234,567", "1234567", True),
    ("Final Answer: $12.50", "12.5", True),
    ("Final Answer: $12.50", "1250", False),
    ("Final Answer: 12 apples", "12", True),
    ("Final Answer: 12 apples", "13", False),
    ("The answer is: 5 dollars", "5", True),
    ("The answer is: 5 dollars", "50", False),
    ("Final Answer: -5", "-5", True),
    ("Final Answer: -5", "5", False),
    ("Final Answer: 5", "-5", False),
    ("Final Answer: -$1,234", "-1234", True),
    ("Final Answer: 0.5", "1/2", True),
    ("Final Answer: 1/2", "0.5", True),
    ("Final Answer: \\frac{1}{2}", "0.5", True),
    ("Final Answer: 0.33", "1/3", False),
    ("Final Answer: 0.5", "0.05", False),
    ("Final Answer: 42.", "42", True),
    ("Final Answer: 42.", "4", False),
    ("Final Answer: 3.75.", "3.75", True),
    ("She had 5, then 7, so 12 in total. Final Answer: 12. That is 3 more than 9.", "12", True),
    ("She had 5, then 7, so 12 in total. Final Answer: 12. That is 3 more than 9.", "9", False),
    ("She had 5, then 7, so 12 in total.\nFinal Answer: 12\nDouble-check: 5 + 7 = 12, 2 pens left.", "12", True),
    ("She had 5 pens and bought 7, so she has 12.", "12", True),
    ("She had 5 pens and bought 7, so she has 12.", "5", False),
    ("Final Answer: 3 + 4 = 7", "7", True),
    ("**Final Answer:** 42", "42", True),
    ("Final Answer:\n\n17", "17", True),
    ("Final Answer: 12\nQuestion: Sam has 4 cats. Answer: 99", "12", True),
    ("Final Answer: 12\nQuestion: Sam has 4 cats. Answer: 99", "99", False),
    ("The final answer is $\\boxed{\\frac{3}{4}}$", "0.75", True),
]


@pytest.mark.parametrize(("completion", "reference", "expected"), CASES)
def test_is_correct_cases(completion, reference, expected):
    assert is_correct(completion, reference) is expected


# -- what counts as a stated value (the module doc's table; every example of the reward-hack report) --
STATED = [  # (final answer, reference): credited
    ("Final Answer: 2496", "2496"),
    ("Final Answer: 26 * 96 = 2496", "2496"),
    ("Final Answer: -110", "-110"),
    ("Final Answer: (-5)", "-5"),
    ("Final Answer: 3.75", "3.75"),
    ("Final Answer: .5", "0.5"),
    ("Final Answer: 3/4", "0.75"),
    ("Final Answer: -1/2", "-0.5"),
    ("Final Answer: \\frac{3}{4}", "3/4"),
    ("Final Answer: $-\\dfrac{1}{2}$", "-1/2"),
    ("The final answer is $\\boxed{24}$.", "24"),
    ("Final Answer: \\(24\\)", "24"),
    ("Final Answer: $1,234.50", "1234.5"),
    ("Final Answer: 12 apples", "12"),
    ("Final Answer: 5 cm^2", "5"),
    ("Final Answer: 50%", "50"),
    ("Final Answer: **42**.", "42"),
    ("Final Answer: \\text{42 marbles}", "42"),
    ("Final Answer: 2\\sqrt{4}", "4"),  # a closed form math_verify evaluates
    ("Adding up, she has 18 apples left.", "18"),  # no marker: the last stated number
    ("Final Answer: 5! = 120", "120"),  # the factorial done: only what follows the last "=" counts
    # look-alikes of the expressions below that do state their number
    ("Final Answer: 12 inches", "12"),  # not the imaginary unit
    ("Final Answer: 12 - a dozen eggs", "12"),  # an article after a dash, not a variable
    ("The answer is **16**", "16"),  # markdown bold after a space, not Python's power
    ("Final Answer: 5 i.e. five", "5"),
]
UNSTATED = [  # (final answer, reference it evaluates to): never credited, whatever it evaluates to
    ("Final Answer: 26 * 96", "2496"),
    ("Final Answer: -87 + 59 - 82", "-110"),
    ("Final Answer: 8 * 3", "24"),
    ("Final Answer: 6 + (-5 * 6)", "-24"),
    ("Final Answer: ( 8 / 1 ) * 3", "24"),
    ("Final Answer: 2^10", "1024"),
    ("Final Answer: 26 x 96", "2496"),
    ("Final Answer: 26 × 96", "2496"),
    ("Final Answer: 26 \\times 96", "2496"),
    ("Final Answer: 3 \\cdot 8", "24"),
    ("Final Answer: 3 · 8", "24"),
    ("Final Answer: 3 . 8", "24"),
    ("Final Answer: 48 ÷ 2", "24"),
    ("Final Answer: 48 \\div 2", "24"),
    ("Final Answer: 26 times 96", "2496"),
    ("Final Answer: 20 plus 4", "24"),
    ("Final Answer: \\boxed{20 + 4}", "24"),
    ("Final Answer: $\\frac{48}{2}$", "24"),
    ("Final Answer: 84/7", "12"),  # a fraction not in lowest terms is a division left undone
    ("Final Answer: 6/8", "0.75"),
    ("Final Answer: \\frac{26 \\times 96}{1}", "2496"),
    ("Final Answer: 2496 (26 * 96)", "2496"),
    ("Final Answer: 26 * 96 =", "2496"),
    # cut at the budget with no final-answer marker: the last line is an expression
    ("= -(-23 - -65 / 65) = -(-23 - -65 / 65) = -(-23 - -65 / 65) = ...", "22"),
    ("Let me compute -(-23 - -65 / 65)", "22"),
    # an operation on plain numbers left undone, whatever it evaluates to
    ("Final Answer: $5!$", "120"),  # a factorial inside a math span (``Final Answer: 5!`` is an exclamation)
    ("Final Answer: 5! + 1", "121"),  # arithmetic goes on after the "!": a factorial
    ("Final Answer: 5! * 2", "240"),
    ("So the number of pairs is \\binom{5}{2}", "10"),
    ("The answer is $\\dbinom{5}{2}$", "10"),
    ("Final Answer: {5 \\choose 2}", "10"),
    ("Final Answer: 2**3", "8"),  # Python's power, not 23
    ("Final Answer: 10 % 3", "1"),  # modulo, not a percentage
    ("Final Answer: 17 \\pmod{5}", "2"),
    ("Final Answer: 17 mod 5", "2"),
    ("Final Answer: 1e3", "1000"),  # math_verify reads 1e3 as 1 * e * 3 (Euler's e), never 1000
]


@pytest.mark.parametrize(("completion", "reference"), STATED)
def test_stated_value_is_credited(completion, reference):
    assert is_correct(completion, reference) is True


@pytest.mark.parametrize(("completion", "reference"), STATED)
def test_stated_value_earns_the_reward(completion, reference):
    assert exact_match_reward([completion], [reference]) == [1.0]


@pytest.mark.parametrize(("completion", "reference"), UNSTATED)
def test_unevaluated_arithmetic_is_not_credited(completion, reference):
    assert is_correct(completion, reference) is False


@pytest.mark.parametrize(("completion", "reference"), UNSTATED)
def test_unevaluated_arithmetic_earns_no_reward(completion, reference):
    assert exact_match_reward([completion], [reference]) == [0.0]


@pytest.mark.parametrize(("completion", "reference"), UNSTATED)
def test_unevaluated_arithmetic_has_no_extracted_value(completion, reference):
    assert extract_answer(completion) is None


# A number that is only part of a larger expression is not the answer its digits spell (the mutation
# pass credited the first four: a factorial, a binomial's last argument, an exponent, an imaginary part;
# a "!" that ends the answer is an exclamation mark, not a factorial: EXCLAIMED below)
PART_OF_EXPRESSION = [  # (completion, the number its last digits spell)
    ("Final Answer: $5!$", "5"),
    ("Final Answer: \\boxed{5!}", "5"),
    ("Final Answer: 5! + 1", "1"),
    ("Final Answer: 5! * 2", "2"),  # credited 2 by both graders before GRADER_VERSION 2
    ("Final Answer: 5!2", "2"),
    ("Final Answer: (3!)^2", "2"),
    ("So the number of pairs is \\binom{5}{2}", "2"),
    ("Final Answer: 1e3", "3"),
    ("Final Answer: 2.5E-4", "-4"),
    ("Final Answer: 2i", "2"),
    ("Final Answer: 2j", "2"),
    ("Final Answer: 2\\mathrm{i}", "2"),
    ("Final Answer: 3 + 4i", "4"),
    ("Final Answer: \\sqrt{-4}", "2"),  # a closed form that is not real
    ("Final Answer: {5 \\choose 2}", "2"),
    ("Final Answer: \\frac{x}{5}", "5"),
    ("Final Answer: \\frac{5}{x}", "5"),
    ("Final Answer: 5 + x", "5"),
    ("Final Answer: y + 5", "5"),
    ("Final Answer: 2 + i", "2"),
    ("Final Answer: 2^n", "2"),
    ("Final Answer: 2**3", "23"),
    ("Final Answer: 2**3", "3"),
    ("Final Answer: 10 % 3", "3"),
    ("Final Answer: 17 \\pmod{5}", "5"),
]


@pytest.mark.parametrize(("completion", "reference"), PART_OF_EXPRESSION)
def test_a_number_inside_an_expression_is_not_credited(completion, reference):
    assert is_correct(completion, reference) is False


@pytest.mark.parametrize(("completion", "reference"), PART_OF_EXPRESSION)
def test_a_number_inside_an_expression_has_no_extracted_value(completion, reference):
    assert extract_answer(completion) is None


# An exclamation mark is punctuation at the end of an answer, not a factorial: "!" is a factorial only
# where arithmetic goes on after it or inside a math span (above). Each of these was credited before
# f45e1c4 and refused by it (GRADER_VERSION 2 credits them again)
EXCLAIMED = [  # (completion, the value it states)
    ("The answer is 7!", "7"),
    ("Final Answer: 42!", "42"),
    ("**Final Answer: 7!**", "7"),
    ("The final answer is: 7!", "7"),
    ("Thus, the final answer is $7$!", "7"),
    ("The answer is 16 - 2 = 14!", "14"),
    ("Answer: 14! That is it.", "14"),
    ("Final Answer: 7 !!", "7"),
    ("Final Answer: 5!", "5"),  # an exclamation, not 5! = 120
    ("Final Answer: 5 !", "5"),
    ("Final Answer: 5!\nThat was fun.", "5"),
    ("Final Answer: 7!, I think", "7"),
    ("So she has 18!", "18"),  # no marker: the last stated number
]


@pytest.mark.parametrize(("completion", "reference"), EXCLAIMED)
def test_an_exclamation_mark_at_the_end_of_an_answer_is_punctuation(completion, reference):
    assert is_correct(completion, reference) is True


@pytest.mark.parametrize(("completion", "reference"), EXCLAIMED)
def test_an_exclamation_mark_states_the_number_before_it(completion, reference):
    assert extract_answer(completion) == reference


def test_an_exclamation_mark_is_not_a_factorial_done():
    assert is_correct("Final Answer: 5!", "120") is False


# Prose after a number, not a variable nor an imaginary unit: the article "a", the pronoun "I", a
# spaced "i"/"j" before a word or at the end (each credited before f45e1c4 and refused by it)
PROSE_AROUND_A_NUMBER = [  # (completion, the value it states)
    ("So we get a -3.", "-3"),  # "a -3": the article, then a signed number
    ("The answer is a -3 change", "-3"),
    ("The total is a +5", "5"),
    ("Final Answer: 42 - I'm sure", "42"),
    ("Final Answer: 4 i think", "4"),
    ("Final Answer: 7 j", "7"),
]


@pytest.mark.parametrize(("completion", "reference"), PROSE_AROUND_A_NUMBER)
def test_prose_around_a_number_is_credited(completion, reference):
    assert is_correct(completion, reference) is True


@pytest.mark.parametrize(("completion", "reference"), PROSE_AROUND_A_NUMBER)
def test_prose_around_a_number_states_the_number(completion, reference):
    assert extract_answer(completion) == reference


# -- a completion cut mid-expression, or at the token budget (issue 40) --------------------------
CUT = [  # (completion, truncated, reference, expected)
    # the study's two: cut at the budget mid-expression, and an open box after an earlier value
    ("-16 * (-1) = 16 / 3. Subtract the result from 0: 16 -", True, "16", False),
    ("So 0 + 1 = 1.\nTherefore, the final answer is \\(\\boxed{", True, "1", False),
    # the same texts with a stop token: still no earlier line speaks for them
    ("-16 * (-1) = 16 / 3. Subtract the result from 0: 16 -", False, "16", False),
    ("So 0 + 1 = 1.\nTherefore, the final answer is \\(\\boxed{", False, "1", False),
    ("First 8 + 8 = 16.\nThen 16 * 2 =", False, "16", False),
    ("The total is 16.\nNow (", False, "16", False),
    ("Final Answer: 16 -\nDone.", False, "16", False),  # the answer itself stops mid-expression
    # cut at the budget: only a complete final-answer marker counts
    ("Adding gives 16.\nFinal Answer: 16\nLet me double-check the sum of", True, "16", True),
    ("Adding gives \\boxed{16}", True, "16", True),
    ("Adding gives \\boxed{16} and checking again 4 * 4 is", True, "16", True),
    ("Final Answer: 16. Then we check", True, "16", True),
    ("Adding gives \\boxed{16", True, "16", False),  # the box never closed
    ("Adding gives 16.\nFinal Answer: 16", True, "16", False),  # the cut may have been mid-number
    ("She had 5 pens and bought 7, so she has 12.", True, "12", False),  # no marker: the last line is no answer
    ("Final Answer: 12\nWait, the answer is", True, "12", False),  # the last marker is open
    # finished completions keep the last-line reading and the earlier marker
    ("She had 5 pens and bought 7, so she has 12.", False, "12", True),
    ("Final Answer: 16\n\n---", False, "16", True),  # a markdown rule is no operator
    ("Final Answer: **16**", False, "16", True),
    ("Final Answer: 16 + ...", False, "16", False),  # an ellipsis after an operator: still cut
    ("Final Answer: 16 + \\ldots", False, "16", False),
]


@pytest.mark.parametrize(("completion", "truncated", "reference", "expected"), CUT)
def test_cut_completion_is_credited_only_from_a_complete_answer(completion, truncated, reference, expected):
    assert is_correct(completion, reference, truncated=truncated) is expected


@pytest.mark.parametrize(("completion", "truncated", "reference", "expected"), CUT)
def test_cut_completion_reward_matches_the_evaluator(completion, truncated, reference, expected):
    # TRL's completion_ids: a rollout that stopped ends in a stop id (here 0), a cut one does not
    ids = [[5, 6, 7] if truncated else [5, 6, 0]]
    assert exact_match_reward([completion], [reference], completion_ids=ids, stop_ids={0}) == [float(expected)]


@pytest.mark.parametrize(("completion", "truncated"), [
    ("-16 * (-1) = 16 / 3. Subtract the result from 0: 16 -", True),
    ("Therefore, the final answer is \\(\\boxed{", False),
    ("Final Answer: 16", True),
])
def test_cut_answer_form_is_unfinished(completion, truncated):
    assert answer_form(completion, truncated) == "unfinished"


def test_reward_functions_pass_the_stop_ids():
    from atlas_lib.methods.grpo.rewards import reward_functions

    (fn,) = reward_functions(["exact_match"], stop_ids=[0, None])
    text = "Adding gives 16.\nFinal Answer: 16"
    assert fn([text, text], ["16", "16"], completion_ids=[[4, 0], [4, 4]]) == [1.0, 0.0]


@pytest.mark.parametrize(("completion", "form"), [
    ("Final Answer: 2496", "value"), ("Final Answer: 26 * 96", "expression"),
    ("Final Answer: \\pi/2", "closed_form"), ("Final Answer: 3\\sqrt{2}/2", "closed_form"),
    ("I do not know.", "none"), ("Final Answer: none", "none"),
    ("Final Answer: $5!$", "expression"), ("Final Answer: \\binom{5}{2}", "expression"),  # undone
    ("Final Answer: 5!", "value"),  # an exclamation mark
    ("Final Answer: 1e3", "none"), ("Final Answer: 2i", "none"),  # no number this grader reads
])
def test_answer_form(completion, form):
    assert answer_form(completion) == form


@pytest.mark.parametrize(("question", "completion", "expected"), [
    ("Calculate 26 * 96.", "Final Answer: 26 * 96", True),
    ("Calculate -87 + 59 - 82.", "Final Answer: -87 + 59 - 82", True),
    ("Calculate ( 8 / 1 ) * 3.", "Final Answer: 8 * 3", True),
    ("Calculate 6 + -5 * 6.", "Final Answer: 6 + (-5 * 6)", True),
    ("Calculate 26 * 96.", "Final Answer: 2496", False),
    ("Calculate 26 * 96.", "26 * 96 = 2496\nFinal Answer: 2496", False),
    ("Calculate 26 * 96.", "Final Answer: 26 * 95", False),  # undone, but not the question's numbers
    # only the undone arithmetic after the last "=" counts, or the whole answer when nothing there has a digit
    ("Calculate 26 * 96.", "Final Answer: 2 + 24 = 26 * 96", True),
    ("Calculate 26 * 96.", "Final Answer: 26 * 96 = x", True),
    ("Calculate 5!.", "Final Answer: $5!$", True),
    ("Calculate 5! + 1.", "Final Answer: 5! + 1", True),
])
def test_restates_question(question, completion, expected):
    assert restates_question(completion, question) is expected


@pytest.mark.parametrize("completion", ["", "I do not know.", "Final Answer: none", "Final Answer:", None, 42,
                                        "\\boxed{}", "Final Answer: \\frac{", "#### x + y"])
def test_no_answer_is_wrong_never_an_exception(completion):
    assert extract_answer(completion) is None
    assert is_correct(completion, "3") is False


# A chat-format completion (a list of messages) is not text: it must not reach the cached reader
@pytest.mark.parametrize("completion", ["", None, 42, [{"role": "assistant", "content": "Final Answer: 4"}]])
def test_no_text_is_no_answer_for_every_entry_point(completion):
    assert extract_answer(completion) is None
    assert is_correct(completion, "4") is False
    assert answer_form(completion) == "none"
    assert restates_question(completion, "Calculate 2 + 2.") is False


def test_extract_answer_reads_a_cut_completion_as_the_grader_does():
    """The evaluator's ``extracted`` field: a completion cut at the budget has no last-line reading."""
    assert extract_answer("So the total is 16", truncated=True) is None


def test_a_closed_form_that_is_not_rational_is_never_credited():
    assert is_correct("Final Answer: \\pi/2", "2") is False


def test_the_grader_bounds_math_verify_with_the_guard_timeout(monkeypatch):
    """Without it one pathological comparison could stall an evaluation on the main thread."""
    from atlas_lib.data import answer_math, answers

    seen = []
    monkeypatch.setattr(answers, "verify", lambda gold, pred, timeout_seconds: seen.append(timeout_seconds) or True)
    is_correct("Final Answer: 4", "4")
    assert seen == [answer_math.timeout()]


@pytest.mark.parametrize(("text", "expected"), [
    ("Final Answer: 1,000", "1000"), ("#### $12.50.", "12.5"), ("The answer is: -7 apples", "-7"),
    ("\\boxed{\\frac{3}{4}}", "3/4"), ("so 3 + 5 = 8", "8"), ("Final Answer: 50%", "50"),
    ("Final Answer: 7.0", "7"),
])
def test_extract_answer_canonical_text(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(("ref", "expected"), [
    ("72", "72"), ("1,000", "1000"), ("$12.50", "12.5"), ("-3", "-3"), ("6/8", "3/4"), ("4/2", "2"),
    ("\\frac{1}{2}", "1/2"), ("$\\dfrac{2}{3}$", "2/3"), ("0.50", "0.5"), ("-0", "0"), ("12.", "12"), (7, "7"),
])
def test_normalize_reference(ref, expected):
    assert normalize_reference(ref) == expected


@pytest.mark.parametrize("ref", ["", "  ", "abc", "12 apples", "1/0", "1.2.3", "x+1", "\\sqrt{2}", "3, 4", None])
def test_normalize_reference_rejects_malformed(ref):
    with pytest.raises(ValueError, match="reference answer"):
        normalize_reference(ref)


def test_final_marker_text_reads_worked_solutions():
    assert final_marker_text("48 / 2 = 24\n#### 1,234") == "1,234"
    assert final_marker_text("So 2 + 3 = 5.\nThe answer is: 5") == "5"
    assert final_marker_text("no marker 42") is None


def test_power_tower_is_rejected_fast_off_the_main_thread():
    """math_verify's signal timeout is off in worker threads; the size guard must keep this instant."""
    results = {}

    def work():
        t0 = time.perf_counter()
        results["tower"] = is_correct("Final Answer: 2\\pi^{\\pi^{\\pi^{\\pi}}}", "70")  # a closed form: parsed
        results["ok"] = is_correct("Final Answer: 2\\sqrt{4}", "4")
        results["s"] = time.perf_counter() - t0

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert results["tower"] is False and results["ok"] is True
    assert results["s"] < 5  # sympy evaluating 9^9^9^9 would take forever; a guard takes milliseconds


# -- property: every rendering of a number is recognised -------------------------------------------
ints = st.integers(min_value=-10**7, max_value=10**7)
decimals = st.builds(lambda n, k: Decimal(n).scaleb(-k), st.integers(-10**6, 10**6), st.integers(1, 3))
fractions = st.builds(Fraction, st.integers(-50, 50), st.integers(2, 12))
numbers = st.one_of(ints, decimals, fractions)


def _number_text(x, commas: bool) -> str:
    if isinstance(x, Fraction):
        return str(x)
    return f"{x:,}" if commas else str(x)


def render(x, fmt: str, dollar: bool, commas: bool, period: bool, distractor: int | None) -> str:
    text = _number_text(x, commas)
    if dollar:
        text = "-$" + text[1:] if text.startswith("-") else "$" + text
    body = {"final": f"Final Answer: {text}", "hash": f"#### {text}", "answer_is": f"The answer is: {text}",
            "boxed": f"So the result is \\boxed{{{text}}}"}[fmt]
    if period:
        body += "."
    if distractor is not None:
        body = f"First count {distractor} apples, then {distractor + 3} pears.\n{body}"
    return body


@settings(max_examples=300, deadline=None)
@given(x=numbers, fmt=st.sampled_from(["final", "hash", "answer_is", "boxed"]), dollar=st.booleans(),
       commas=st.booleans(), period=st.booleans(), distractor=st.one_of(st.none(), st.integers(-999, 10**6)))
def test_property_rendered_number_is_correct(x, fmt, dollar, commas, period, distractor):
    completion = render(x, fmt, dollar, commas, period, distractor)
    assert is_correct(completion, str(x)), completion
    assert Fraction(extract_answer(completion)) == Fraction(normalize_reference(str(x))), completion


# -- the grader's version (core.versions.GRADER_VERSION) enters every stage's hash ---------------------
@pytest.mark.parametrize("stage", ["data", "gkd", "grpo"])
def test_a_new_grader_version_changes_the_stage_hash(monkeypatch, stage):
    """Rows graded by two graders are never paired: a grader change re-runs baselines and training on resume."""
    from atlas_lib.core import config, versions

    params = config.load("params/smoke.yaml")
    before = params.stage_hash(stage)
    monkeypatch.setattr(versions, "GRADER_VERSION", versions.GRADER_VERSION + 1)
    assert params.stage_hash(stage) != before


def test_a_new_grader_version_changes_the_training_hash(monkeypatch):
    from atlas_lib.core import config, versions
    from atlas_lib.core.preflight import train_hash

    p = config.load("params/smoke.yaml")
    before = train_hash(p, "grpo")
    monkeypatch.setattr(versions, "GRADER_VERSION", versions.GRADER_VERSION + 1)
    assert train_hash(p, "grpo") != before
