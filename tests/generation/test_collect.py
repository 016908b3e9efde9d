"""Generate and score: the samples and the greedy answers an evaluation scores, from one batched call."""

from __future__ import annotations

import torch

from agilerl_selfsft.env.gym import SelfSFTGym
from agilerl_selfsft.generation.collect import sample_scored, sample_scored_with_greedy, split_last
from agilerl_selfsft.samples import Task


def tasks_of(n):
    return [Task(i, [{"role": "user", "content": f"{i} + 1 = ?"}], f"{i} + 1 = ?", {"answer": str(i + 1)})
            for i in range(n)]


def test_samples_and_greedy_answers_come_from_one_batch_and_match_separate_calls(tokenizer, make_agent):
    agent = make_agent(max_new_tokens=6, generation_batch_size=128)
    tasks = tasks_of(3)
    env = SelfSFTGym(tasks, tasks, tokenizer, "first_number")
    alone_scored, alone = sample_scored(agent, env, tasks, greedy=True)
    torch.manual_seed(0)
    (scored, samples), (greedy_scored, greedy) = sample_scored_with_greedy(agent, env, tasks, 3, temperature=50.0)
    assert samples.batch_rows == [3 * 4]  # 3 prompts x (3 samples + 1 greedy), admitted together
    assert greedy.texts == alone.texts and greedy.token_ids == alone.token_ids
    assert [s.reward for s in greedy_scored] == [s.reward for s in alone_scored]
    assert [len(t) for t in samples.texts] == [3] * 3 and [s.prompt_id for s in scored] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sum(ids != g[0] for rows, g in zip(samples.token_ids, greedy.token_ids) for ids in rows) >= 7  # drawn hot
    assert samples.num_tokens == sum(len(ids) for rows in samples.token_ids for ids in rows)
    assert greedy.num_tokens == sum(len(rows[0]) for rows in greedy.token_ids) and greedy.seconds == 0.0
    assert samples.seconds > 0


def test_the_reward_metrics_left_on_the_environment_are_the_samples(tokenizer, make_agent):
    def first_three_only(prompts, completions, **kwargs):  # a call's completions after its 3rd go unscored
        return [1.0 if i < 3 else None for i in range(len(completions))]

    agent = make_agent(max_new_tokens=4)
    tasks = tasks_of(3)
    env = SelfSFTGym(tasks, tasks, tokenizer, first_three_only)
    (scored, _), (greedy_scored, _) = sample_scored_with_greedy(agent, env, tasks, 3, temperature=1.0)
    assert (len(scored), len(greedy_scored)) == (3, 3)  # 9 samples scored in one call, 3 greedy ones in another
    assert env.reward_metrics["unscored"] == 6.0  # the samples' count, as evaluate reports it


def test_split_last_cuts_each_prompts_last_completion_off_and_keeps_the_counts_with_the_rest(tokenizer, make_agent):
    agent = make_agent(max_new_tokens=4)
    both = agent.sample(["Hi", "Say 2"], num_generations=2, temperature=1.0, with_greedy=True)
    first, last = split_last(both)
    assert [len(t) for t in both.texts] == [3, 3]
    assert first.texts == [t[:2] for t in both.texts] and last.texts == [t[2:] for t in both.texts]
    assert first.finished == [f[:2] for f in both.finished] and last.token_ids == [i[2:] for i in both.token_ids]
    assert first.num_tokens + last.num_tokens == both.num_tokens
    assert (first.seconds, first.batch_rows, first.computed_rows) == (both.seconds, both.batch_rows, both.computed_rows)
