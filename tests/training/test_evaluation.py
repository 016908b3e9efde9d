"""Held-out evaluation: the unbiased pass@k, maj@k, and what evaluate() reports on the tiny model."""

from __future__ import annotations

import itertools

import pytest

from agilerl_selfsft.env.gym import SelfSFTGym
from agilerl_selfsft.samples import Scored, Task
from agilerl_selfsft.training.evaluation import evaluate, maj_at_k, mean_pass_at_k, pass_at_k


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


def test_evaluate_reports_pass_and_maj_at_k_and_completion_length(tokenizer, make_agent):
    agent = make_agent(max_new_tokens=4)
    tasks = [Task(i, [{"role": "user", "content": f"{i} + 0 = ?"}], f"{i} + 0 = ?", {"answer": str(i)})
             for i in range(3)]
    env = SelfSFTGym(tasks, tasks, tokenizer, "first_number")
    result = evaluate(agent, env, num_samples=3, greedy=False, temperature=1.0)
    assert {"eval_pass@1", "eval_pass@3", "eval_maj@3", "eval_completion_tokens"} <= set(result)
    assert result["eval_pass@1"] == pytest.approx(result["eval_reward"])  # rewards are 0/1 at threshold 1
    assert result["eval_pass@1"] <= result["eval_pass@3"] and result["eval_pass@3"] == result["eval_solved"]
    assert 0 < result["eval_completion_tokens"] <= 4
    contains = SelfSFTGym(tasks, tasks, tokenizer, "contains")
    assert "eval_maj@3" not in evaluate(agent, contains, num_samples=3, greedy=False)  # no answer to extract
