"""Held-out evaluation: the policy's expected reward (sampled) and its greedy reward, pass@k and maj@k."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from math import comb
from typing import TYPE_CHECKING

import numpy as np
import torch

from agilerl_selfsft.distributed import DataParallel
from agilerl_selfsft.generation.collect import sample_scored, sample_scored_with_greedy
from agilerl_selfsft.rewards.registry import answer_extractor
from agilerl_selfsft.samples import Scored

if TYPE_CHECKING:
    from agilerl_selfsft.algorithm.selfsft import SelfSFT
    from agilerl_selfsft.env.gym import SelfSFTGym


def evaluate(
    agent: SelfSFT, env: SelfSFTGym, num_samples: int = 4, greedy: bool = True, temperature: float | None = None,
    seed: int | None = None,
) -> dict[str, float]:
    """Score the agent on the environment's held-out prompts.

    With several processes (an accelerator on the agent) each one evaluates its share of the prompts and
    every process returns the result over all of them. With a ``seed`` the samples are drawn from torch's
    generator seeded with it, and the generator's state outside is left as it was: the same adapters give the
    same numbers wherever they are evaluated (the loop and ``agilerl-selfsft eval`` both pass the run's seed).

    :param agent: the policy
    :param env: holds the held-out prompts and the reward
    :param num_samples: completions sampled per prompt, defaults to 4
    :param greedy: also score one greedy completion per prompt (decoded in the batch of the samples where the
        policy samples single turns: :func:`~agilerl_selfsft.generation.collect.sample_scored_with_greedy`),
        defaults to True
    :param temperature: sampling temperature, >= 0 (0 = greedy), defaults to None (the agent's
        ``sampling_temperature``)
    :param seed: seed of the samples (each process adds its rank), defaults to None (torch's current state)
    :return: ``eval_reward`` (mean reward of the samples: the policy's expected reward), ``eval_reward_se`` (its
        standard error from sampling on these prompts, :func:`reward_standard_error`),
        ``eval_reward_greedy`` (NaN when ``greedy`` is off), ``eval_solved`` (share of prompts with a
        sample at or above the selection threshold), ``eval_tokens``, ``eval_seconds``; with an agent that
        returns ``(reward, info)``, ``eval_<key>`` (and ``eval_<key>_greedy``): the mean of each info value;
        ``eval_<key>`` for each metric the reward functions reported on the sampled completions;
        ``eval_pass@1`` and ``eval_pass@<k>`` (k = ``num_samples``; :func:`pass_at_k`, a sample passing at or
        above the selection threshold), ``eval_maj@<k>`` where the eval reward says how answers are extracted
        (:func:`maj_at_k`), and ``eval_completion_tokens`` (mean tokens of a sampled completion). Completions
        the reward did not score (``None``) are left out of every mean (``eval_unscored`` counts them).
    """
    if seed is not None:
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(DataParallel(getattr(agent, "accelerator", None)).rank_seed(seed))
            return evaluate(agent, env, num_samples, greedy, temperature)
    with env.eval_mode():  # the held-out prompts, scored by the eval reward; sharded over the processes
        tasks = env.prompts
        if greedy:  # the greedy answers decoded in the batch of the samples
            (scored, sampled), (scored_greedy, decoded) = sample_scored_with_greedy(agent, env, tasks, num_samples,
                                                                                    temperature)
        else:
            scored, sampled = sample_scored(agent, env, tasks, num_samples, temperature=temperature)
        reported = dict(getattr(env, "reward_metrics", {}))  # of the samples
    solved = {s.prompt_id for s in scored if s.reward >= env.threshold}
    result = {
        "eval_reward": mean_reward(scored),
        "eval_reward_se": reward_standard_error(scored),
        "eval_reward_greedy": float("nan"),
        "eval_solved": len(solved) / len(tasks),
        "eval_tokens": float(sampled.num_tokens),
        "eval_seconds": sampled.seconds,
    }
    result[f"eval_pass@{num_samples}"] = mean_pass_at_k(scored, env.threshold, num_samples)
    if num_samples > 1:
        result["eval_pass@1"] = mean_pass_at_k(scored, env.threshold, 1)
    answer_of = answer_extractor(env.eval_rewards) if getattr(env, "agent", None) is None else None
    if answer_of is not None:
        result[f"eval_maj@{num_samples}"] = maj_at_k(scored, env.threshold, answer_of)
    result["eval_completion_tokens"] = sampled.num_tokens / max(len(scored), 1)
    result.update({f"eval_{key}": value for key, value in info_means(scored).items()})
    result.update({f"eval_{key}": value for key, value in reported.items()})  # the reward functions' own counts
    if greedy:
        result["eval_reward_greedy"] = mean_reward(scored_greedy)
        result.update({f"eval_{key}_greedy": value for key, value in info_means(scored_greedy).items()})
        result["eval_tokens"] += decoded.num_tokens
        result["eval_seconds"] += decoded.seconds
    return result


def mean_reward(scored: list[Scored]) -> float:
    """The mean reward of ``scored`` (NaN when there is none: every completion was left unscored)."""
    return float(np.mean([s.reward for s in scored])) if scored else float("nan")


def reward_standard_error(scored: list[Scored]) -> float:
    """The standard error of :func:`mean_reward` that comes from sampling, on these prompts: prompt ``i`` scored by
    ``k_i`` samples of variance ``s_i²`` gives ``sqrt(Σ k_i s_i²) / Σ k_i`` (k samples on each of n prompts:
    ``sqrt(Σ s_i² / k) / n``). It says how far another draw of as many samples would move ``eval_reward`` on the
    same held-out prompts, so how many samples per prompt an evaluation needs; NaN when a prompt has fewer than
    2 samples (no variance to measure).
    """
    groups = [[s.reward for s in g] for g in _by_prompt(scored).values()]
    if not groups or min(len(g) for g in groups) < 2:
        return float("nan")
    total = sum(len(g) for g in groups)
    return float(np.sqrt(sum(len(g) * np.var(g, ddof=1) for g in groups)) / total)


def info_means(scored: list[Scored]) -> dict[str, float]:
    """The mean of each info value an agent returned (over the samples that have it), by key."""
    values: dict[str, list[float]] = {}
    for s in scored:
        for key, value in s.info.items():
            values.setdefault(key, []).append(value)
    return {key: float(np.mean(v)) for key, v in values.items()}


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one prompt from ``n`` samples of which ``c`` pass (Chen et al. 2021, eq. 1):
    ``1 - C(n - c, k) / C(n, k)``, the chance that k samples drawn without replacement hold a passing one."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def _by_prompt(scored: list[Scored]) -> dict[int, list[Scored]]:
    groups: dict[int, list[Scored]] = {}
    for s in scored:
        groups.setdefault(s.prompt_id, []).append(s)
    return groups


def mean_pass_at_k(scored: list[Scored], threshold: float, k: int) -> float:
    """:func:`pass_at_k` averaged over the prompts of ``scored`` (a sample passes at reward >= ``threshold``) that
    have at least ``k`` scored samples (NaN when none has)."""
    groups = [g for g in _by_prompt(scored).values() if len(g) >= k]
    if not groups:
        return float("nan")
    return float(np.mean([pass_at_k(len(g), sum(s.reward >= threshold for s in g), k) for g in groups]))


def maj_at_k(scored: list[Scored], threshold: float, answer_of: Callable[[str], str | None]) -> float:
    """maj@k: the share of prompts whose most common answer among their samples (``answer_of`` each completion;
    a tie goes to the earliest) is right, i.e. its first sample's reward is >= ``threshold``. A prompt with no
    answer extracted counts as wrong."""
    right = []
    for group in _by_prompt(scored).values():
        answers = [answer_of(s.completion) for s in group]
        votes = Counter(a for a in answers if a is not None)
        if not votes:
            right.append(0.0)
            continue
        top = votes.most_common(1)[0][0]
        right.append(float(group[answers.index(top)].reward >= threshold))
    return float(np.mean(right)) if right else float("nan")
