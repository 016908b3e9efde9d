"""The built-in rewards by their YAML names, and turning a reward spec into weighted functions.

Functions are resolved from a built-in name (:data:`BUILTINS`) or an explicit ``package.module:function``
path only; model output is never executed outside the ``python_tests`` sandbox. A mapping spec ``{name,
weight, **options}`` binds the options as keyword arguments, checked against the function's own keyword
parameters (``policy`` excepted: the loop hands it over).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.rewards.checks import contains, exact_match, first_number, format, length_penalty  # noqa: A004
from agilerl_selfsft.rewards.checks import check_length_options as check_length
from agilerl_selfsft.rewards.code import check_options as check_code
from agilerl_selfsft.rewards.code import python_tests
from agilerl_selfsft.rewards.judge import check_options as check_judge
from agilerl_selfsft.rewards.judge import judge
from agilerl_selfsft.rewards.scoring import RewardFn, WeightedReward, import_function
from agilerl_selfsft.rewards.vote import canonical, extractor, first_number_of, majority_vote
from agilerl_selfsft.rewards.vote import check_options as check_vote

BUILTINS: dict[str, RewardFn] = {
    "exact_match": exact_match,
    "contains": contains,
    "first_number": first_number,
    "format": format,
    "length_penalty": length_penalty,
    "majority_vote": majority_vote,
    "judge": judge,
    "python_tests": python_tests,
}
# Checks of a built-in's options, run when a spec is resolved (a typo fails before the model loads).
OPTION_CHECKS: dict[str, Callable[..., None]] = {"majority_vote": check_vote, "judge": check_judge,
                                                 "python_tests": check_code, "length_penalty": check_length}


def _keywords(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The parameters of ``fn`` an option may set (not ``prompts``/``completions``, not ``*args``/``**kw``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable: no options known
        return {}
    plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n: p for n, p in params.items() if p.kind in plain and n not in ("prompts", "completions")}


def resolve_reward(
    spec: Any, builtins: Mapping[str, RewardFn] | None = None, folders: Sequence[str | Path] = ()
) -> list[WeightedReward]:
    """Turn a reward spec into weighted functions.

    A spec is a callable, a built-in name, ``"package.module:function"``, a mapping ``{name, weight,
    **options}`` (options are the function's keyword arguments, e.g. ``pattern`` for ``format``), or a list
    of those.

    :param builtins: the names known, defaults to None (:data:`BUILTINS`)
    :param folders: where else a ``module:function``'s module may be (the config's folder; the working
        directory is always tried), defaults to ()
    :raises SelfSFTError: for an unknown name or option, a bad weight, or an empty list
    """
    builtins = BUILTINS if builtins is None else builtins
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise SelfSFTError("reward: the list of reward functions is empty")
        return [r for item in spec for r in resolve_reward(item, builtins, folders)]
    weight, options = 1.0, {}
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise SelfSFTError(f"reward: an entry needs a name (and optionally weight and options); got {sorted(spec)}")
        options = {k: v for k, v in spec.items() if k not in ("name", "weight")}
        weight, spec = spec.get("weight", 1.0), spec["name"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise SelfSFTError(f"reward: weight of {spec!r} must be a finite number, got {weight!r}")
    if callable(spec):
        fn, name = spec, getattr(spec, "__name__", repr(spec))
    elif not isinstance(spec, str):
        raise SelfSFTError(f"reward: expected a name or 'module:function', got {type(spec).__name__}")
    elif spec in builtins:
        fn, name = builtins[spec], spec
    elif ":" in spec:
        fn, name = import_function(spec, folders=folders), spec
    else:
        close = difflib.get_close_matches(spec, list(builtins), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SelfSFTError(f"unknown reward {spec!r}; {hint}built-ins are: {', '.join(builtins)} "
                           "(or use 'module:function')")
    keywords = _keywords(fn)
    unknown = sorted(set(options) - set(keywords) | ({"policy"} & set(options)))
    if unknown:
        known = [k for k in keywords if k != "policy"]
        raise SelfSFTError(f"reward {name!r} has no option {unknown[0]!r}; its options are: "
                           f"{', '.join(known) or 'none'}")
    if name in OPTION_CHECKS and fn is builtins.get(name):
        OPTION_CHECKS[name](**options)
    if options:
        fn = functools.partial(fn, **options)
    return [WeightedReward(fn, float(weight), name, "policy" in keywords)]


def answer_extractor(rewards: list[WeightedReward]) -> Callable[[str], str | None] | None:
    """How to pull a comparable answer out of a completion scored by ``rewards`` (for maj@k), or None when the
    reward does not say: ``first_number`` (the first number), ``exact_match`` (the whole reply, normalised),
    ``majority_vote`` (its own ``extract``). Answers come back in :func:`~agilerl_selfsft.rewards.vote.canonical`
    form; a reward of several functions uses its first that says.
    """
    for reward in rewards:
        fn = reward.fn.func if isinstance(reward.fn, functools.partial) else reward.fn
        options = reward.fn.keywords if isinstance(reward.fn, functools.partial) else {}
        pull = {first_number: first_number_of, exact_match: str,
                majority_vote: extractor(options.get("extract", "first_number"))}.get(fn)
        if pull is not None:
            return lambda text, pull=pull: canonical(pull(text))
    return None
