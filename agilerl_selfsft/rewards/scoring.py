"""Scoring with reward functions, with strict checks of what they return; the records a spec resolves to.

A reward function is ``reward_fn(prompts, completions, **columns) -> list[float]``: ``prompts`` and
``completions`` are parallel lists, and every extra column of the task (``answer=[...]``…) comes as a keyword
list of the same length. Functions should accept ``**kwargs`` so unknown columns do not break them. A
function may return a :class:`RewardValues` (a list with a ``metrics`` dict) to report counts of its own
(``label_agreement``, ``judge_unparseable``…); they reach the iteration's metrics. A function with a
``policy`` keyword parameter is also given the agent being trained (the ``judge`` reward uses it).

Specs (names, paths, options) are resolved into :class:`WeightedReward` by
:func:`agilerl_selfsft.rewards.registry.resolve_reward`.

Each call of a reward function may take at most ``timeout`` seconds (:data:`DEFAULT_TIMEOUT`; the config's
``reward_timeout``): the call then runs in a daemon thread, and one that has not returned in time ends the run
with a :class:`SelfSFTError` naming the function (the thread is left behind, to end with the process). With
no timeout (None) the function runs in the calling thread, as a function that sets signal handlers needs.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from agilerl_selfsft.errors import SelfSFTError

RewardFn = Callable[..., Sequence[float]]
DEFAULT_TIMEOUT = 300.0  # seconds a reward function may take per call


class RewardValues(list):
    """The rewards of one call (a ``list[float]``) and the function's own ``metrics`` (name → number)."""

    def __init__(self, values: Sequence[float] = (), metrics: Mapping[str, float] | None = None) -> None:
        super().__init__(values)
        self.metrics: dict[str, float] = dict(metrics or {})


@dataclass
class WeightedReward:
    """One reward function, its weight in the total, and whether it is handed the policy."""

    fn: RewardFn
    weight: float = 1.0
    name: str = ""
    wants_policy: bool = False


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
    timeout: float | None = DEFAULT_TIMEOUT, policy: Any = None,
) -> RewardValues:
    """The weighted total reward of each completion; a clear error names the function and first bad index.

    :param rewards: the weighted reward functions
    :param prompts: the prompt of each completion
    :param completions: the completions to score
    :param columns: the task's other columns, one value per completion
    :param timeout: seconds each function call may take, defaults to :data:`DEFAULT_TIMEOUT` (None: no limit)
    :param policy: the agent being trained, handed to functions with a ``policy`` parameter, defaults to None
    :return: the totals, with the ``metrics`` the functions reported (a later function's key wins a clash)
    :raises SelfSFTError: for a function that raises, does not return in time, or returns the wrong values
    """
    total = RewardValues([0.0] * len(completions))
    for reward in rewards:
        extra = {"policy": policy} if reward.wants_policy else {}
        try:
            values = _call(reward, timeout, prompts, completions, **columns, **extra)
        except _TimedOut:
            raise
        except SelfSFTError as exc:  # a built-in's own check: its message names the problem
            raise SelfSFTError(f"reward function {reward.name!r}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 -- the user's function failed: name it, keep the cause short
            raise SelfSFTError(f"reward function {reward.name!r} raised {type(exc).__name__}: {exc}") from exc
        total.metrics.update(getattr(values, "metrics", {}))
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
