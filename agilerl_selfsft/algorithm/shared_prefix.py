"""The prompt prefix every row of a batch shares, run through the model once instead of once per row.

Self-training batches repeat their prompts' start: the chat template's system turn (SmolLM2's default one is 21
tokens) and a task's fixed wording come before every row's own tokens; in the demo 29 tokens are shared (the
system turn and "What is the capital of"), about half of a 50-63 token row. Their hidden states, keys and values
are the same in every row, so a bucket whose rows begin alike is run in two passes: the shared prefix once
(batch 1, with its KV cache), then every row's own tokens attending to that cache, copied per row
(``Cache.batch_repeat_interleave``). Gradients flow back through the copies into the one prefix pass, so the loss
and the gradient are those of the full batch, up to float rounding (tested against it on llama, qwen2, gpt2 and
a LoRA-wrapped llama).

Where this does not hold, a bucket runs whole, as before: with gradient checkpointing while training (a
checkpointed layer drops the cache), with LoRA dropout while training (one prefix pass would share one dropout
mask between rows), on models with a sliding or chunked attention window, when the prefix would reach a
labelled position, and in distributed runs (DDP, DeepSpeed, sharded weights: each process must run the same
forward passes, and a parameter used by two passes of one backward confuses DDP's gradient hooks). It also runs
whole where one pass for the prefix would save too little (:data:`MIN_SAVED_POSITIONS`): the second pass has a
cost of its own, which two rows sharing a system turn do not repay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: shortest shared prefix worth its own pass (an extra forward call and a copy of its cache per row)
MIN_SHARED_PREFIX = 8
#: fewest positions the shared pass must save, ``(rows - 1) * prefix``: the second pass has a fixed cost (every
#: layer's kernels run twice, the head pass's matmuls have few rows). Measured on SmolLM2-135M + LoRA r16, fp32,
#: 2 threads of an AVX2 EPYC (``benchmarks/shared_prefix_buckets.py``, ``benchmarks/results/shared_prefix_buckets.md``):
#: two rows sharing 24-40 tokens ran 0.78-1.12x the whole bucket's speed, four rows 0.83-1.11x, eight 1.14-1.52x,
#: sixteen 1.40-1.95x. Below 8 rows it is within noise either way; the bound skips the two-row buckets
MIN_SAVED_POSITIONS = 64


def shared_prefix_length(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    keep: torch.Tensor,
    minimum: int = MIN_SHARED_PREFIX,
    min_saved: int = MIN_SAVED_POSITIONS,
) -> int:
    """How many leading tokens every right-padded row has in common: 0 if fewer than ``minimum``, if running them
    once saves fewer than ``min_saved`` positions (``(rows - 1) * length``), or for one row.

    The prefix stops before the first position whose hidden state is read (``keep``: position ``t`` predicts
    token ``t + 1``) and leaves every row at least one attended token of its own.

    :param input_ids: ``(B, L)`` token ids
    :param attention_mask: ``(B, L)``, 1 on each row's tokens, which start at position 0
    :param keep: ``(B, L - 1)``, true where a hidden state is read
    :param minimum: shortest prefix to share, defaults to :data:`MIN_SHARED_PREFIX`
    :param min_saved: fewest positions sharing must save, defaults to :data:`MIN_SAVED_POSITIONS`
    :rtype: int
    """
    if input_ids.shape[0] < 2:
        return 0
    mask = attention_mask.bool()
    same = ((input_ids == input_ids[:1]) & mask).all(dim=0)  # columns where every row has the first row's token
    limit = int(mask.sum(dim=1).min()) - 1
    read = keep.any(dim=0).nonzero()
    if len(read):
        limit = min(limit, int(read[0]))
    differ = (~same[:limit]).nonzero()
    length = int(differ[0]) if len(differ) else max(limit, 0)
    worth = length >= minimum and (input_ids.shape[0] - 1) * length >= min_saved
    return length if worth else 0


def forward_with_shared_prefix(
    model: Callable[..., Any], model_kwargs: dict[str, Any], prefix: int
) -> torch.Tensor:
    """``model(**model_kwargs).logits`` at positions ``prefix`` onwards, the first ``prefix`` tokens (the same in
    every row) computed once.

    :param model: a causal LM (or a wrapper passing keyword arguments on), returning ``logits`` and
        ``past_key_values``
    :param model_kwargs: ``input_ids`` and ``attention_mask`` (``(B, L)``, right padding), optionally
        ``position_ids``; other entries are passed to both passes
    :param prefix: the shared length, from :func:`shared_prefix_length`
    :return: ``(B, L - prefix, ·)``, the output of positions ``prefix .. L - 1``
    """
    ids, mask = model_kwargs["input_ids"], model_kwargs["attention_mask"]
    positions = model_kwargs.get("position_ids")
    other = {k: v for k, v in model_kwargs.items() if k not in ("input_ids", "attention_mask", "position_ids")}
    other["use_cache"] = True
    head = {"input_ids": ids[:1, :prefix], "attention_mask": mask[:1, :prefix], **other}
    if positions is not None:
        head["position_ids"] = positions[:1, :prefix]
    cache = model(**head).past_key_values
    cache.batch_repeat_interleave(ids.shape[0])
    tail = {"input_ids": ids[:, prefix:], "attention_mask": mask, "past_key_values": cache, **other}
    if positions is not None:
        tail["position_ids"] = positions[:, prefix:]
    return model(**tail).logits
