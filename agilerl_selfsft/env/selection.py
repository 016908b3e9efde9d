"""Which scored completions to learn from: the selection step of rejection-sampling fine-tuning.

Strategies (each applied after dropping exact duplicates of the same prompt's completions):

- ``threshold``: every completion whose reward is at least ``threshold``;
- ``top_k``: the ``k`` best completions of each prompt (keyed by prompt id), among those at or above
  ``threshold``;
- ``top_fraction``: the best ``fraction`` of all completions (Agent-lightning's ``data_filter_ratio``), among
  those at or above ``threshold``;
- ``random``: a control — as many completions as ``threshold`` would keep, drawn uniformly at random from
  all completions whatever their reward. It isolates the effect of choosing by reward.

With ``prefer_shorter``, samples are ordered shortest first (in characters, a stable sort) before dedup and
the strategy: among equally rewarded samples, ``top_k`` and ``top_fraction`` keep the shorter, and dedup
keeps the shortest spelling of a repeated completion. ``threshold`` keeps every passing sample either way.
"""

from __future__ import annotations

import math
import numpy as np

from agilerl_selfsft.samples import Scored

STRATEGIES = ("threshold", "top_k", "top_fraction", "random")


def dedup(samples: list[Scored]) -> list[Scored]:
    """Drop repeats of a completion for the same prompt (whitespace-insensitive), keeping the first."""
    seen: set[tuple[int, str]] = set()
    out = []
    for s in samples:
        key = (s.prompt_id, " ".join(s.completion.split()))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def select(
    samples: list[Scored],
    strategy: str = "threshold",
    threshold: float = 1.0,
    k: int = 1,
    fraction: float = 0.25,
    keep_truncated: bool = False,
    rng: np.random.Generator | None = None,
    prefer_shorter: bool = False,
) -> list[Scored]:
    """Choose the samples to learn from (see the module docstring for the strategies and ``prefer_shorter``)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if prefer_shorter:
        samples = sorted(samples, key=lambda s: len(s.completion))
    pool = [s for s in dedup(samples) if keep_truncated or s.finished]
    passing = [s for s in pool if s.reward >= threshold]
    if strategy == "threshold":
        return passing
    if strategy == "top_k":
        by_prompt: dict[int, list[Scored]] = {}
        for s in passing:
            by_prompt.setdefault(s.prompt_id, []).append(s)
        # sorted() is stable: among equal rewards, generation order decides
        return [s for group in by_prompt.values() for s in sorted(group, key=lambda s: -s.reward)[:k]]
    if strategy == "top_fraction":
        n = math.ceil(fraction * len(pool))
        return sorted(passing, key=lambda s: -s.reward)[:n]
    rng = rng if rng is not None else np.random.default_rng()
    count = min(len(passing), len(pool))
    picks = rng.choice(len(pool), size=count, replace=False) if count else []
    return [pool[i] for i in sorted(picks)]
