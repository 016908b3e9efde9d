"""Reward functions with the TRL/Unsloth signature, the built-ins, and strict checking of what they return.

A reward function is ``reward_fn(prompts, completions, **columns) -> list[float]``: ``prompts`` and
``completions`` are parallel lists, and every extra column of the task (``answer=[...]``…) comes as a keyword
list of the same length. Functions should accept ``**kwargs`` so unknown columns do not break them.

Built-ins (the names used in YAML): ``exact_match``, ``contains``, ``first_number``, ``format``. An answer
may be a string or a list of accepted strings. Functions are resolved from these names or from an explicit
``package.module:function`` path only; model output is never executed.

Each call of a reward function may take at most ``timeout`` seconds (:data:`DEFAULT_TIMEOUT`; the config's
``reward_timeout``): the call then runs in a daemon thread, and one that has not returned in time ends the run
with a :class:`SelfSFTError` naming the function (the thread is left behind, to end with the process). With
no timeout (None) the function runs in the calling thread, as a function that sets signal handlers needs.
"""

from __future__ import annotations

import importlib
import math
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from agilerl_selfsft.errors import SelfSFTError

RewardFn = Callable[..., Sequence[float]]
DEFAULT_TIMEOUT = 300.0  # seconds a reward function may take per call


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c for c in text if not unicodedata.combining(c))  # "Brasília" matches "Brasilia"
    return " ".join(text.casefold().split())


def _answers(answer: Any) -> list[str]:
    return [str(a) for a in answer] if isinstance(answer, (list, tuple)) else [str(answer)]


def exact_match(prompts: list, completions: list[str], answer: list, **_: Any) -> list[float]:
    """1.0 when the completion, trimmed of space and end punctuation and case-folded, equals an answer."""
    out = []
    for completion, ans in zip(completions, answer, strict=True):
        got = _normalise(completion).strip(" .!?\"'")
        out.append(float(any(got == _normalise(a).strip(" .!?\"'") for a in _answers(ans))))
    return out


def contains(prompts: list, completions: list[str], answer: list, **_: Any) -> list[float]:
    """1.0 when the completion names an answer as whole words (case- and accent-insensitive)."""
    out = []
    for completion, ans in zip(completions, answer, strict=True):
        text = _normalise(completion)
        out.append(float(any(re.search(rf"(?<!\w){re.escape(_normalise(a))}(?!\w)", text) for a in _answers(ans))))
    return out


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def first_number(prompts: list, completions: list[str], answer: list, **_: Any) -> list[float]:
    """1.0 when the first number in the completion equals the answer (``1,000`` == ``1000``, ``3.0`` == ``3``)."""
    out = []
    for completion, ans in zip(completions, answer, strict=True):
        match = _NUMBER.search(str(completion))
        ok = False
        if match:
            got = float(match.group().replace(",", ""))
            for a in _answers(ans):
                try:
                    ok = ok or math.isclose(got, float(str(a).replace(",", "")), rel_tol=0, abs_tol=1e-9)
                except ValueError:
                    pass
        out.append(float(ok))
    return out


def format_regex(pattern: str) -> RewardFn:
    """A reward of 1.0 for completions that fully match ``pattern`` (``re.DOTALL``), else 0.0."""
    compiled = re.compile(pattern, re.DOTALL)

    def format_reward(prompts: list, completions: list[str], **_: Any) -> list[float]:
        return [float(compiled.fullmatch(str(c).strip()) is not None) for c in completions]

    format_reward.__name__ = f"format({pattern!r})"
    return format_reward


# A default for ``format``: one short line (a concise answer, no rambling).
DEFAULT_FORMAT = r"[^\n]{1,80}"

BUILTINS: dict[str, Callable[..., RewardFn] | RewardFn] = {
    "exact_match": exact_match,
    "contains": contains,
    "first_number": first_number,
    "format": format_regex,
}


@dataclass
class WeightedReward:
    """One reward function and its weight in the total."""

    fn: RewardFn
    weight: float = 1.0
    name: str = ""


