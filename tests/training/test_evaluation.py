"""Held-out evaluation: the unbiased pass@k, maj@k, and what evaluate() reports on the tiny model."""

from __future__ import annotations

import itertools

import pytest

from agilerl_selfsft.env.gym import SelfSFTGym
from agilerl_selfsft.samples import Scored, Task
import numpy as np

from agilerl_selfsft.training.evaluation import evaluate, maj_at_k, mean_pass_at_k, pass_at_k, reward_standard_error


@pytest.mark.parametrize("n,c", [(4, 0), (4, 1), (4, 3), (5, 2), (6, 6)])
def test_pass_at_k_is_the_share_of_k_subsets_holding_a_pass(n, c):
    outcomes = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(outcomes, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(x) for x in subsets) / len(subsets))


def test_pass_at_k_refuses_impossible_counts():
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(2, 3, 1)
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(2, 1, 3)


def sample(pid, completion, reward):
    return Scored(pid, [], completion, reward)


def test_maj_at_k_scores_the_most_common_answer_and_pass_at_k_any_right_one():
    scored = [sample(0, "7", 0.0), sample(0, "7.0", 0.0), sample(0, "8", 1.0),  # majority wrong, one right
              sample(1, "9", 1.0), sample(1, "x", 0.0), sample(1, "nine", 0.0),  # majority (only answer) right
              sample(2, "no", 0.0), sample(2, "none", 0.0), sample(2, "", 0.0)]  # nothing extracted: wrong
    answer = lambda t: str(float(t)) if t[:1].isdigit() else None  # noqa: E731
    assert maj_at_k(scored, 1.0, answer) == pytest.approx(1 / 3)
    assert mean_pass_at_k(scored, 1.0, 3) == pytest.approx(2 / 3)
    assert mean_pass_at_k(scored, 1.0, 1) == pytest.approx(2 / 9)


def test_the_standard_error_is_the_spread_of_the_mean_over_redraws_of_the_samples():
    # 40 prompts of known solve rates, k samples each: the SE from one draw matches the spread of eval_reward
    # over many draws (what a re-evaluation of the same policy on the same prompts would show)
    rng = np.random.default_rng(0)
    rates = rng.uniform(0, 1, 40)
    for k in (4, 8):
        draws = [rng.random((40, k)) < rates[:, None] for _ in range(2000)]
        means = [d.mean() for d in draws]
        ses = [reward_standard_error([sample(i, "", float(r)) for i in range(40) for r in d[i]]) for d in draws[:200]]
        assert np.mean(ses) == pytest.approx(np.std(means), rel=0.1)
    assert np.isnan(reward_standard_error([sample(0, "", 1.0), sample(1, "", 0.0)]))  # one sample a prompt


def test_evaluate_reports_pass_and_maj_at_k_and_completion_length(tokenizer, make_agent):
    agent = make_agent(max_new_tokens=4)
    tasks = [Task(i, [{"role": "user", "content": f"{i} + 0 = ?"}], f"{i} + 0 = ?", {"answer": str(i)})
             for i in range(3)]
    env = SelfSFTGym(tasks, tasks, tokenizer, "first_number")
    result = evaluate(agent, env, num_samples=3, greedy=False, temperature=1.0)
    assert {"eval_pass@1", "eval_pass@3", "eval_maj@3", "eval_completion_tokens", "eval_reward_se"} <= set(result)
    assert result["eval_pass@1"] == pytest.approx(result["eval_reward"])  # rewards are 0/1 at threshold 1
    assert result["eval_pass@1"] <= result["eval_pass@3"] and result["eval_pass@3"] == result["eval_solved"]
    assert 0 < result["eval_completion_tokens"] <= 4
    contains = SelfSFTGym(tasks, tasks, tokenizer, "contains")
    assert "eval_maj@3" not in evaluate(agent, contains, num_samples=3, greedy=False)  # no answer to extract


def test_evaluate_with_a_seed_repeats_itself_and_leaves_torch_rng_alone(tokenizer, make_agent):
    import torch

    agent = make_agent(max_new_tokens=6)
    tasks = [Task(i, [{"role": "user", "content": f"{i} + 1 = ?"}], f"{i} + 1 = ?", {"answer": str(i + 1)})
             for i in range(3)]
    env = SelfSFTGym(tasks, tasks, tokenizer, "first_number")
    torch.manual_seed(1)
    before = torch.get_rng_state()
    first = evaluate(agent, env, num_samples=3, greedy=False, temperature=1.0, seed=7)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random stream is untouched
    torch.manual_seed(123)  # another state outside: the same numbers
    second = evaluate(agent, env, num_samples=3, greedy=False, temperature=1.0, seed=7)
    keys = ("eval_reward", "eval_pass@3", "eval_tokens")
    assert [first[k] for k in keys] == [second[k] for k in keys]


def test_evaluate_leaves_unscored_completions_out_of_every_mean(tokenizer, make_agent):
    agent = make_agent(max_new_tokens=4)
    tasks = [Task(i, [{"role": "user", "content": f"Say {i}"}], f"Say {i}", {}) for i in range(3)]

    def only_prompt_0(prompts, completions, **kwargs):
        return [1.0 if p == "Say 0" else None for p in prompts]

    env = SelfSFTGym(tasks, tasks, tokenizer, only_prompt_0)
    result = evaluate(agent, env, num_samples=2, greedy=True, temperature=1.0)
    assert result["eval_reward"] == 1.0 and result["eval_reward_greedy"] == 1.0 and result["eval_unscored"] == 4.0
    assert result["eval_pass@2"] == 1.0  # over the prompt that has samples

    def never(prompts, completions, **kwargs):
        return [None] * len(completions)

    result = evaluate(agent, SelfSFTGym(tasks, tasks, tokenizer, never), num_samples=2, greedy=False)
    assert result["eval_reward"] != result["eval_reward"] and result["eval_unscored"] == 6.0  # NaN: nothing scored
