"""SelfSFTGym: scoring hand-made generations, refilling the buffer, and SFTGym-style batches."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import torch

from agilerl_selfsft.env.gym import SelfSFTGym
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.rewards import RewardValues
from agilerl_selfsft.samples import Generations, Scored, Task

SFT_PROMPTS_KEYS = {"prompt", "response", "prompt_lengths", "input_ids", "attention_mask"}

COUNTRIES = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Peru", "Lima"), ("Chile", "Santiago"), ("Japan", "Tokyo")]


def make_tasks(pairs, start=0):
    return [Task(i, [{"role": "user", "content": f"What is the capital of {c}?"}], f"What is the capital of {c}?",
                 {"answer": a}) for i, (c, a) in enumerate(pairs, start=start)]


def make_env(tokenizer, reward="contains", train=None, evals=None, **kwargs):
    return SelfSFTGym(train if train is not None else make_tasks(COUNTRIES[:5]),
                      evals if evals is not None else make_tasks(COUNTRIES[5:]), tokenizer, reward, **kwargs)


def test_score_passes_columns_and_returns_scored_samples(tokenizer):
    calls = []

    def capital_reward(prompts, completions, answer, **kwargs):
        calls.append({"prompts": list(prompts), "completions": list(completions), "answer": list(answer), **kwargs})
        return [float(a in c) for c, a in zip(completions, answer)]

    tasks = make_tasks(COUNTRIES[:2])
    tasks[1].columns["level"] = 3
    env = make_env(tokenizer, capital_reward, train=tasks)
    gens = Generations(texts=[["Paris!", "Lyon"], ["Bonn", "It is Berlin"]],
                       finished=[[True, False], [True, True]], num_tokens=10)
    scored = env.score(tasks, gens)
    assert len(calls) == 1
    call = calls[0]
    assert call["completions"] == ["Paris!", "Lyon", "Bonn", "It is Berlin"]
    assert call["prompts"] == [tasks[0].prompt] * 2 + [tasks[1].prompt] * 2
    assert call["answer"] == ["Paris", "Paris", "Berlin", "Berlin"]
    assert call["level"] == [None, None, 3, 3]  # a column some rows lack comes as None there
    assert [(x.prompt_id, x.completion, x.reward, x.finished) for x in scored] == [
        (0, "Paris!", 1.0, True), (0, "Lyon", 0.0, False), (1, "Bonn", 0.0, True), (1, "It is Berlin", 1.0, True)]
    assert scored[3].messages == [*tasks[1].messages, {"role": "assistant", "content": "It is Berlin"}]
    assert env.score(tasks[:0], Generations()) == []


def test_score_with_a_builtin_and_a_broken_reward(tokenizer):
    tasks = make_tasks(COUNTRIES[:1])
    env = make_env(tokenizer, "contains", train=tasks)
    scored = env.score(tasks, Generations(texts=[["paris", "Parisian"]], finished=[[True, True]]))
    assert [x.reward for x in scored] == [1.0, 0.0]

    def broken(prompts, completions, **kwargs):
        return [1.0]

    env = make_env(tokenizer, broken, train=tasks)
    with pytest.raises(SelfSFTError, match="broken"):
        env.score(tasks, Generations(texts=[["a", "b"]], finished=[[True, True]]))


def test_a_completion_no_reward_scored_is_no_sample_and_each_term_is_kept(tokenizer):
    tasks = make_tasks(COUNTRIES[:2])

    def only_short(prompts, completions, **kwargs):  # TRL style: None = "not mine to score"
        return [True if len(c) < 6 else None for c in completions]

    env = make_env(tokenizer, [only_short, {"name": "contains", "weight": 0.5}], train=tasks)
    scored = env.score(tasks, Generations(texts=[["Paris", "Lyon is it"], ["Bonn", "It is Berlin"]],
                                          finished=[[True, True], [True, True]]))
    assert [(x.completion, x.reward, x.terms) for x in scored] == [
        ("Paris", 1.5, {"only_short": 1.0, "contains": 1.0}), ("Lyon is it", 0.0, {"only_short": None, "contains": 0.0}),
        ("Bonn", 1.0, {"only_short": 1.0, "contains": 0.0}), ("It is Berlin", 0.5, {"only_short": None, "contains": 1.0})]
    env = make_env(tokenizer, only_short, train=tasks)
    scored = env.score(tasks, Generations(texts=[["Paris", "Lyon is it"], ["Bonn", "It is Berlin"]],
                                          finished=[[True, True], [True, True]]))
    assert [x.completion for x in scored] == ["Paris", "Bonn"] and env.reward_metrics == {"unscored": 2.0}
    assert env.refill(scored)["kept"] == 2


def scored_samples(tasks, per_prompt, good_every=2):
    out = []
    for t in tasks:
        for k in range(per_prompt):
            answer = t.columns["answer"] if k % good_every == 0 else "no idea"
            out.append(Scored(t.id, [*t.messages, {"role": "assistant", "content": f"{answer} ({k})"}],
                              f"{answer} ({k})", float(k % good_every == 0)))
    return out


def test_refill_stats_and_replay(tokenizer):
    tasks = make_tasks(COUNTRIES[:5])
    env = make_env(tokenizer, train=tasks, replay_capacity=100, replay_ratio=0.5)
    first = scored_samples(tasks[:3], per_prompt=4)  # 2 winners for each of 3 prompts
    stats = env.refill(first)
    assert stats == {"kept": 6.0, "replayed": 0.0, "static": 0.0, "buffer": 6.0, "prompts_solved": 3.0, "static_fraction": 0.0}
    assert len(env.buffer) == 6 and all(s.reward == 1.0 for s in env.buffer)
    second = scored_samples(tasks[3:], per_prompt=2)  # 1 winner for each of 2 prompts
    stats = env.refill(second)
    assert stats == {"kept": 2.0, "replayed": 1.0, "static": 0.0, "buffer": 3.0, "prompts_solved": 2.0, "static_fraction": 0.0}
    new_ids = {s.prompt_id for s in env.buffer[:2]}
    assert new_ids == {3, 4}
    assert env.buffer[2].prompt_id in {0, 1, 2}  # a past winner replayed
    # nothing kept: nothing replayed either (ratio is per new sample), and the buffer is empty
    stats = env.refill(scored_samples(tasks, per_prompt=1, good_every=99)[:0])
    assert stats["kept"] == 0 and stats["buffer"] == 0


def test_refill_without_replay(tokenizer):
    tasks = make_tasks(COUNTRIES[:3])
    env = make_env(tokenizer, train=tasks)
    env.refill(scored_samples(tasks, per_prompt=2))
    stats = env.refill(scored_samples(tasks[:1], per_prompt=2))
    assert stats == {"kept": 1.0, "replayed": 0.0, "static": 0.0, "buffer": 1.0, "prompts_solved": 1.0, "static_fraction": 0.0}


def test_batches_cover_the_buffer_once_per_pass_and_wrap(tokenizer):
    tasks = make_tasks(COUNTRIES[:5])
    env = make_env(tokenizer, train=tasks, data_batch_size_per_gpu=2)
    samples = scored_samples(tasks, per_prompt=1)  # 5 winners
    env.refill(samples)
    assert env.num_batches == 3
    assert env.num_epochs == 0

    def responses_of_pass(first_batch):
        batches = [first_batch] + [env.step() for _ in range(env.num_batches - 1)]
        return batches, [r for b in batches for r in b["response"]]

    batches, seen = responses_of_pass(env.reset())
    assert [len(b["response"]) for b in batches] == [2, 2, 1]
    assert sorted(seen) == sorted(s.completion for s in samples)  # every sample exactly once
    for b in batches:
        assert SFT_PROMPTS_KEYS | {"loss_mask", "num_static", "num_self"} == set(b)
        assert (b["num_static"], b["num_self"]) == (0, len(b["response"]))
        n, width = b["input_ids"].shape
        assert b["attention_mask"].shape == b["loss_mask"].shape == (n, width)
        assert len(b["prompt"]) == len(b["prompt_lengths"]) == n
        assert b["loss_mask"].sum(dim=1).min() > 0
        assert b["input_ids"].dtype == torch.long
    assert env.num_epochs == 0
    # the next step starts a new pass
    batches, seen2 = responses_of_pass(env.step())
    assert env.num_epochs == 1
    assert Counter(seen2) == Counter(seen)
    env.step()
    assert env.num_epochs == 2


def test_step_before_reset_starts_a_pass(tokenizer):
    tasks = make_tasks(COUNTRIES[:3])
    env = make_env(tokenizer, train=tasks, data_batch_size_per_gpu=8)
    env.refill(scored_samples(tasks, per_prompt=1))
    batch = env.step()
    assert len(batch["response"]) == 3


def test_reset_on_an_empty_buffer(tokenizer):
    env = make_env(tokenizer)
    with pytest.raises(SelfSFTError, match="empty"):
        env.reset()
    env.refill([Scored(0, [], "wrong", 0.0)])
    with pytest.raises(SelfSFTError):
        env.reset()


def test_truncation_to_max_context_length(tokenizer):
    tasks = make_tasks(COUNTRIES[:2])
    env = make_env(tokenizer, train=tasks, max_context_length=12)
    env.refill(scored_samples(tasks, per_prompt=1))
    assert env.reset()["input_ids"].shape[1] <= 12


def test_eval_mode_switches_prompts(tokenizer):
    train, evals = make_tasks(COUNTRIES[:5]), make_tasks(COUNTRIES[5:])
    env = make_env(tokenizer, train=train, evals=evals)
    assert env.prompts is train
    with env.eval_mode():
        assert env.prompts is evals
    assert env.prompts is train
    with pytest.raises(RuntimeError), env.eval_mode():
        raise RuntimeError
    assert env.prompts is train and not env.evaluation_mode


def test_sample_prompts_visits_every_train_prompt_once_per_pass(tokenizer):
    train = make_tasks(COUNTRIES[:5])
    env = make_env(tokenizer, train=train)
    got = [t.id for _ in range(5) for t in env.sample_prompts(2)]  # 10 draws = 2 passes
    assert sorted(got[:5]) == list(range(5))
    assert sorted(got[5:]) == list(range(5))
    assert len(env.sample_prompts(100)) == 5  # never more than the set
    # a new seed gives another order, the same seed the same order
    a = [t.id for t in make_env(tokenizer, train=train, seed=1).sample_prompts(5)]
    b = [t.id for t in make_env(tokenizer, train=train, seed=1).sample_prompts(5)]
    assert a == b and sorted(a) == list(range(5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"selection": "best"}, "selection"), ({"data_batch_size_per_gpu": 0}, "data_batch_size_per_gpu"),
     ({"train": []}, "train"), ({"reward": "no_such_reward"}, "no_such_reward")],
)
def test_constructor_errors(tokenizer, kwargs, match):
    with pytest.raises(SelfSFTError, match=match):
        make_env(tokenizer, **kwargs)


def test_assistant_turns_of_the_prompt_carry_no_loss(tokenizer):
    """Few-shot examples inside a task's chat are context: only the sample's own (last) turn is learned."""
    shots = [{"role": "user", "content": "What is 4 + 3?"}, {"role": "assistant", "content": "7"}]
    task = Task(0, [*shots, {"role": "user", "content": "What is 5 + 1?"}], None, {"answer": "6"})
    env = make_env(tokenizer, "first_number", train=[task])
    env.refill([Scored(0, [*task.messages, {"role": "assistant", "content": "6"}], "6", 1.0)])
    batch = env.reset()
    learned = tokenizer.decode(batch["input_ids"][0][batch["loss_mask"][0].bool()])
    assert learned.startswith("6<|im_end|>") and "7" not in learned


# ---- static data ----
STATIC = [[{"role": "user", "content": f"Static question {i}?"}, {"role": "assistant", "content": f"Static answer {i}."}]
          for i in range(3)]


def test_static_conversations_learn_every_assistant_turn(tokenizer):
    from conftest import MULTI  # system/user/assistant/tool/user/assistant

    tasks = make_tasks(COUNTRIES[:2])
    env = make_env(tokenizer, train=tasks, static_data=[MULTI], static_fraction=1.0)
    stats = env.refill(scored_samples(tasks, per_prompt=2))
    assert (stats["kept"], stats["static"], stats["buffer"]) == (2.0, 2.0, 2.0)  # share 1: static only
    batch = env.reset()
    assert (batch["num_static"], batch["num_self"]) == (2, 0)
    for row in range(2):
        ids, mask = batch["input_ids"][row], batch["loss_mask"][row].bool()
        runs = tokenizer.decode(ids[mask]), tokenizer.decode(ids[~mask & batch["attention_mask"][row].bool()])
        assert "Paris." in runs[0] and "Berlin, of course." in runs[0]
        for turn in MULTI:
            if turn["role"] != "assistant":
                assert turn["content"] not in runs[0] and turn["content"] in runs[1]


def test_static_share_of_a_refill(tokenizer):
    tasks = make_tasks(COUNTRIES[:4])
    env = make_env(tokenizer, train=tasks, static_data=STATIC, static_fraction=0.5)
    samples = scored_samples(tasks, per_prompt=4)  # 2 winners per prompt: 8 kept
    stats = env.refill(samples)
    assert (stats["kept"], stats["static"], stats["buffer"], stats["static_fraction"]) == (8.0, 8.0, 16.0, 0.5)
    assert sum(s.static for s in env.buffer) == 8
    # a share of 0.25: a third as many static as self-generated samples
    assert env.refill(samples, static_fraction=0.25)["static"] == 3.0  # round(8 / 3)
    # nothing selected: the floor, the share of one sample per prompt (4 prompts x 0.5)
    losers = [Scored(t.id, [*t.messages, {"role": "assistant", "content": "?"}], "?", 0.0) for t in tasks]
    stats = env.refill(losers, static_fraction=0.5)
    assert (stats["kept"], stats["static"], stats["buffer"]) == (0.0, 2.0, 2.0)
    assert env.refill(samples, static_fraction=0.0)["static"] == 0.0
    # share 1: as many static conversations as prompts, and no self-generated sample
    stats = env.refill(samples, static_fraction=1.0)
    assert (stats["kept"], stats["static"], stats["buffer"]) == (8.0, 4.0, 4.0)
    assert all(s.static for s in env.buffer)


def test_static_conversations_come_up_once_per_pass(tokenizer):
    env = make_env(tokenizer, static_data=STATIC)
    drawn = [s.messages for s in env.draw_static(6)]
    assert sorted(map(str, drawn[:3])) == sorted(map(str, STATIC))
    assert sorted(map(str, drawn[3:])) == sorted(map(str, STATIC))
    assert all(s.static and s.completion.startswith("Static answer") for s in env.draw_static(2))


def test_static_fraction_schedule(tokenizer):
    env = make_env(tokenizer, static_data=STATIC, static_fraction=1.0, static_final_fraction=0.0, static_decay_iterations=2)
    assert [env.static_fraction_at(i) for i in (1, 2, 3, 4)] == [1.0, 0.5, 0.0, 0.0]
    assert make_env(tokenizer, static_data=STATIC, static_fraction=0.3).static_fraction_at(9) == 0.3
    assert make_env(tokenizer, static_fraction=0.3).static_fraction_at(1) == 0.0  # no static data


def test_static_data_from_a_file_and_its_errors(tokenizer, tmp_path):
    path = tmp_path / "oracle.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in STATIC))
    assert make_env(tokenizer, static_data=path).static_data == STATIC
    assert make_env(tokenizer, static_data=str(path)).static_data == STATIC
    with pytest.raises(SelfSFTError, match="static conversation 1 has no assistant turn"):
        make_env(tokenizer, static_data=[STATIC[0], STATIC[1][:1]])
    with pytest.raises(SelfSFTError, match="static_fraction must be between 0 and 1, got 1.5"):
        make_env(tokenizer, static_data=STATIC, static_fraction=1.5)
    with pytest.raises(SelfSFTError, match="static_decay_iterations must be >= 1"):
        make_env(tokenizer, static_data=STATIC, static_decay_iterations=0)


def test_static_tool_calls_become_text_and_unlearnable_templates_are_refused_at_once(tokenizer):
    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "lookup", "arguments": {"c": "Peru"}}}]}
    chat = [{"role": "user", "content": "Capital of Peru?"}, call, {"role": "tool", "content": "Lima"},
            {"role": "assistant", "content": "Lima."}]
    [static] = make_env(tokenizer, static_data=[chat]).static_data
    assert static[1] == {"role": "assistant", "content": '<tool_call>\n{"name": "lookup", "arguments": {"c": "Peru"}}\n</tool_call>'}
    with pytest.raises(SelfSFTError, match="static conversation 0: turn 1: a tool call needs a string 'name'"):
        make_env(tokenizer, static_data=[[chat[0], {"role": "assistant", "content": "", "tool_calls": [{"x": 1}]}]])
    rewriting = copy.deepcopy(tokenizer)  # strips past reasoning: turn-by-turn masks cannot be right
    rewriting.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and not loop.last %}"
        "{{ m.content.split('</think>')[-1] }}!{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    make_env(rewriting)  # single-turn samples learn their last turn only: fine
    with pytest.raises(SelfSFTError, match="does not render conversations prefix-consistently"):
        make_env(rewriting, static_data=STATIC)


def test_run_state_keeps_the_static_order(tokenizer):
    env = make_env(tokenizer, static_data=STATIC)
    env.draw_static(1)
    state = json.loads(json.dumps(env.state_dict()))
    expected = [s.messages for s in env.draw_static(4)]
    other = make_env(tokenizer, static_data=STATIC, seed=7)
    other.load_state_dict(state)
    assert [s.messages for s in other.draw_static(4)] == expected
    del state["static_order"]  # a state written before static data existed
    other.load_state_dict(state)
    assert other._static_order == []


def test_eval_reward_scores_held_out_samples_and_reward_counts_are_kept(tokenizer):
    def counting(prompts, completions, **kwargs):
        return RewardValues([0.25] * len(completions), {"my_count": float(len(completions))})

    tasks = make_tasks(COUNTRIES[:1])
    env = make_env(tokenizer, counting, train=tasks, eval_reward="contains")
    gens = Generations(texts=[["Paris", "Lyon"]], finished=[[True, True]])
    assert [s.reward for s in env.score(tasks, gens)] == [0.25, 0.25] and env.reward_metrics == {"my_count": 2.0}
    with env.eval_mode():
        assert [s.reward for s in env.score(tasks, gens)] == [1.0, 0.0] and env.reward_metrics == {}
    with pytest.raises(SelfSFTError, match="eval_reward needs a reward"):
        SelfSFTGym(tasks, tasks, tokenizer, agent=lambda task, chat: 1.0, eval_reward="contains")
