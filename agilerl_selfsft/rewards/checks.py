"""Checkers against a known answer, a format check and a length term: ``exact_match``, ``contains``,
``first_number``, ``format``, ``length_penalty``.

Each takes the reward signature ``fn(prompts, completions, **columns) -> list[float]``; the answer checks read
the ``answer`` column, where a row's answer may be a string or a list of accepted strings.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

from agilerl_selfsft.errors import SelfSFTError

# A default for ``format``: one short line (a concise answer, no rambling).
DEFAULT_FORMAT = r"[^\n]{1,80}"
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalise(text: str) -> str:
    """Case-folded, accents dropped ("Brasília" matches "Brasilia"), runs of white space made one space."""
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(text.casefold().split())


def accepted_answers(answer: Any) -> list[str]:
    """A row's answer as the list of accepted strings (one string, or a list of them)."""
    return [str(a) for a in answer] if isinstance(answer, (list, tuple)) else [str(answer)]


def as_number(text: str) -> float | None:
    """``text`` as a number (``1,000`` is 1000), or None when it is not one."""
    try:
        return float(str(text).replace(",", ""))
    except ValueError:
        return None


def exact_match(prompts: list, completions: list[str], answer: list, **_: Any) -> list[float]:
    """1.0 when the completion, trimmed of space and end punctuation and case-folded, equals an answer."""
    out = []
    for completion, ans in zip(completions, answer, strict=True):
        got = normalise(completion).strip(" .!?\"'")
        out.append(float(any(got == normalise(a).strip(" .!?\"'") for a in accepted_answers(ans))))
    return out


def contains(prompts: list, completions: list[str], answer: list, **_: Any) -> list[float]:
    """1.0 when the completion names an answer as whole words (case- and accent-insensitive)."""
    out = []
    for completion, ans in zip(completions, answer, strict=True):
        text = normalise(completion)
        out.append(float(any(re.search(rf"(?<!\w){re.escape(normalise(a))}(?!\w)", text) for a in accepted_answers(ans))))
    return out


def first_number(prompts: list, completions: list[str], answer: list, **_: Any) -> list[float]:
    """1.0 when the first number in the completion equals the answer (``1,000`` == ``1000``, ``3.0`` == ``3``)."""
    out = []
    for completion, ans in zip(completions, answer, strict=True):
        match = NUMBER.search(str(completion))
        got = as_number(match.group()) if match else None
        wanted = [as_number(a) for a in accepted_answers(ans)]
        out.append(float(got is not None and any(
            w is not None and math.isclose(got, w, rel_tol=0, abs_tol=1e-9) for w in wanted)))
    return out


def format(prompts: list, completions: list[str], pattern: str = DEFAULT_FORMAT, **_: Any) -> list[float]:  # noqa: A001 -- the YAML name
    """1.0 for completions (stripped) that fully match the regular expression ``pattern`` (``re.DOTALL``)."""
    compiled = re.compile(pattern, re.DOTALL)
    return [float(compiled.fullmatch(str(c).strip()) is not None) for c in completions]


def length_penalty(prompts: list, completions: list[str], max_chars: int = 200, **_: Any) -> list[float]:
    """``-len(completion) / max_chars``, at least -1: a term to add, with a small weight, to a checker's reward
    (``reward: [first_number, {name: length_penalty, weight: 0.1}]``). Use it with ``top_k`` or ``top_fraction``
    selection (or a threshold below the checker's 1.0): it takes every reply below 1.0."""
    check_length_options(max_chars)
    return [-min(len(str(c)) / max_chars, 1.0) for c in completions]


def check_length_options(max_chars: Any = 200, **_: Any) -> None:
    """Refuse a ``max_chars`` that is not an integer >= 1 when the reward is resolved."""
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise SelfSFTError(f"length_penalty: max_chars must be an integer >= 1, got {max_chars!r}")
