"""Held-out evaluation: the policy's expected reward (sampled) and its greedy reward."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from agilerl_selfsft.generation.collect import sample_scored
from agilerl_selfsft.samples import Scored

if TYPE_CHECKING:
    from agilerl_selfsft.algorithm.selfsft import SelfSFT
    from agilerl_selfsft.env.gym import SelfSFTGym


def evaluate(
    agent: SelfSFT, env: SelfSFTGym, num_samples: int = 4, greedy: bool = True, temperature: float | None = None
) -> dict[str, float]:
    """Score the agent on the environment's held-out prompts.

    With several processes (an accelerator on the agent) each one evaluates its share of the prompts and
    every process returns the result over all of them.

    :param agent: the policy
    :param env: holds the held-out prompts and the reward
    :param num_samples: completions sampled per prompt, defaults to 4
    :param greedy: also score one greedy completion per prompt, defaults to True
    :param temperature: sampling temperature, >= 0 (0 = greedy), defaults to None (the agent's
        ``sampling_temperature``)
    :return: ``eval_reward`` (mean reward of the samples: the policy's expected reward),
        ``eval_reward_greedy`` (NaN when ``greedy`` is off), ``eval_solved`` (share of prompts with a
        sample at or above the selection threshold), ``eval_tokens``, ``eval_seconds``; with an agent that
        returns ``(reward, info)``, ``eval_<key>`` (and ``eval_<key>_greedy``): the mean of each info value;
        ``eval_<key>`` for each metric the reward functions reported on the sampled completions
    """
    with env.eval_mode():  # the held-out prompts, scored by the eval reward
        tasks = env.prompts
        scored, sampled = sample_scored(agent, env, tasks, num_samples, temperature=temperature)  # sharded
        reported = dict(getattr(env, "reward_metrics", {}))
        if greedy:
            scored_greedy, decoded = sample_scored(agent, env, tasks, greedy=True)
    rewards = np.array([s.reward for s in scored])
    solved = {s.prompt_id for s in scored if s.reward >= env.threshold}
    result = {
        "eval_reward": float(rewards.mean()),
        "eval_reward_greedy": float("nan"),
        "eval_solved": len(solved) / len(tasks),
        "eval_tokens": float(sampled.num_tokens),
        "eval_seconds": sampled.seconds,
    }
    result.update({f"eval_{key}": value for key, value in info_means(scored).items()})
    result.update({f"eval_{key}": value for key, value in reported.items()})  # the reward functions' own counts
    if greedy:
        result["eval_reward_greedy"] = float(np.mean([s.reward for s in scored_greedy]))
        result.update({f"eval_{key}_greedy": value for key, value in info_means(scored_greedy).items()})
        result["eval_tokens"] += decoded.num_tokens
        result["eval_seconds"] += decoded.seconds
    return result


def info_means(scored: list[Scored]) -> dict[str, float]:
    """The mean of each info value an agent returned (over the samples that have it), by key."""
    values: dict[str, list[float]] = {}
    for s in scored:
        for key, value in s.info.items():
            values.setdefault(key, []).append(value)
    return {key: float(np.mean(v)) for key, v in values.items()}
