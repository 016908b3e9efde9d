"""The reference adapter's hidden states, kept per sample, so the KL anchor is computed once and not every step.

With ``kl_coef > 0`` every learning step also runs the frozen reference adapter over its rows: a forward pass with
no gradient, a third of a step's time on a CPU (``benchmarks/reference_cache.py``). The reference does not change
while the policy learns, and a sample is learned from ``sft_epochs`` times an iteration, and again whenever it is
replayed, so its reference hidden states at the labelled positions are the same every time.
:class:`ReferenceCache` keeps them by the row's tokens and labelled positions, in host memory (no accelerator
memory is spent), least recently used first out beyond a byte budget. The lm_head and the KL are still computed
each step from the kept hidden states, so the loss is the same as without the cache, up to the float rounding of
running a row in a different batch.

The cache forgets everything when the reference adapter's weights change (AgileRL's ``set_reference_policy``,
a loaded checkpoint): :meth:`ReferenceCache.validate` compares a fingerprint of them (each tensor's storage and
its sum and sum of squares) at the start of every ``learn``. It is used only in a single process without sharded
weights: with several processes a hit on one rank and a miss on another would make their forward passes (and
the collectives in them) differ.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable

import torch

#: host memory the kept hidden states may take by default (``SelfSFT.reference_cache_mb``)
DEFAULT_REFERENCE_CACHE_MB = 1024.0


def row_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> list[bytes]:
    """A key per right-padded row: a digest of its attended tokens and of which of them carry a label.

    :param input_ids: ``(B, L)`` token ids
    :param attention_mask: ``(B, L)``, 1 on the row's tokens (right padding)
    :param keep: ``(B, L - 1)``, true where position ``t`` predicts a labelled token ``t + 1``
    """
    ids, mask, keep = input_ids.detach().cpu(), attention_mask.detach().cpu().bool(), keep.detach().cpu()
    keys = []
    for row in range(ids.shape[0]):
        length = int(mask[row].sum())
        digest = hashlib.blake2b(digest_size=16)
        digest.update(ids[row, :length].to(torch.int64).numpy().tobytes())
        digest.update(keep[row, : max(length - 1, 0)].to(torch.bool).numpy().tobytes())
        keys.append(digest.digest())
    return keys


def fingerprint(parameters: Iterable[torch.Tensor]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Where each tensor's storage is, and its sum and sum of squares (in fp64): what changes when a weight does."""
    tensors = [p.detach() for p in parameters]
    if not tensors:
        return (), ()
    sums = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors])
    return tuple(t.data_ptr() for t in tensors), tuple(sums.flatten().tolist())


class ReferenceCache:
    """Hidden states ``(n_labelled, H)`` of the reference adapter per row key, least recently used first out.

    :param max_bytes: most bytes the kept tensors may take; 0 keeps nothing
    :type max_bytes: int
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._rows: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._fingerprint: tuple[tuple[int, ...], tuple[float, ...]] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: bytes) -> bool:
        return key in self._rows

    def validate(self, parameters: Iterable[torch.Tensor]) -> None:
        """Forget every kept row if the reference weights are not those the rows were computed with."""
        current = fingerprint(parameters)
        if current != self._fingerprint:
            self.clear()
            self._fingerprint = current

    def clear(self) -> None:
        """Forget every kept row."""
        self._rows.clear()
        self.bytes = 0

    def get(self, key: bytes) -> torch.Tensor:
        """The kept hidden states of a row (now the most recently used)."""
        self._rows.move_to_end(key)
        return self._rows[key]

    def put(self, key: bytes, hidden: torch.Tensor) -> None:
        """Keep a row's hidden states (a host copy), then drop the least recently used rows beyond the budget."""
        size = hidden.numel() * hidden.element_size()
        if size > self.max_bytes or key in self._rows:
            return
        self._rows[key] = hidden.detach().to("cpu", copy=True)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self._rows.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()
