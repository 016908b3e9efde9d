"""Length buckets: which rows of a training micro-batch go through the model together, and how wide.

AgileRL's ``SFT.learn`` runs every micro-batch at the width of the longest row in the whole batch, so a batch
that mixes short answers with long explanations spends most of its compute on padding. :func:`plan_buckets`
splits one micro-batch into *buckets* of rows of similar length, each cut to its own longest row:

- a row's length is its *extent*, the position of its last attended token plus one (:func:`row_extents`).
  Columns past a bucket's longest extent are padding for every row in it, and no kept position attends to
  them (causal attention) or is labelled by them, so cutting them changes no logit that the loss reads.
  That holds for any padding side, but only right padding leaves something to cut (AgileRL's and
  :func:`agilerl_selfsft.data.chat.collate`'s batches are right-padded);
- rows without a labelled token add nothing to the loss or its gradient: they are left out;
- the buckets are the *fewest* whose computed padding (bucket rows × bucket width − real tokens) is at most
  ``max_padding`` of the computed tokens, each within ``max_tokens`` (rows × width; a row longer than that
  gets a bucket of its own); among those, the split with the least padding. It is found exactly, by dynamic
  programming over the rows sorted by length (an optimal split of sorted rows into k groups is contiguous).
  Few buckets keep each forward pass large (what an accelerator needs); the bound keeps the waste small.

The caller weights each bucket's mean loss by its share of the micro-batch's labelled tokens, so the
bucket losses add up to the micro-batch's token-mean loss and their gradients to its gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_MAX_PADDING = 0.1


@dataclass(frozen=True)
class Bucket:
    """Rows of a batch that go through the model together, cut to ``length`` columns."""

    rows: tuple[int, ...]
    length: int

    @property
    def computed_tokens(self) -> int:
        """Positions the model computes for this bucket (rows × length), padding included."""
        return len(self.rows) * self.length


def row_extents(attention_mask: torch.Tensor) -> list[int]:
    """Per row, the index of its last attended position plus one (0 for a row with no attended position)."""
    mask = attention_mask.detach().cpu().bool()
    width = mask.shape[1]
    last = width - mask.flip(1).int().argmax(dim=1)  # argmax finds the first attended position from the end
    return torch.where(mask.any(dim=1), last, torch.zeros_like(last)).tolist()


def plan_buckets(
    rows: Sequence[int],
    extents: Sequence[int],
    labelled: Sequence[bool],
    max_tokens: int | None = None,
    max_padding: float = DEFAULT_MAX_PADDING,
    split: bool = True,
) -> list[Bucket]:
    """The buckets of one micro-batch (see the module docstring), longest first.

    :param rows: the micro-batch's row indices in the batch
    :param extents: every batch row's extent (:func:`row_extents`), indexed by row
    :param labelled: whether each batch row has a labelled token, indexed by row
    :param max_tokens: most rows × width per bucket, defaults to None (no cap)
    :param max_padding: most computed padding allowed, as a share of computed tokens, defaults to 0.1
    :param split: False gives one bucket of all labelled rows, cut to their longest extent (for engines that
        need the same number of forward passes on every process, such as DeepSpeed ZeRO-3), defaults to True
    :return: buckets whose rows are the labelled rows of ``rows``, each once. A micro-batch without any
        labelled token gets one bucket of all its rows (its loss is zero, but the optimizer still steps on
        it, as AgileRL does)
    """
    rows = list(rows)
    kept = [r for r in rows if labelled[r]]
    if not kept:
        width = max((extents[r] for r in rows), default=0)
        return [Bucket(tuple(rows), max(width, 1))] if rows else []
    if not split:
        return [Bucket(tuple(kept), max(extents[r] for r in kept))]
    order = sorted(kept, key=lambda r: -extents[r])  # stable: equal lengths keep their batch order
    groups = _fewest_groups([extents[r] for r in order], max_tokens, max_padding)
    return [Bucket(tuple(sorted(order[i:j])), extents[order[i]]) for i, j in groups]


def _fewest_groups(lengths: Sequence[int], max_tokens: int | None, max_padding: float) -> list[tuple[int, int]]:
    """Split ``lengths`` (sorted longest first) into the fewest contiguous groups ``[i, j)`` whose padding is
    within ``max_padding`` of computed tokens and whose size × first length is within ``max_tokens`` (a
    group of one is always allowed); among splits with that many groups, the one with the least padding."""
    n = len(lengths)
    length = np.asarray(lengths, dtype=np.float64)
    prefix = np.concatenate([[0.0], np.cumsum(length)])
    i = np.arange(n)[:, None]
    j = np.arange(n + 1)[None, :]
    size = j - i
    # cost[i, j]: padding of group [i, j) = size × its longest (the first) − its real tokens
    cost = size * length[:, None] - (prefix[None, :] - prefix[:n, None])
    allowed = size >= 1
    if max_tokens is not None:
        allowed &= (size == 1) | (size * length[:, None] <= max_tokens)
    cost = np.where(allowed, cost, np.inf)
    fraction = min(max(float(max_padding), 0.0), 0.999)
    budget = fraction / (1.0 - fraction) * prefix[-1] + 1e-9  # padding p ≤ f·(real + p)  ⇔  p ≤ f/(1−f)·real
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    parents = []
    for _ in range(n):  # k groups; n groups of one have no padding, so this always ends
        total = best[:, None][:-1] + cost  # [i, j]: best split of [0, i) plus group [i, j)
        parent = total.argmin(axis=0)
        best = total[parent, np.arange(n + 1)]
        best[0] = np.inf
        parents.append(parent)
        if best[n] <= budget:
            break
    groups, end = [], n
    for parent in reversed(parents):
        start = int(parent[end])
        groups.append((start, end))
        end = start
    return groups[::-1]


def padding_fraction(computed_tokens: int, real_tokens: int) -> float:
    """Share of computed positions that are padding (0 when nothing was computed)."""
    return (computed_tokens - real_tokens) / computed_tokens if computed_tokens else 0.0
