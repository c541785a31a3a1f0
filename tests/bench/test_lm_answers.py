"""Final-answer extraction and exact match (GSM8K style)."""

from __future__ import annotations

import pytest

from dopr_bench.lm.answers import answers_match, extract_answer, is_correct, normalize


@pytest.mark.parametrize("text, expected", [
    ("3 + 5 = 8\n#### 8", "8"),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("so the total is\n#### 1,234.", "1,234"),
    ("#### -7", "-7"),
    ("#### $15", "$15"),
    ("(1) 2 + 7 = 9\n#### 9\n#### 4\n(3) 1 + 1 = 2", "9"),  # the first answer given counts
    ("The answer is 42.", "42"),
    ("so the answer is: $12.50.", "12.50"),
    ("x = \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
    ("\\boxed{12}", "12"),
    ("we get 3, then 4 and finally 5.", "5"),
    ("-.5 is it", "-.5"),
    ("no number at all", None),
    ("#### ", None),
    ("", None),
])
def test_extract(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_normalize_and_match() -> None:
    assert normalize("1,234.") == 1234
    assert answers_match("3.0", "3")
    assert answers_match("$1,000", "1000")
    assert answers_match("1/2", "0.5")
    assert answers_match("\\frac{1}{2}", ".5")
    assert answers_match("50%", "50")
    assert not answers_match("3", "4")
    assert not answers_match(None, "4")
    assert not answers_match("", "")
    assert answers_match("Yes", " yes ")


def test_is_correct_against_solution_or_bare_reference() -> None:
    assert is_correct("(1) 2 + 7 = 9\n#### 9", "9")
    assert is_correct("blah 14", "She has 10 + 4 = 14.\n#### 14")
    assert not is_correct("#### 15", "14")
    assert not is_correct("I don't know", "14")
    assert is_correct("#### 72", "72.00")
    assert is_correct("so it is 5", "The answer is 5")
