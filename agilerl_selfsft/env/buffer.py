"""A bounded memory of past winners, replayed next to each iteration's new samples.

Replay keeps what earlier iterations learned in the training mix (a guard against forgetting when the new
winners are few); the capacity bounds memory and staleness — the oldest winners leave first.
:func:`static_count` says how many static conversations a refill mixes in beside them.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from agilerl_selfsft.samples import Message, Scored


class ReplayBuffer:
    """Past selected samples, oldest first, at most ``capacity`` of them.

    :param capacity: how many past winners to remember, defaults to 0 (no replay); None: all of them
    :type capacity: int, optional
    """

    def __init__(self, capacity: int | None = 0) -> None:
        if capacity is not None and capacity < 0:
            raise ValueError(f"replay capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.samples: deque[Scored] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.samples) if self.capacity != 0 else 0

    def add(self, samples: list[Scored]) -> None:
        """Remember new winners (no-op when capacity is 0)."""
        if self.capacity != 0:
            self.samples.extend(samples)

    def draw(self, n: int, exclude: list[Scored], rng: np.random.Generator) -> list[Scored]:
        """Up to ``n`` remembered samples, uniformly, skipping any whose (prompt, completion) is in ``exclude``."""
        if self.capacity == 0 or n <= 0:
            return []
        taken = {(s.prompt_id, s.completion) for s in exclude}
        pool = [s for s in self.samples if (s.prompt_id, s.completion) not in taken]
        picks = rng.choice(len(pool), size=min(n, len(pool)), replace=False) if pool else []
        return [pool[i] for i in sorted(picks)]


def static_count(fraction: float, own: int, prompts: int) -> int:
    """Static conversations in a refill: the share ``fraction`` of the buffer, at least ``fraction * prompts``."""
    if fraction <= 0:
        return 0
    if fraction >= 1:
        return prompts
    return max(int(fraction / (1 - fraction) * own + 0.5), int(fraction * prompts + 0.5))



def draw_static(conversations: list[list[Message]], order: list[int], n: int, rng: np.random.Generator) -> list[Scored]:
    """The next ``n`` of ``conversations`` as static samples (reward NaN, prompt id ``-1 - index``), walking
    shuffled passes: ``order`` holds the indices still to come in this pass (the next is the last) and is
    updated in place."""
    out = []
    while len(out) < n and conversations:
        if not order:
            order.extend(int(i) for i in rng.permutation(len(conversations)))
        i = order.pop()
        chat = conversations[i]
        reply = next(str(m["content"]) for m in reversed(chat) if m["role"] == "assistant")
        out.append(Scored(-1 - i, chat, reply, math.nan, True, static=True))
    return out
