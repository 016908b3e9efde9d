"""``majority_vote``: rewards from agreement among a prompt's own samples, for tasks without gold labels.

Self-consistency as a label (as in TTRL): an extractor pulls an answer out of each of the K completions of a
prompt, the most common answer becomes the prompt's pseudo-label, and each completion scores 1.0 when its
answer agrees with it (0.0 otherwise, and when nothing could be extracted). A prompt whose majority holds
fewer than ``min_agreement`` of its K samples is too weak to trust: all its samples score 0.0, so selection
keeps none of them. Samples of one prompt are grouped by their prompt, so every call must hold all K samples
of a prompt, as the loop's scoring calls do; a greedy evaluation (K = 1) always agrees with itself, which is
why the config's ``eval_reward`` can name a real checker for the held-out split.

Extractors (``extract``): ``first_number``, ``last_number``, ``boxed`` (the last ``\\boxed{...}``),
``final_line`` (the last non-empty line), or a ``"module:function"`` path to ``fn(completion) -> str | None``.
Numbers compare as numbers (``1,000`` == ``1000.0``), other answers case- and space-insensitively.

Metrics: ``label_agreement`` (mean share of a prompt's samples that agree with its majority),
``vote_skipped`` (prompts below ``min_agreement``), and, when the rows have a ``gold_column`` (``answer``),
``label_accuracy``: the share of voted prompts whose pseudo-label is the real answer (a measurement only: the
rewards never read it).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.rewards.checks import NUMBER, accepted_answers, as_number, normalise
from agilerl_selfsft.rewards.scoring import RewardValues, import_function


def _numbers(text: str) -> list[str]:
    return NUMBER.findall(str(text))


def first_number_of(text: str) -> str | None:
    """The first number in ``text``."""
    found = _numbers(text)
    return found[0] if found else None


def last_number_of(text: str) -> str | None:
    """The last number in ``text``."""
    found = _numbers(text)
    return found[-1] if found else None


def boxed_of(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces allowed), or None."""
    start = str(text).rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None  # unclosed


def final_line_of(text: str) -> str | None:
    """The last non-empty line of ``text``."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else None


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "first_number": first_number_of, "last_number": last_number_of, "boxed": boxed_of, "final_line": final_line_of,
}


def extractor(name: str | Callable[[str], str | None]) -> Callable[[str], str | None]:
    """The extractor ``name`` names (built-in or ``"module:function"``), or ``name`` itself when callable."""
    if callable(name):
        return name
    if name in EXTRACTORS:
        return EXTRACTORS[name]
    if isinstance(name, str) and ":" in name:
        return import_function(name, "majority_vote extractor")
    raise SelfSFTError(f"majority_vote: unknown extract {name!r}; use one of {', '.join(EXTRACTORS)} "
                       "or 'module:function'")


def canonical(answer: Any) -> str | None:
    """The form answers are compared in: a number's value, else the case-folded text; None for nothing."""
    if answer is None or not str(answer).strip():
        return None
    number = as_number(str(answer).strip())
    if number is not None:
        return repr(float(number))
    return normalise(str(answer)).strip(" .")


def check_options(extract: Any = "first_number", min_agreement: float = 0.5, **_: Any) -> None:
    """Refuse a bad ``extract`` or ``min_agreement`` when the reward is resolved, before any work."""
    extractor(extract)
    if isinstance(min_agreement, bool) or not isinstance(min_agreement, (int, float)) or not 0 <= min_agreement <= 1:
        raise SelfSFTError(f"majority_vote: min_agreement must be between 0 and 1, got {min_agreement!r}")


def majority_vote(
    prompts: list, completions: list[str], extract: str | Callable[[str], str | None] = "first_number",
    min_agreement: float = 0.5, gold_column: str = "answer", **columns: Any,
) -> RewardValues:
    """1.0 for each completion whose extracted answer is its prompt's majority answer (see the module).

    :param extract: the extractor, defaults to ``"first_number"``
    :param min_agreement: the smallest share of a prompt's samples its majority must hold, defaults to 0.5
    :param gold_column: a column of real answers, used only for the ``label_accuracy`` metric (never for
        the rewards), defaults to ``"answer"``; rows without it give no such metric
    """
    answer = columns.get(gold_column)
    check_options(extract, min_agreement)
    pull = extractor(extract)
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(json.dumps(prompt, sort_keys=True, default=str), []).append(i)
    got = [canonical(pull(str(c))) for c in completions]
    rewards = [0.0] * len(completions)
    agreement, skipped, correct, voted = [], 0, 0, 0
    for members in groups.values():
        votes = Counter(got[i] for i in members if got[i] is not None)
        if not votes:
            agreement.append(0.0)
            skipped += 1
            continue
        label = votes.most_common(1)[0][0]  # counted in sample order: a tie goes to the earliest answer
        share = votes[label] / len(members)
        agreement.append(share)
        if share < min_agreement:
            skipped += 1
            continue
        voted += 1
        if answer is not None:
            correct += label in {canonical(a) for a in accepted_answers(answer[members[0]])}
        for i in members:
            rewards[i] = float(got[i] == label)
    metrics = {"label_agreement": sum(agreement) / len(agreement) if agreement else 0.0,
               "vote_skipped": float(skipped)}
    if answer is not None:
        metrics["label_accuracy"] = correct / voted if voted else 0.0
    return RewardValues(rewards, metrics)
