"""SelfTrainingEnv inside AgileRL's own SFT loop (finetune_llm_sft on 2.10, train_llm_dataset on 2.58): the
buffer is refilled from the policy's own samples, with the weights it has learned so far."""

from __future__ import annotations

import pytest
import torch

from agilerl_selfsft import SelfSFTError, SelfSFTGym, SelfTrainingEnv, Task
from agilerl_selfsft.agilerl_adapter import sft_training_loop
from conftest import lora_params


class Recorder:
    """A reward (1.0 for completions of even length) that remembers every completion it scored."""

    def __init__(self) -> None:
        self.scored: list[str] = []

    def __call__(self, prompts, completions, **kwargs):
        self.scored.extend(completions)
        return [float(len(c) % 2 == 0) for c in completions]


def tasks(words, start=0):
    return [Task(i, [{"role": "user", "content": f"Say {w}."}], f"Say {w}.", {}) for i, w in enumerate(words, start)]


def make_gym(tokenizer, reward, **kwargs):
    kwargs.setdefault("selection", "top_k")  # every prompt keeps its best sample: the buffer is never empty
    return SelfSFTGym(tasks(["one", "two", "three", "four", "five", "six"]), tasks(["seven", "eight"], 6),
                      tokenizer, reward, data_batch_size_per_gpu=2, keep_truncated=True, **kwargs)


def run_agilerl_loop(pop, env, max_steps):
    loop = sft_training_loop()
    return loop(pop, env=env, max_steps=max_steps, evaluation_interval=2, verbose=False)


def test_agilerl_loop_refills_the_buffer_from_the_policy(make_agent, tokenizer):
    agent = make_agent(num_generations=2, max_new_tokens=6)
    reward = Recorder()
    env = SelfTrainingEnv(make_gym(tokenizer, reward), agent, prompts_per_refill=2)
    before = lora_params(agent, copy=True)
    # 2 prompts x top-1 = 2 samples = one batch of 2 per refill: 4 steps are 4 refills
    pop, _ = run_agilerl_loop([agent], env, max_steps=8)

    assert pop[0] is agent
    assert len(env.refills) >= 3
    assert env.num_epochs == len(env.refills) - 1  # AgileRL's epochs are the refills after the first
    assert {r["agent"] for r in env.refills} == {agent.index}
    # every sample in the buffer is one the policy generated and the reward scored
    own = [s for s in env.gym.buffer if not s.static]
    assert own and all(s.completion in reward.scored for s in own)
    assert len(reward.scored) == 2 * 2 * len(env.refills)  # prompts x K per refill
    # the loop learned: the adapter moved, and generation after the first refill used the learned weights
    after = lora_params(agent)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert env.generating_agent() is agent
    assert agent.fitness  # AgileRL's SFT.test ran on the environment's evaluation batches


def test_refill_generates_with_the_fittest_live_learner(make_agent, tokenizer):
    first, second = make_agent(seed=0), make_agent(seed=1)
    second.index = 1
    env = SelfTrainingEnv(make_gym(tokenizer, Recorder()), first, prompts_per_refill=2)
    assert env.generating_agent() is first  # nobody has learned yet: the policy given

    batch = env.step()
    assert batch["refill_from"] is env and env.refills[-1]["agent"] == 0
    second.learn(batch)
    assert env.generating_agent() is second
    first.learn(batch)
    first.metrics.add_fitness(-5.0)
    second.metrics.add_fitness(-1.0)
    assert env.generating_agent() is second  # fitter, though not the last to learn
    second.actor = None  # what AgileRL's tournament does to an agent it replaces
    assert env.generating_agent() is first
    env.refill()
    assert env.refills[-1]["agent"] == 0


def test_evaluation_batches_leave_the_training_order_alone(make_agent, tokenizer):
    agent = make_agent()
    env = SelfTrainingEnv(make_gym(tokenizer, Recorder()), agent, prompts_per_refill=4)
    first = env.step()
    with env.eval_mode():
        evaluation = env.reset()
    assert "refill_from" not in evaluation  # SFT.test's learn(training=False) attaches nothing
    assert len(env.refills) == 1
    second = env.step()
    # one pass over 4 samples in batches of 2: the two training batches hold each buffer sample once
    assert sorted(first["response"] + second["response"]) == sorted(s.completion for s in env.gym.buffer)
    assert len(env.refills) == 1
    env.step()
    assert len(env.refills) == 2  # the third batch needs a new buffer


def test_nothing_selected_stops_with_the_reason(make_agent, tokenizer):
    def never(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    env = SelfTrainingEnv(make_gym(tokenizer, never, selection="threshold", threshold=1.0), make_agent(),
                          prompts_per_refill=2, max_empty_refills=2)
    with pytest.raises(SelfSFTError, match="no sample passed the selection in 2 refills"):
        env.step()
    assert env.refills == []


def test_bad_settings_are_refused(make_agent, tokenizer):
    gym = make_gym(tokenizer, Recorder())
    with pytest.raises(SelfSFTError, match="prompts_per_refill"):
        SelfTrainingEnv(gym, make_agent(), prompts_per_refill=0)
    with pytest.raises(SelfSFTError, match="max_empty_refills"):
        SelfTrainingEnv(gym, make_agent(), max_empty_refills=0)
