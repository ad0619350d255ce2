"""Final-answer extraction and scoring on real GSM8K / MetaMath-style outputs, and the Wilson interval."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import REPO
from ual.eval import answers
from ual.eval.generate import Generation
from ual.eval.maths import TASKS, gold_answers, score
from ual.eval.maths import wilson95 as wilson_interval


def correct(gold: str, output: str) -> bool:
    return answers.is_correct(answers.parse_gold(gold), answers.extract_answer(output))


@pytest.mark.parametrize(
    "output, expected",
    [
        # the GSM8K solution format, calculator annotations included
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72", "72"),
        ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("She makes 9 * $2 = $18 a day. The answer is $18.", "18"),
        ("9 eggs at $2 each: 18 dollars", "18"),
        (r"She makes $9 \times 2 = 18$ dollars, so the answer is $\boxed{18}$.", "18"),
        (r"Therefore the total is \boxed{18}.", "18"),
        ("The house cost 80,000 + 50,000 = 130,000, so he made a profit of 1,234 dollars.\n#### 1,234", "1234"),
        ("The temperature dropped 4 degrees below the start: The answer is: -4", "-4"),
        ("Each share is 7 / 2 = 3.5 pounds.\n#### 3.5", "3.5"),
        ("x = 12/4 = 3. The answer is: 3", "3"),
        # MetaMath-style LaTeX answers
        (r"Solving, $x = \frac{3}{4}$. The answer is: \frac{3}{4}", r"\frac{3}{4}"),
        (r"So the side is 2 times root 3. The answer is: 2\sqrt{3}", r"2\sqrt{3}"),
    ],
)
def test_final_answer_is_extracted_from_real_outputs(output, expected):
    found = answers.extract_answer(output)
    assert found.found, output
    assert answers.is_correct(answers.parse_gold(expected), found), (output, found)


@pytest.mark.parametrize(
    "output",
    [
        "I am not sure how to solve this problem.",
        "#### the the the the",
        "The answer is unclear without more information.",
        "",
    ],
)
def test_an_output_without_a_number_has_no_answer_and_is_wrong(output):
    found = answers.extract_answer(output)
    assert not found.found and found.text is None and found.method == "none"
    assert not correct("18", output)


@pytest.mark.parametrize(
    "gold, output, ok",
    [
        ("18", "The answer is 18.00", True),
        ("1234", "#### 1,234", True),
        ("0.5", "The answer is: 1/2", True),
        ("-10", "#### -10", True),
        ("-10", "#### 10", False),
        ("18", "#### 17", False),
        ("3.5", "The answer is 3.50", True),
        ("72", "She sold 72 clips, and 5 friends helped.\n#### 72", True),
        # the last stated answer counts, not the first number in the text
        ("20", "First I thought the answer is 18. Checking again, the answer is 20.", True),
        # substring matching would accept this; the final answer is 180
        ("18", "The answer is 180", False),
    ],
)
def test_comparison_is_symbolic_and_uses_the_final_answer(gold, output, ok):
    assert correct(gold, output) is ok


def test_golds_of_the_shipped_gsm8k_test_set_all_parse():
    rows = [json.loads(line) for line in (REPO / "data/eval/gsm8k_test.jsonl").read_text().splitlines()]
    assert len(rows) == 1319
    golds = gold_answers(rows, TASKS["gsm8k"], "gsm8k_test.jsonl")
    assert golds[:4] == ["18", "3", "70000", "540"]
    assert "2125" in golds and "-10" in golds  # "2,125" loses its separator; negatives survive
    assert all(answers.parse_gold(g) for g in golds)


def test_gold_of_a_metamath_response_is_what_follows_the_answer_is():
    assert answers.gold_metamath("So $x=\\frac{1}{2}$.\nThe answer is: \\frac{1}{2}") == "\\frac{1}{2}"
    with pytest.raises(ValueError, match="The answer is"):
        answers.gold_metamath("x = 5")
    with pytest.raises(ValueError, match="####"):
        answers.gold_gsm8k("18")


def test_score_counts_and_interval():
    task = TASKS["gsm8k"]
    rows = [{"question": f"q{i}", "answer": f"#### {g}"} for i, g in enumerate(["18", "3", "7", "9"])]
    gens = [
        Generation("#### 18", 3, "eos"),
        Generation("The answer is 3.", 5, "eos"),
        Generation("no idea", 2, "eos"),
        Generation("#### 8", 64, "length"),
    ]
    metrics, samples = score(rows, task, gold_answers(rows, task, "x"), gens)
    assert [s["correct"] for s in samples] == [True, True, False, False]
    assert [s["extracted"] for s in samples] == ["18", "3", None, "8"]
    assert metrics["accuracy"] == 0.5 and metrics["correct"] == 2 and metrics["n"] == 4
    assert metrics["no_answer"] == 1 and metrics["truncated"] == 1
    assert metrics["accuracy_ci95"] == list(wilson_interval(2, 4))
    assert set(samples[0]) >= {"question", "gold", "output", "extracted", "correct"}


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(1, 0)


@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_contains_the_estimate_and_stays_in_unit_interval(kn):
    k, n = kn
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert math.isfinite(lo) and math.isfinite(hi)
