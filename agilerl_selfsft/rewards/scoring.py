"""Scoring with reward functions, with strict checks of what they return; the records a spec resolves to.

A reward function is ``reward_fn(prompts, completions, **columns) -> list[float]``: ``prompts`` and
``completions`` are parallel lists, and every extra column of the task (``answer=[...]``…) comes as a keyword
list of the same length. Functions should accept ``**kwargs`` so unknown columns do not break them. As in
TRL, a value may be a float, an int, a bool (``True`` = 1.0) or ``None``: no score from this function for
that sample. A sample's reward is the weighted sum of the values it has; a sample no function scored has no
reward (``None``): it is left out of selection and of every mean, and counted as ``unscored``. A
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

import difflib
import importlib
import math
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

from agilerl_selfsft.errors import SelfSFTError

RewardFn = Callable[..., Sequence[float]]
DEFAULT_TIMEOUT = 300.0  # seconds a reward function may take per call


class RewardValues(list):
    """The rewards of one call (a ``list[float]``; :func:`score`'s totals may hold ``None``: unscored), the
    function's own ``metrics`` (name → number) and, from :func:`score`, each function's values by name
    (``terms``)."""

    def __init__(self, values: Sequence[float | None] = (), metrics: Mapping[str, float] | None = None) -> None:
        super().__init__(values)
        self.metrics: dict[str, float] = dict(metrics or {})
        self.terms: dict[str, list[float | None]] = {}


@dataclass
class WeightedReward:
    """One reward function, its weight in the total, and whether it is handed the policy."""

    fn: RewardFn
    weight: float = 1.0
    name: str = ""
    wants_policy: bool = False


def import_function(path: str, what: str = "reward", folders: Sequence[str | Path] = ()) -> Callable[..., Any]:
    """The function ``"package.module:function"`` names; a :class:`SelfSFTError` says what is wrong.

    A module that is not on the import path is looked for in ``folders`` (the config's folder) and the working
    directory, which are then appended to ``sys.path`` (after everything else: they never shadow a package).

    :param what: what the function is for, in errors, defaults to ``"reward"``
    :param folders: more folders to find the module in, defaults to ()
    """
    module_name, _, attr = path.partition(":")
    module = _import_module(module_name, path, what, folders)
    fn = getattr(module, attr, None)
    if not callable(fn):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SelfSFTError(f"{what} {path!r}: {module_name} has no function {attr!r}{hint}")
    return fn


def _import_module(module_name: str, path: str, what: str, folders: Sequence[str | Path]) -> Any:
    top = module_name.split(".")[0]
    searched = list(dict.fromkeys(str(Path(f).resolve()) for f in (*folders, Path.cwd())))
    for attempt in range(2):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != top:  # the module was found; something it imports is missing
                raise SelfSFTError(f"{what} {path!r}: module {module_name!r} does not import "
                                   f"(ModuleNotFoundError: {exc})") from None
            new = [f for f in searched if f not in sys.path]
            if attempt or not new:
                raise SelfSFTError(
                    f"{what} {path!r}: no module {top!r} on the import path, in the config's folder or in the "
                    f"working directory ({', '.join(searched)}); put {top}.py there or add its folder to PYTHONPATH"
                ) from None
            sys.path.extend(new)
            importlib.invalidate_caches()
        except Exception as exc:  # noqa: BLE001 -- any import failure is the user's module; report it in one line
            problem = f"{type(exc).__name__}: {exc}"
            raise SelfSFTError(f"{what} {path!r}: module {module_name!r} does not import ({problem})") from None
    raise AssertionError("unreachable")


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
    :return: the totals (``None`` where no function scored the completion), with the ``metrics`` the functions
        reported (a later function's key wins a clash; ``unscored`` counts the ``None`` totals) and each
        function's values (``terms``, by name)
    :raises SelfSFTError: for a function that raises, does not return in time, or returns the wrong values
    """
    total = RewardValues([None] * len(completions))
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
        values = _checked(reward.name, values, len(completions))
        total.terms[reward.name] = values
        for i, v in enumerate(values):
            if v is not None:
                total[i] = (total[i] or 0.0) + reward.weight * v
    if any(v is None for v in total):
        total.metrics["unscored"] = float(sum(v is None for v in total))
    return total


def _checked(name: str, values: Any, n: int) -> list[float | None]:
    """A function's return value as ``n`` floats or ``None``s (TRL's types: float, int, bool, None)."""
    try:
        values = list(values)
    except TypeError:
        raise SelfSFTError(f"reward function {name!r} returned {type(values).__name__}, not a list") from None
    if len(values) != n:
        raise SelfSFTError(f"reward function {name!r} returned {len(values)} values for {n} completions")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is not None and not isinstance(v, Real):  # bool is a Real (an int)
            raise SelfSFTError(f"reward function {name!r} returned a non-number at index {i}: {v!r} "
                               "(a reward is a float, int, bool, or None for no score)")
        if v is not None and not math.isfinite(float(v)):
            raise SelfSFTError(f"reward function {name!r} returned {float(v)} at index {i} "
                               "(return None for a sample it cannot score)")
        out.append(None if v is None else float(v))
    return out


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
