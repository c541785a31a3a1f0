"""Final-answer extraction and exact match, GSM8K style.

Order of preference: the number after the first ``####`` (a model that runs on after its answer is held to
the answer it gave first, as lm-eval-harness does for GSM8K); ``\\boxed{...}``; "the answer is X"; the last number in
the text. Numbers are normalized (commas, currency, units and trailing dots dropped; ``3.0`` == ``3``;
``1/2`` == ``0.5``) before comparison.
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\$?\.\d+"
_NUM_RE = re.compile(_NUM)
_HASH_RE = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"answer is[:\s]*\$?\\?\(?\s*(" + _NUM + ")", re.IGNORECASE)


def _boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer in a model's (or a reference) solution, as a string; None if there is none."""
    if text is None:
        return None
    hashes = _HASH_RE.findall(text)
    if hashes:
        nums = _NUM_RE.findall(hashes[0])
        if nums:
            return nums[0]
        tail = hashes[0].strip()
        return tail or None
    boxed = _boxed(text)
    if boxed is not None:
        nums = _NUM_RE.findall(boxed)
        return nums[0] if len(nums) == 1 and nums[0].strip("-$") == boxed.strip().strip("$") else boxed.strip()
    m = _ANSWER_IS_RE.findall(text)
    if m:
        return m[-1]
    nums = _NUM_RE.findall(text)
    return nums[-1] if nums else None


def normalize(ans: str | None) -> Fraction | str | None:
    """A number (exact Fraction) when the answer is numeric, else a whitespace-collapsed lowercase string."""
    if ans is None:
        return None
    s = ans.strip().replace(",", "").replace("$", "").replace("\\%", "").rstrip("%").rstrip(".").strip()
    frac = re.fullmatch(r"\\d?frac\{(-?\d+)\}\{(\d+)\}", s)
    if frac:
        s = f"{frac.group(1)}/{frac.group(2)}"
    try:
        value = Fraction(s)
        return value
    except (ValueError, ZeroDivisionError):
        return " ".join(s.lower().split()) or None


def answers_match(predicted: str | None, reference: str | None) -> bool:
    """Exact match after normalization (numeric equality when both are numbers)."""
    a, b = normalize(predicted), normalize(reference)
    return a is not None and b is not None and a == b


def is_correct(generation: str, reference: str) -> bool:
    """Whether the final answer extracted from ``generation`` equals ``reference`` (a bare answer or a solution)."""
    if not isinstance(normalize(reference), Fraction):  # a solution text: take its final answer
        reference = extract_answer(reference) or reference
    return answers_match(extract_answer(generation), reference)
