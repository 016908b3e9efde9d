"""Grouped query heads folded onto their KV heads on decode steps: the same attention, no copy of the cache."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from agilerl_selfsft.generation.attention import NAME, _attention, grouped_decode_attention


@pytest.fixture(scope="module")
def gqa_model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_folded_heads_attend_as_repeated_heads_do(gqa_model):
    # one query position per row, 6 query heads on 2 KV heads, rows padded differently: the folded layout gives
    # transformers' own SDPA result (which copies each KV head to its 3 query heads)
    layer = gqa_model.model.layers[0].self_attn
    torch.manual_seed(1)
    q, k, v = torch.randn(4, 6, 1, 8), torch.randn(4, 2, 11, 8), torch.randn(4, 2, 11, 8)
    mask = torch.ones(4, 1, 1, 11, dtype=torch.bool)
    mask[1, ..., :3] = mask[3, ..., :7] = False
    ours, _ = _attention(layer, q, k, v, mask, scaling=8**-0.5)
    theirs, _ = sdpa_attention_forward(layer, q, k, v, mask, scaling=8**-0.5)
    assert ours.shape == theirs.shape == (4, 1, 6, 8)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_the_model_decodes_the_same_logits_inside_the_context(gqa_model):
    ids = torch.tensor([[0, 5, 9, 3], [7, 7, 2, 1]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    with torch.no_grad():
        prefill = gqa_model(input_ids=ids, attention_mask=mask, use_cache=True)
        step = dict(input_ids=torch.tensor([[4], [8]]), attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1),
                    position_ids=torch.tensor([[3], [4]]))
        plain = gqa_model(**step, past_key_values=_copy(prefill.past_key_values)).logits
        with grouped_decode_attention(gqa_model):
            assert gqa_model.config._attn_implementation == NAME
            folded = gqa_model(**step, past_key_values=_copy(prefill.past_key_values)).logits
    assert gqa_model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)


def test_the_model_gets_its_attention_back_when_the_call_raises_and_eager_is_left_alone(gqa_model):
    with pytest.raises(RuntimeError, match="boom"), grouped_decode_attention(gqa_model):
        raise RuntimeError("boom")
    assert gqa_model.config._attn_implementation == "sdpa"
    eager = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=6, num_key_value_heads=2, attn_implementation="eager"))
    with grouped_decode_attention(eager):
        assert eager.config._attn_implementation == "eager"


def _copy(cache):
    import copy

    return copy.deepcopy(cache)
