"""The AgileRL version adapter on the installed AgileRL: what the rest of the package relies on, on either stack."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from agilerl_selfsft import SelfSFTError
from agilerl_selfsft.agilerl_adapter import (
    AGILERL_258,
    accumulation_steps,
    backward_step,
    dataset_env,
    engine_backward,
    follow_batch_size,
    gather_lm_head,
    hold_loss,
    is_sharded,
    learn_phase_seconds,
    learn_phases,
    sft_kwargs,
    unwrapped_actor,
    world_and_rank,
)

from conftest import lora_params


def test_sft_arguments_follow_the_installed_agilerl():
    given = {"lr": 1e-3, "accelerator": None, "reduce_memory_peak": False, "fsdp_config": None,
             "moe_lora_recompute": None}
    theirs = ({"lr", "fsdp_config", "moe_lora_recompute"} if AGILERL_258 else {"lr", "accelerator", "reduce_memory_peak"})
    assert sft_kwargs(given) == {k: v for k, v in given.items() if k in theirs}
    if AGILERL_258:
        with pytest.raises(SelfSFTError, match="torchrun"):
            sft_kwargs({"accelerator": object()})
    else:
        with pytest.raises(SelfSFTError, match="has no FSDP"):
            sft_kwargs({"fsdp_config": object()})


def test_a_backward_step_steps_as_the_installed_sft_learn_does(make_agent):
    # batch 4 in micro-batches of 2: 2.10 steps at every micro-batch; 2.58 accumulates two (loss / 2 each)
    agent = make_agent(batch_size=4, micro_batch_size_per_gpu=2)
    assert accumulation_steps(agent) == (2 if AGILERL_258 else 1)
    before = lora_params(agent, copy=True)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    backward_step(agent, agent.actor(input_ids=ids, labels=ids).loss)
    middle = lora_params(agent, copy=True)
    assert any(not torch.equal(before[n], middle[n]) for n in before) != AGILERL_258  # 2.58: not yet
    backward_step(agent, agent.actor(input_ids=ids, labels=ids).loss)
    after = lora_params(agent)
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the optimizer stepped
    assert all(p.grad is None or not p.grad.abs().sum() for p in after.values())  # and zeroed the gradients


def test_a_non_finite_loss_is_caught_before_the_step_that_would_apply_it(make_agent):
    agent = make_agent(batch_size=4, micro_batch_size_per_gpu=2)
    nan = torch.tensor(float("nan"))
    if AGILERL_258:  # held through the window's first micro-batch, raised at its last
        held = hold_loss(agent, nan, None)
        assert held is not None and held.isnan()
        ids = torch.tensor([[1, 2, 3, 4, 5]])
        backward_step(agent, agent.actor(input_ids=ids, labels=ids).loss)  # the window's first micro-batch
        with pytest.raises(ValueError, match="not finite"):
            hold_loss(agent, torch.tensor(1.0), held)
    else:
        with pytest.raises(ValueError, match="not finite"):
            hold_loss(agent, nan, None)
    assert hold_loss(make_agent(), torch.tensor(1.0), None) is None


def test_a_mutated_batch_size_is_followed_by_micro_and_mini_batches(make_agent):
    agent = make_agent(batch_size=4)
    agent.batch_size = 6
    follow_batch_size(agent)
    assert (agent.batch_size_per_process, agent.micro_batch_size_per_gpu, agent.mini_batch_size) == (6, 6, 6)
    assert accumulation_steps(agent) == 1


def test_one_process_and_agilerl_environments(tiny_agent, tokenizer):
    assert world_and_rank(None) == (1, 0)
    timer = learn_phases(tiny_agent)
    timer.mark("forward")
    assert bool(learn_phase_seconds(tiny_agent)) == AGILERL_258
    with pytest.raises(SelfSFTError, match="objective must be 'sft' or 'preference'"):
        dataset_env(None, None, tokenizer, "reasoning")


def test_an_unsharded_agent_on_one_process(tiny_agent):
    assert not is_sharded(tiny_agent) and not engine_backward(tiny_agent)
    assert isinstance(unwrapped_actor(tiny_agent), PeftModel)
    head = unwrapped_actor(tiny_agent).get_output_embeddings()
    with gather_lm_head(tiny_agent, head) as (weight, bias):
        assert weight is head.weight and bias is head.bias
