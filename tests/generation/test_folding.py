"""The HF engine's LoRA folding: on, off, or ``auto`` (off when the folded weight copies would not fit in memory).

Whether a call folded is read off the real model: folded, the decode loop runs the model with its adapters
disabled on the folded weights, so no ``lora_A`` layer runs; unfolded, every step runs them.
"""

from __future__ import annotations

import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model

from agilerl_selfsft.generation import folding
from agilerl_selfsft.generation.folding import fold_fits, folded_lora_bytes, free_memory_bytes

from conftest import lora_params

PROMPTS = ["What is the capital of France?", "Name a colour.", "Hi", "What is 2 + 2?"]
CPU = torch.device("cpu")


def lora_a_calls(agent):
    """A list that grows by one each time a ``lora_A`` layer of the actor adapter runs (real forward hooks)."""
    calls = []
    for name, module in agent.actor.named_modules():
        if name.endswith("lora_A.actor"):
            module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def randomise_actor_adapter(agent):
    """Give the actor adapter a non-zero B (LoRA starts at B = 0, a no-op), so folding has something to fold."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in lora_params(agent, "actor").items():
            if "lora_B" in name:
                p.normal_(std=0.5)


# ---- the estimate: bytes of one folded copy of every LoRA-targeted base weight ----
def test_folded_bytes_of_a_tiny_peft_model_are_exact(tiny_model_factory):
    # the tiny Llama: hidden 32, intermediate 64, 2 layers, 2 heads of 16 (k/v 32 x 32); fp32 = 4 bytes.
    # per layer q, k, v, o: 32*32 = 1024 each; gate, up: 64*32 = 2048 each; down: 32*64 = 2048
    # -> 4*1024 + 3*2048 = 10240 elements per layer, 20480 in all, 81920 bytes. (all-linear leaves lm_head out.)
    model = get_peft_model(tiny_model_factory(), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert folded_lora_bytes(model) == {CPU: 81920}
    # only q_proj: 2 layers x 1024 elements x 2 bytes in bf16
    model = get_peft_model(tiny_model_factory().to(torch.bfloat16),
                           LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert folded_lora_bytes(model) == {CPU: 2 * 1024 * 2}
    # no PEFT model: nothing to fold
    assert folded_lora_bytes(tiny_model_factory()) == {}


def test_an_agent_with_two_adapters_folds_one_copy_per_layer(tiny_agent):
    # the actor and the reference adapter target the same layers; only the active one is folded, into one copy
    with tiny_agent.select_adapter("actor"):
        assert folded_lora_bytes(tiny_agent.actor) == {CPU: 81920}


def test_fold_fits_with_a_margin():
    assert fold_fits({CPU: 100}, lambda device: 250)  # 40% of what is free
    assert not fold_fits({CPU: 100}, lambda device: 200)  # 50%: not below the margin
    assert not fold_fits({CPU: 100}, lambda device: None)  # free memory unknown: do not fold
    assert fold_fits({}, lambda device: 0)  # nothing to fold


def test_free_memory_of_the_cpu(monkeypatch):
    psutil = pytest.importorskip("psutil")
    total = psutil.virtual_memory().total
    free = free_memory_bytes(CPU)
    assert isinstance(free, int) and 0 < free <= total
    monkeypatch.setitem(sys.modules, "psutil", None)  # psutil not installed: the OS's count of free pages
    free = free_memory_bytes(CPU)
    assert isinstance(free, int) and 0 < free <= total


# ---- fold_lora on the agent, through the HF engine to the decode loop ----
def test_fold_lora_false_gives_the_same_tokens_without_folding(make_agent):
    agent = make_agent(fold_lora=True, max_new_tokens=6)
    untrained = agent.sample(PROMPTS, greedy=True).token_ids  # B = 0: the base model's tokens
    randomise_actor_adapter(agent)
    calls = lora_a_calls(agent)
    folded = agent.sample(PROMPTS, greedy=True).token_ids
    assert calls == []  # folded: no LoRA layer ran
    assert folded != untrained  # the adapter changes the tokens: the comparison below can tell
    agent.fold_lora = False
    unfolded = agent.sample(PROMPTS, greedy=True).token_ids
    assert len(calls) > 0  # not folded: the adapter ran as LoRA layers
    assert unfolded == folded


def test_fold_lora_auto_folds_when_the_copies_fit_and_not_otherwise(make_agent, monkeypatch):
    agent = make_agent(max_new_tokens=4)
    assert agent.fold_lora == "auto"
    randomise_actor_adapter(agent)
    calls = lora_a_calls(agent)
    folded = agent.sample(PROMPTS, greedy=True).token_ids
    assert calls == []  # 80 KB of copies: a sliver of free memory
    monkeypatch.setattr(folding, "MAX_FOLD_SHARE", 1e-15)  # now no free memory is enough
    assert agent.sample(PROMPTS, greedy=True).token_ids == folded
    assert len(calls) > 0


def test_fold_lora_is_kept_by_a_clone(make_agent):
    agent = make_agent(fold_lora=False)
    assert agent.clone().fold_lora is False


@pytest.mark.parametrize("value", ["yes", None, 1])
def test_fold_lora_must_be_true_false_or_auto(make_agent, value):
    with pytest.raises(ValueError, match=f"fold_lora must be True, False or 'auto', got {value!r}"):
        make_agent(fold_lora=value)
