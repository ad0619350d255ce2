"""The reply parser: what real judges send is read; anything that is not one score in range is refused."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ual.score.parse import ScoreParseError, parse_score

ACCEPTED = [
    ("63", 63),
    ("0", 0),
    ("99", 99),
    (" 7 \n", 7),
    ("Score: 85", 85),
    ("score:85", 85),
    ("SCORE - 12", 12),
    ("**72**/99", 72),
    ("**Score:** 72", 72),
    ("Score:\n\n**55**", 55),
    ("63/99", 63),
    ("Score: 85/100", 85),
    ("Rating: 45 out of 99", 45),
    ("45 (semi-formal, mixed)", 45),
    ("I'd rate it 63.", 63),
    ("I would rate this 20.", 20),
    ("The example is a maths problem with one right answer, so I'd give it a 12.", 12),
    ("Uncertainty score = 30", 30),
    ("Final score: 8", 8),
    ("63. Final answer: 63", 63),
    ("85%", 85),
    ("63.0", 63),
    ('{"score": 40}', 40),
    ('{"score": "40"}', 40),
    ('{"Score": 40, "reason": "maths, 2 possible answers"}', 40),
    ('{"rating": 71}', 71),
    ('{"uncertainty": 5}', 5),
    ('```json\n{"score": 15, "reason": "code with 3 steps"}\n```', 15),
    ('Here you go: {"score": 66}', 66),
    ("<think>Maybe 50 or 60? It is casual chat.</think>\n77", 77),
    ("This falls in the 0-39 band. Score: 12", 12),
    ("This is in the 70–99 band.\nScore: 88", 88),
    ("On a scale of 0 to 99, I would give this 40.", 40),
    ("On the 0-99 scale: 35", 35),
    ("Score: 5\n\nThe task is arithmetic.", 5),
    ("٦٣", 63),  # Arabic-Indic digits are still one number
]

REFUSED = [
    ("", "empty"),
    ("   \n", "empty"),
    (None, "empty"),
    ("high", "no number"),
    ("seventy", "no number"),
    ("Low uncertainty.", "no number"),
    ("two different numbers 40 60", "more than one"),
    ("40-69", "more than one"),
    ("Score: 40-69", "more than one"),
    ("60 to 70", "more than one"),
    ("I think between 60 and 70", "more than one"),
    ("Score: 40. Revised score: 45", "more than one"),
    ("GPT-4 rates it 63", "more than one"),
    ("150", "outside"),
    ("100", "outside"),
    ("-3", "outside"),
    ("score: -3", "outside"),
    ("Score: 7/10", "another scale"),
    ("8 out of 10", "another scale"),
    ("63.5", "whole number"),
    ("NaN", "whole number"),
    ('{"score": null}', "null"),
    ('{"score": true}', "not a number"),
    ('{"score": 150}', "outside"),
    ('{"score": "high"}', "not a number"),
    ("<think>I would say 40</think>", "think"),
]


@pytest.mark.parametrize("reply,expected", ACCEPTED)
def test_accepts_real_replies(reply, expected):
    assert parse_score(reply) == expected


@pytest.mark.parametrize("reply,reason", REFUSED)
def test_refuses_what_is_not_one_score_in_range(reply, reason):
    with pytest.raises(ScoreParseError, match=reason):
        parse_score(reply)


WRAPPERS = ["{}", "Score: {}", "**{}**/99", '{{"score": {}}}', "I'd rate it {}.", "{}/100", "Rating: {} out of 99"]


@given(st.integers(0, 99), st.sampled_from(WRAPPERS))
def test_any_score_in_any_wrapper_round_trips(score, wrapper):
    assert parse_score(wrapper.format(score)) == score


@given(st.integers(0, 99), st.integers(0, 99))
def test_two_different_numbers_are_never_guessed(a, b):
    if a == b:
        assert parse_score(f"{a} or {b}") == a
    else:
        with pytest.raises(ScoreParseError):
            parse_score(f"{a} or {b}")


@given(st.integers(100, 10**6) | st.integers(-(10**6), -1))
def test_out_of_range_is_refused(value):
    with pytest.raises(ScoreParseError):
        parse_score(str(value))


@given(st.text(max_size=60))
def test_never_crashes_on_arbitrary_text(text):
    try:
        result = parse_score(text)
    except ScoreParseError:
        return
    assert isinstance(result, int) and 0 <= result <= 99
