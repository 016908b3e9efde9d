"""The AgileRL version adapter on the installed AgileRL: what the rest of the package relies on, on either stack."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from agilerl_selfsft import SelfSFTError
from agilerl_selfsft.agilerl_adapter import (
    AGILERL_258,
    backward_step,
    engine_backward,
    gather_lm_head,
    is_sharded,
    sft_kwargs,
    unwrapped_actor,
)

from conftest import lora_params


def test_sft_arguments_follow_the_installed_agilerl():
    given = {"lr": 1e-3, "accelerator": None, "reduce_memory_peak": False}
    expected = {"lr": 1e-3} if AGILERL_258 else given
    assert sft_kwargs(given) == expected
    if AGILERL_258:
        with pytest.raises(SelfSFTError, match="torchrun"):
            sft_kwargs({"accelerator": object()})


def test_one_backward_step_is_one_unscaled_optimizer_step(make_agent):
    # the same on both stacks: the loss is not divided by accumulation steps and the optimizer steps at once,
    # also when the agent's micro-batches are smaller than its batch (2.58 would otherwise accumulate)
    agent = make_agent(batch_size=4, micro_batch_size_per_gpu=2)
    before = lora_params(agent, copy=True)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    loss = agent.actor(input_ids=ids, labels=ids).loss
    backward_step(agent, loss)
    after = lora_params(agent)
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the optimizer stepped
    assert all(p.grad is None or not p.grad.abs().sum() for p in after.values())  # and zeroed the gradients


def test_an_unsharded_agent_on_one_process(tiny_agent):
    assert not is_sharded(tiny_agent) and not engine_backward(tiny_agent)
    assert isinstance(unwrapped_actor(tiny_agent), PeftModel)
    head = unwrapped_actor(tiny_agent).get_output_embeddings()
    with gather_lm_head(tiny_agent, head) as (weight, bias):
        assert weight is head.weight and bias is head.bias
