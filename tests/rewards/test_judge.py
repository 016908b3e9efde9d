"""judge: rubric rendering, score parsing, the policy's frozen reference as the judge, a loaded judge model,
the verdict cache, and its errors."""

from __future__ import annotations

import pytest
import torch

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.rewards import judge, resolve_reward, score
from agilerl_selfsft.data.chat import render_prompt, turn_end_token_ids
from agilerl_selfsft.generation import decode
from agilerl_selfsft.rewards.judge import DEFAULT_TEMPLATE, YES_NO_TEMPLATE, _loaded, _rubric, judge_replies, parse_score


@pytest.mark.parametrize(
    ("reply", "scale", "expected"),
    [("7", (1, 10), 6 / 9), ("Score: 10/10", (1, 10), 1.0), ("1", (1, 10), 0.0), ("11", (1, 10), None),
     ("great", (1, 10), None), ("Yes, it is.", "yes_no", 1.0), ("no", "yes_no", 0.0), ("maybe yes", "yes_no", None),
     ("", "yes_no", None), ("3.5", (0, 5), 0.7)],
)
def test_parse_score(reply, scale, expected):
    low, high = (0.0, 1.0) if scale == "yes_no" else map(float, scale)
    got = parse_score(reply, scale, low, high)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_rubric_fills_prompt_completion_scale_and_columns():
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "Capital of France?"}]
    text = _rubric("{prompt}|{completion}|{low}-{high}|{answer}", 0, chat, "Paris", 1.0, 10.0, {"answer": ["Paris"]})
    assert text == "Capital of France?|Paris|1-10|Paris"
    with pytest.raises(SelfSFTError, match="template has a field the row does not fill"):
        _rubric("{prompt} {difficulty}", 0, "q", "c", 1.0, 10.0, {})


def test_bad_scale_and_policy_without_an_agent_are_named():
    with pytest.raises(SelfSFTError, match="scale must be"):
        judge(["q"], ["c"], scale=(5, 1), policy=object())
    with pytest.raises(SelfSFTError, match="model 'policy' needs the agent"):
        judge(["q"], ["c"])


def test_the_policy_judges_with_its_frozen_reference_adapter_not_the_trained_one(make_agent):
    agent = make_agent(max_new_tokens=8, generation_batch_size=16)
    texts = [DEFAULT_TEMPLATE.format(prompt=f"What is {i} + 1?", completion=str(i + 1), low=1, high=10)
             for i in range(3)]
    before = judge_replies(texts, policy=agent)
    with torch.no_grad():  # the trained adapter moves far; the reference does not
        for name, p in agent.actor.named_parameters():
            if "lora_B" in name and ".actor" in name:
                p.add_(torch.randn_like(p))
    with agent.select_adapter("actor"):
        assert judge_replies(texts, policy=agent) == before
    agent.actor.eval()
    sampling = decode.Sampling(8, turn_end_token_ids(agent.tokenizer), greedy=True)
    rendered = [render_prompt(agent.tokenizer, [{"role": "user", "content": t}]) for t in texts]
    by_actor = [g[0] for g in decode.sample(agent.actor, agent.tokenizer, rendered, 1, sampling).texts]
    assert by_actor != before  # the perturbed actor would have answered otherwise


def test_verdicts_come_from_one_batched_call_and_are_cached(make_agent):
    agent = make_agent(max_new_tokens=4)
    prompts, completions = ["q1", "q1", "q2"], ["a", "b", "a"]
    (reward,) = resolve_reward({"name": "judge", "model": "policy", "scale": "yes_no"})
    first = score([reward], prompts, completions, {}, policy=agent)
    assert all(v in (0.0, 1.0) for v in first)
    assert first.metrics["judge_cached"] == 0.0 and 0 <= first.metrics["judge_unparseable"] <= 3
    texts = [_rubric(YES_NO_TEMPLATE, i, p, c, 0.0, 1.0, {}) for i, (p, c) in enumerate(zip(prompts, completions))]
    verdicts = [parse_score(r, "yes_no", 0, 1) for r in judge_replies(texts, policy=agent, max_new_tokens=4)]
    assert list(first) == [v or 0.0 for v in verdicts]
    assert first.metrics["judge_unparseable"] == sum(v is None for v in verdicts)
    again = score([reward], prompts, completions, {}, policy=agent)
    assert list(again) == list(first) and again.metrics["judge_cached"] == 3.0


def test_a_named_judge_model_is_loaded_once_and_scores_in_range(tmp_path, tiny_model_factory, tokenizer):
    folder = tmp_path / "judge-model"
    tiny_model_factory(seed=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    got = judge(["q"] * 4, ["a", "b", "c", "d"], model=str(folder), max_new_tokens=4)
    texts = [_rubric(DEFAULT_TEMPLATE, i, "q", c, 1.0, 10.0, {}) for i, c in enumerate("abcd")]
    verdicts = [parse_score(r, (1, 10), 1.0, 10.0) for r in judge_replies(texts, model=str(folder), max_new_tokens=4)]
    assert list(got) == [v or 0.0 for v in verdicts] and all(0.0 <= v <= 1.0 for v in got)
    assert got.metrics["judge_unparseable"] == sum(v is None for v in verdicts)
    loads = _loaded.cache_info().misses
    judge(["q2"], ["e"], model=str(folder), max_new_tokens=4)
    assert _loaded.cache_info().misses == loads  # loaded once per process
    with pytest.raises(SelfSFTError):
        judge(["q"], ["a"], model=str(tmp_path / "missing"))
