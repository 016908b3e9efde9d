"""SelfSFT's sampling settings and their ranges, checked in the constructor and again at every sampling call.

The settings are plain attributes that a user or a mutation may change between calls, and a call may override
some of them, so :meth:`SelfSFT.sample <agilerl_selfsft.algorithm.selfsft.SelfSFT.sample>` checks the values it
is about to use: a bad one is refused before any decoding starts, with its name and value, instead of failing
deep in the decode loop (``max_new_tokens=0``), inside transformers (``top_k < 0``) or not at all.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


def _number_at_least_zero(value: Any) -> bool:
    """A finite real number (not a bool) >= 0."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _share(value: Any) -> bool:
    """A real number (not a bool) in (0, 1]."""
    return isinstance(value, Real) and not isinstance(value, bool) and 0 < value <= 1


def _integer_at_least(least: int) -> Any:
    """The test for an integer (not a bool) >= ``least``."""
    return lambda value: isinstance(value, Integral) and not isinstance(value, bool) and value >= least


#: each setting's test and what it must be, by the name a user gives it (``temperature``: a call's override)
RULES = {
    "sampling_temperature": (_number_at_least_zero, ">= 0 (0 = greedy)"),
    "temperature": (_number_at_least_zero, ">= 0 (0 = greedy)"),
    "top_p": (_share, "in (0, 1] (1 = off)"),
    "top_k": (_integer_at_least(0), "an integer >= 0 (0 = off)"),
    "max_new_tokens": (_integer_at_least(1), "an integer >= 1"),
    "generation_batch_size": (_integer_at_least(1), "an integer >= 1"),
    "num_generations": (_integer_at_least(1), "an integer >= 1"),
}


def check_sampling_settings(**settings: Any) -> None:
    """Refuse the first setting outside its range (see :data:`RULES`).

    :param settings: values by setting name, e.g. ``top_k=0, max_new_tokens=64``
    :type settings: Any
    :raises ValueError: naming the setting and its value, e.g. ``top_k must be an integer >= 0 (0 = off), got -1``
    """
    for name, value in settings.items():
        test, what = RULES[name]
        if not test(value):
            raise ValueError(f"{name} must be {what}, got {value!r}")


#: the attributes :meth:`SelfSFT.sample <agilerl_selfsft.algorithm.selfsft.SelfSFT.sample>` reads
ATTRIBUTES = ("sampling_temperature", "top_p", "top_k", "max_new_tokens", "generation_batch_size", "num_generations")


def check_sampling_call(agent: Any, **overrides: Any) -> None:
    """Check what one sampling call uses: the agent's :data:`ATTRIBUTES` and the overrides it is given (those
    that are not None).

    :param agent: the SelfSFT agent
    :type agent: SelfSFT
    :param overrides: the call's overrides by name, e.g. ``temperature=None, num_generations=3``
    :type overrides: Any
    :raises ValueError: as :func:`check_sampling_settings`
    """
    check_sampling_settings(**{name: getattr(agent, name) for name in ATTRIBUTES})
    check_sampling_settings(**{name: value for name, value in overrides.items() if value is not None})
