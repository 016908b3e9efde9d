"""Grouped-query attention for one-token decode steps without copying the KV cache.

transformers' SDPA attention repeats every key/value head for its query heads (``repeat_kv``: a copy of the
whole cache, per layer, per step) whenever an attention mask is passed, which the decode loop always does (its
rows are padded). SmolLM2-135M has 9 query heads on 3 KV heads, so each step copied the cache three times over:
9 % of a sampling call's time in the profile (``benchmarks/results/decode_steps``).

A decode step has one query position, so the G query heads that share a KV head can instead be laid out as G
query *positions* of that head: ``(B, H, 1, D)`` becomes ``(B, H_kv, G, D)``, every position attends to the same
keys under the same (broadcast) mask, and SDPA computes exactly the same dot products and softmaxes on the
cache as it is. :func:`grouped_decode_attention` swaps this in for the call, only on models whose attention is
``sdpa``; prefill steps (more than one query position), models without grouped heads, and anything
``sdpa_attention_forward`` handles specially (a position bias, attention dropout in training) take transformers'
own path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

NAME = "selfsft_sdpa_decode"


def _attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``sdpa_attention_forward`` with the query heads of a one-position step folded onto their KV heads."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, q_length, dim = query.shape
    if q_length != 1 or groups == 1 or dropout or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    folded = query.reshape(batch, heads // groups, groups, dim)  # query head h sits on KV head h // groups
    out = F.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(NAME, _attention)
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # the masks SDPA gets


@contextmanager
def grouped_decode_attention(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within this context, ``model``'s SDPA attention folds grouped query heads on decode steps (see above).

    Every config of the model whose attention is ``sdpa`` is switched for the context and switched back after,
    also when the context raises; a model with another attention (eager, flash, flex) is left as it is.
    """
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and getattr(c, "_attn_implementation", None) == "sdpa"}
    if not enabled or not configs:
        yield
        return
    _register()
    try:
        for config in configs.values():
            config._attn_implementation = NAME
        yield
    finally:
        for config in configs.values():
            config._attn_implementation = "sdpa"