def resolve_reward(spec: Any) -> list[WeightedReward]:
    """Turn a reward spec into weighted functions.

    A spec is a callable, a built-in name, ``"package.module:function"``, a mapping ``{name, weight,
    pattern}`` (``pattern`` for ``format``), or a list of those.
    """
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise SelfSFTError("reward: the list of reward functions is empty")
        return [r for item in spec for r in resolve_reward(item)]
    weight = 1.0
    pattern = None
    if isinstance(spec, dict):
        unknown = set(spec) - {"name", "weight", "pattern"}
        if unknown or "name" not in spec:
            raise SelfSFTError(f"reward: an entry takes keys name, weight, pattern; got {sorted(spec)}")
        weight, pattern, spec = spec.get("weight", 1.0), spec.get("pattern"), spec["name"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise SelfSFTError(f"reward: weight of {spec!r} must be a finite number, got {weight!r}")
    if callable(spec):
        return [WeightedReward(spec, float(weight), getattr(spec, "__name__", repr(spec)))]
    if not isinstance(spec, str):
        raise SelfSFTError(f"reward: expected a name or 'module:function', got {type(spec).__name__}")
    if spec == "format":
        fn = format_regex(pattern or DEFAULT_FORMAT)
    elif spec in BUILTINS:
        fn = BUILTINS[spec]
    elif ":" in spec:
        fn = import_function(spec)
    else:
        raise SelfSFTError(f"unknown reward {spec!r}; built-ins are: {', '.join(BUILTINS)} (or use 'module:function')")
    return [WeightedReward(fn, float(weight), spec)]


def import_function(path: str, what: str = "reward") -> Callable[..., Any]:
    """The function ``"package.module:function"`` names; a :class:`SelfSFTError` says what is wrong.

    :param what: what the function is for, in errors, defaults to ``"reward"``
    """
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 -- any import failure is the user's module; report it in one line
        problem = f"{type(exc).__name__}: {exc}"
        raise SelfSFTError(f"{what} {path!r}: module {module_name!r} does not import ({problem})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SelfSFTError(f"{what} {path!r}: {module_name} has no function {attr!r}")
    return fn


def score(
    rewards: list[WeightedReward], prompts: list, completions: list[str], columns: dict[str, list],
    timeout: float | None = DEFAULT_TIMEOUT,
) -> list[float]:
    """The weighted total reward of each completion; a clear error names the function and first bad index.

    :param rewards: the weighted reward functions
    :param prompts: the prompt of each completion
    :param completions: the completions to score
    :param columns: the task's other columns, one value per completion
    :param timeout: seconds each function call may take, defaults to :data:`DEFAULT_TIMEOUT` (None: no limit)
    :raises SelfSFTError: for a function that raises, does not return in time, or returns the wrong values
    """
    total = [0.0] * len(completions)
    for reward in rewards:
        try:
            values = _call(reward, timeout, prompts, completions, **columns)
        except _TimedOut:
            raise
        except Exception as exc:  # noqa: BLE001 -- the user's function failed: name it, keep the cause short
            raise SelfSFTError(f"reward function {reward.name!r} raised {type(exc).__name__}: {exc}") from exc
        try:
            values = list(values)
        except TypeError:
            what = type(values).__name__
            raise SelfSFTError(f"reward function {reward.name!r} returned {what}, not a list") from None
        if len(values) != len(completions):
            raise SelfSFTError(
                f"reward function {reward.name!r} returned {len(values)} values for {len(completions)} completions"
            )
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, Real):
                raise SelfSFTError(f"reward function {reward.name!r} returned a non-number at index {i}: {v!r}")
            if not math.isfinite(float(v)):
                raise SelfSFTError(f"reward function {reward.name!r} returned {float(v)} at index {i}")
            total[i] += reward.weight * float(v)
    return total


class _TimedOut(SelfSFTError):
    """A reward function that did not return within its time."""


def _call(reward: WeightedReward, timeout: float | None, *args: Any, **kwargs: Any) -> Any:
    """``reward.fn(*args, **kwargs)``, given at most ``timeout`` seconds (in a daemon thread) unless None."""
    if timeout is None:
        return reward.fn(*args, **kwargs)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["values"] = reward.fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller's thread as it is
            outcome["error"] = exc

    worker = threading.Thread(target=run, name=f"reward {reward.name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise _TimedOut(f"reward function {reward.name!r} did not return within {timeout:g} s (reward_timeout); "
                           "make it faster or raise reward_timeout, then resume")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["values"]
