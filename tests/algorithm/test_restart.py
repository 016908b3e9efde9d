"""restart_from_base: fresh actor adapters (the policy is the base again) and a fresh optimizer, reference kept."""

from __future__ import annotations

import pytest
import torch

from agilerl_selfsft.algorithm.restart import restart_from_base
from agilerl_selfsft.errors import SelfSFTError
from conftest import lora_params


def logits(agent, ids):
    with torch.no_grad():
        return agent.actor(input_ids=ids).logits


def train_a_little(agent, tokenizer):
    from agilerl_selfsft.data.chat import collate

    chats = [[{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there, friend."}]] * 4
    batch = collate(tokenizer, chats, None, learn_from=[-1] * 4)
    for _ in range(3):
        agent.learn(batch)


def test_restart_gives_back_the_base_policy_and_an_empty_optimizer(make_agent, tokenizer):
    agent = make_agent()
    ids = torch.tensor([tokenizer.encode("Hello world, how are you?")])
    base = logits(agent, ids)
    reference = lora_params(agent, "reference", copy=True)
    train_a_little(agent, tokenizer)
    assert not torch.allclose(logits(agent, ids), base, atol=1e-5)
    assert agent.optimizer.optimizer.state
    before = lora_params(agent, copy=True)

    layers = restart_from_base(agent)
    assert layers > 0
    torch.testing.assert_close(logits(agent, ids), base)  # B = 0: the actor is the base model again
    assert not agent.optimizer.optimizer.state  # Adam starts afresh
    after = lora_params(agent)
    assert all(not torch.equal(after[n], before[n]) for n in after if "lora_A" in n)  # A drawn anew
    assert all(torch.count_nonzero(after[n]) == 0 for n in after if "lora_B" in n)
    now = lora_params(agent, "reference")
    assert all(torch.equal(now[n], reference[n]) for n in reference)  # the frozen reference is untouched
    train_a_little(agent, tokenizer)  # and it trains again
    assert not torch.allclose(logits(agent, ids), base, atol=1e-5)


def test_restart_refuses_a_learning_rate_schedule_and_the_loop_refuses_it_before_any_work(make_agent, tokenizer):
    from agilerl_selfsft import SelfSFTGym, Task, finetune_llm_selfsft

    agent = make_agent()
    agent.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(agent.optimizer.optimizer, lambda step: 1.0)
    with pytest.raises(SelfSFTError, match="learning-rate schedule"):
        restart_from_base(agent)
    tasks = [Task(0, [{"role": "user", "content": "Hi?"}], "Hi?")]
    env = SelfSFTGym(tasks, tasks, tokenizer, lambda prompts, completions, **_: [1.0] * len(completions))
    with pytest.raises(SelfSFTError, match="learning-rate schedule"):
        finetune_llm_selfsft([agent], env, iterations=1, restart_from_base=True, verbose=False)
    assert agent.fitness == []  # refused before the base policy was even evaluated
