"""Seeded tiny models of every architecture family the library claims (shared by the decode and learning tests).

Llama, Qwen2 (plain and with sliding windows), Mistral (a window narrower than the prompts, and one wider),
Gemma-2, Gemma-3, Phi-3 and GPT-2, with large weights so every prompt gets its own, varied completion; ``+lora``
cases wrap one in a PEFT adapter whose B is far from zero.
"""

from __future__ import annotations

import functools

import torch
from peft import get_peft_model
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from conftest import lora_config

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=256, initializer_range=0.5)
SLIDING = ["sliding_attention", "full_attention"]
GEMMA = dict(SIZES, head_dim=16, sliding_window=8, layer_types=SLIDING, tie_word_embeddings=False)
FAMILIES = {  # name: (config class, model class, config fields, window the loop must read from the config)
    "llama": (LlamaConfig, LlamaForCausalLM, SIZES, None),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, SIZES, None),
    "qwen2_sliding": (Qwen2Config, Qwen2ForCausalLM,
                      dict(SIZES, use_sliding_window=True, sliding_window=8, max_window_layers=1), 8),
    "mistral_sliding": (MistralConfig, MistralForCausalLM, dict(SIZES, sliding_window=8), 8),
    "mistral_wide": (MistralConfig, MistralForCausalLM, dict(SIZES, sliding_window=128), 128),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, GEMMA, 8),
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, GEMMA, 8),
    "phi3": (Phi3Config, Phi3ForCausalLM, dict(SIZES, sliding_window=12, pad_token_id=0), 12),
    "gpt2": (GPT2Config, GPT2LMHeadModel, dict(n_embd=32, n_layer=2, n_head=2, n_positions=256, initializer_range=0.5),
             None),
}
CASES = [*FAMILIES, "llama+lora", "qwen2_sliding+lora"]
@functools.cache
def build(case: str, vocab: int) -> torch.nn.Module:
    """The seeded tiny model of a family (``+lora``: wrapped in a PEFT adapter whose B is far from zero)."""
    family = case.split("+")[0]
    config_class, model_class, fields, _ = FAMILIES[family]
    torch.manual_seed(sorted(FAMILIES).index(family))
    model = model_class(config_class(vocab_size=vocab, **fields)).float().eval()
    with torch.no_grad():  # moderate attention scores: every cache column, a wrongly unmasked one too, counts
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "c_attn.weight", "qkv_proj.weight")):
                p.mul_(0.1)
    if case.endswith("+lora"):
        model = get_peft_model(model, lora_config())
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        model.eval()
    return model
