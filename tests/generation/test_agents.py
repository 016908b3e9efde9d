"""Multi-turn agents on the tiny model: batched turns, exact trajectories, loss masks, bad input, training."""

from __future__ import annotations

import copy
import json
import math
import threading

import pytest
import torch
import torch.nn.functional as F

from agilerl_selfsft import SelfSFTError, SelfSFTGym, Task, finetune_llm_selfsft
from agilerl_selfsft.data.chat import collate
from agilerl_selfsft.data.tools import TOOLS_PROMPT, template_supports_tools
from agilerl_selfsft.generation.agents import rollout

from conftest import spans

LOOKUP = {"type": "function", "function": {
    "name": "lookup", "description": "Look a word up.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}
FEW_SHOT = [{"role": "user", "content": "Look up cat."}, {"role": "assistant", "content": "<tool_call>\n"
            '{"name": "lookup", "arguments": {"word": "cat"}}\n</tool_call>'}, {"role": "tool", "content": "a pet"},
            {"role": "assistant", "content": "A cat is a pet."}]


def tasks(n, start=0):
    return [Task(i, [{"role": "user", "content": f"Question {i}?"}], f"Question {i}?", {"answer": str(i)})
            for i in range(start, start + n)]


def always_call(text):
    """A parser that reads every reply as a call of ``lookup`` (the random tiny model never writes one)."""
    return [{"type": "function", "function": {"name": "lookup", "arguments": {"word": text[:5]}}}], None


def never_parses(text):
    return [], "tool call 1 is not valid JSON (Expecting value): 'garbage'"


def tool_agent(task, chat):
    """System + few-shot + the task; each tool call answered with a tool turn; two policy turns in all."""
    messages = [{"role": "system", "content": "Use the tool."}, *FEW_SHOT, *task.messages]
    for _ in range(2):
        reply = chat(messages, tools=[LOOKUP])
        messages.append(reply)
        for call in reply["tool_calls"]:
            messages.append({"role": "tool", "content": f"result for {call['function']['arguments']['word']}"})
    return 1.0, {"turns": 2.0}


# ---- batching ----
def test_every_turn_of_all_live_conversations_is_one_generate_call(tiny_agent):
    calls = []
    sample = tiny_agent.sample

    def counting_sample(prompts, *args, **kwargs):
        calls.append(len(prompts))
        return sample(prompts, *args, **kwargs)

    tiny_agent.sample = counting_sample

    def agent(task, chat):  # task i talks for i + 1 turns
        messages = list(task.messages)
        for turn in range(task.id + 1):
            messages.append(chat(messages))
            messages.append({"role": "user", "content": f"Go on ({turn})."})
        return 0.0

    done = rollout(tiny_agent, agent, tasks(3), num_generations=2)
    # turn 1: 3 tasks x K=2 conversations; turn 2: tasks 1 and 2; turn 3: task 2
    assert calls == [6, 4, 2] == done.batch_sizes and done.generate_calls == 3
    assert [[t.turns for t in group] for group in done.trajectories] == [[1, 1], [2, 2], [3, 3]]
    greedy = rollout(tiny_agent, agent, tasks(3), num_generations=2, greedy=True)  # greedy: one per task
    assert greedy.batch_sizes == [3, 2, 1] and [len(g) for g in greedy.trajectories] == [1, 1, 1]
    capped = rollout(tiny_agent, agent, tasks(3), num_generations=2, max_conversations=4)
    # at most 4 live: task 2's conversations start when task 0's end, and join the others' second turn
    assert capped.batch_sizes == [4, 4, 2, 2]
    assert [[t.turns for t in g] for g in capped.trajectories] == [[1, 1], [2, 2], [3, 3]]


# ---- trajectories and loss masks ----
def test_a_multi_turn_tool_trajectory_is_recorded_exactly(tiny_agent, tokenizer):
    assert not template_supports_tools(tokenizer)  # SmolLM2's template: tools go into the system message
    seen, asked = [], []
    sample = tiny_agent.sample

    def spying_sample(prompts, *args, **kwargs):
        asked.append(copy.deepcopy(prompts))
        return sample(prompts, *args, **kwargs)

    tiny_agent.sample = spying_sample

    def agent(task, chat):
        def recording(messages, tools=None):
            reply = chat(messages, tools)
            seen.append(copy.deepcopy(reply))
            return reply

        return tool_agent(task, recording)

    done = rollout(tiny_agent, agent, tasks(1), tool_parser=always_call)
    [[trajectory]] = done.trajectories
    first, second = seen
    assert first["tool_calls"] == always_call(first["content"])[0] and "tool_call_error" not in first
    system = "Use the tool.\n\n" + TOOLS_PROMPT.format(tools=json.dumps(LOOKUP))
    expected = [
        {"role": "system", "content": system}, *FEW_SHOT, {"role": "user", "content": "Question 0?"},
        {"role": "assistant", "content": first["content"]},
        {"role": "tool", "content": f"result for {first['content'][:5]}"},
        {"role": "assistant", "content": second["content"]},
    ]
    assert trajectory.messages == expected
    assert trajectory.learn_turns == [6, 8]  # the policy's two replies; not the few-shot assistant turns 2 and 4
    assert (trajectory.reward, trajectory.info, trajectory.turns) == (1.0, {"turns": 2.0}, 2)
    assert trajectory.tool_calls == 2 and trajectory.tool_call_errors == 0 and trajectory.tools is None
    # the policy was asked to continue exactly the recorded context, turn by turn
    assert asked == [[expected[:6]], [expected[:8]]]
    assert done.num_tokens > 0 and done.generate_calls == 2


def test_loss_covers_every_policy_turn_tool_calls_included_and_nothing_else(tiny_agent, tokenizer):
    done = rollout(tiny_agent, tool_agent, tasks(1), tool_parser=always_call)
    sample = done.scored()[0]
    assert sample.learn_turns == [6, 8] and sample.reward == 1.0 and sample.info == {"turns": 2.0}
    batch = collate(tokenizer, [sample.messages], learn_from=[sample.learn_turns], tools=[sample.tools])
    ids, mask = batch["input_ids"][0].tolist(), batch["loss_mask"][0].tolist()
    runs = spans(ids, mask)
    learned = [tokenizer.decode(t, skip_special_tokens=False).removesuffix("\n") for m, t in runs if m]
    assert learned == [f"{sample.messages[i]['content']}<|im_end|>" for i in (6, 8)]
    context = tokenizer.decode([tok for m, toks in runs if not m for tok in toks], skip_special_tokens=False)
    for turn in sample.messages[:6] + [sample.messages[7]]:  # system (with tools), few-shot, user, tool turns
        assert turn["content"] in context


def test_a_template_that_renders_tools_gets_them_and_keeps_them_with_the_trajectory(make_agent, tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>\n"
        "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    assert template_supports_tools(tok)
    done = rollout(make_agent(tokenizer=tok), tool_agent, tasks(1), tool_parser=always_call)
    sample = done.scored()[0]
    assert sample.tools == [LOOKUP] and sample.messages[0] == {"role": "system", "content": "Use the tool."}
    batch = collate(tok, [sample.messages], learn_from=[sample.learn_turns], tools=[sample.tools])
    ids, mask = batch["input_ids"][0].tolist(), batch["loss_mask"][0].tolist()
    text = tok.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nTOOLS: lookup<|im_end|>")
    learned = [tok.decode(t, skip_special_tokens=False).removesuffix("\n") for m, t in spans(ids, mask) if m]
    assert learned == [f"{sample.messages[i]['content']}<|im_end|>" for i in sample.learn_turns]


def test_replies_the_agent_rewrites_or_drops_are_not_learned(tiny_agent):
    def agent(task, chat):
        first = chat(list(task.messages))
        edited = {"role": "assistant", "content": "EDITED " + first["content"]}  # not what the policy wrote
        chat([*task.messages, edited, {"role": "user", "content": "Again."}])
        chat([{"role": "user", "content": "A fresh conversation."}])  # the last call decides the trajectory
        return 0.5

    [[trajectory]] = rollout(tiny_agent, agent, tasks(1)).trajectories
    assert [m["content"] for m in trajectory.messages[:1]] == ["A fresh conversation."]
    assert trajectory.learn_turns == [1] and trajectory.turns == 3


# ---- bad input ----
def test_an_unparseable_tool_call_comes_back_to_the_agent_without_a_crash(tiny_agent):
    got = []

    def agent(task, chat):
        reply = chat(list(task.messages), tools=[LOOKUP])
        got.append(reply)
        return 0.0 if "tool_call_error" in reply else 1.0

    done = rollout(tiny_agent, agent, tasks(2), num_generations=2, tool_parser=never_parses)
    assert len(got) == 4 and all(r["tool_calls"] == [] and "not valid JSON" in r["tool_call_error"] for r in got)
    assert done.tool_call_errors == 4 and done.tool_calls == 0
    assert [t.reward for t in done.flat] == [0.0] * 4


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (ValueError("boom"), r"agent 'agent' on task 1 \('Question 1\?'\) raised ValueError: boom"),
        (math.nan, r"agent 'agent' on task 1 \('Question 1\?'\) returned the reward nan: rewards must be finite"),
        ("1.0", r"returned '1.0', not a number"),
        ((1.0, {"x": "high"}), r"returned info\['x'\] = 'high', not a finite number"),
        ((1.0, {"reward": 0.5}), r"returned info\['reward'\]: the loop reports that itself, rename it"),
        (None, r"returned None, not a number"),
    ],
)
def test_an_agent_that_raises_or_returns_a_bad_reward_is_a_clear_error(tiny_agent, result, message):
    def agent(task, chat):
        chat(list(task.messages))
        if task.id != 1:
            chat([*task.messages, {"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}])
            return 1.0
        if isinstance(result, Exception):
            raise result
        return result

    with pytest.raises(SelfSFTError, match=message):
        rollout(tiny_agent, agent, tasks(3), num_generations=2)


def test_an_agent_that_never_chats_or_sends_bad_messages_is_a_clear_error(tiny_agent):
    with pytest.raises(SelfSFTError, match=r"task 0 .* returned without calling chat"):
        rollout(tiny_agent, lambda task, chat: 1.0, tasks(1))
    with pytest.raises(SelfSFTError, match=r"raised SelfSFTError: chat: message 0 needs a string 'role'"):
        rollout(tiny_agent, lambda task, chat: chat([{"content": "hi"}]), tasks(1))


def test_a_parser_or_a_template_that_fails_names_the_task(tiny_agent, make_agent, tokenizer):
    def broken_parser(text):
        raise KeyError("name")

    with pytest.raises(SelfSFTError, match=r"tool_parser raised KeyError: 'name' on a reply of agent 'tool_agent' on task 0"):
        rollout(tiny_agent, tool_agent, tasks(1), tool_parser=broken_parser)
    with pytest.raises(SelfSFTError, match=r"tool_parser must return \(list of calls, error or None\)"):
        rollout(tiny_agent, tool_agent, tasks(1), tool_parser=lambda text: "lookup")
    tok = copy.deepcopy(tokenizer)  # a template that refuses tool turns (as Gemma's refuses roles it lacks)
    tok.chat_template = (
        "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tool role') }}{% endif %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(SelfSFTError, match=r"agent 'tool_agent' on task 0 \('Question 0\?'\) raised SelfSFTError: chat: "
                                           r"the chat template cannot render these messages \(TemplateError: no tool role\)"):
        rollout(make_agent(tokenizer=tok), tool_agent, tasks(1), tool_parser=always_call)


def test_a_chat_call_that_outlives_its_agent_ends_with_the_rollout(tiny_agent):
    """An agent that leaves a chat call running on another thread must not hang the rollout."""
    outcomes, helpers = [], []

    def agent(task, chat):
        chat(list(task.messages))

        def late():
            try:
                chat(list(task.messages))
            except BaseException as exc:  # noqa: BLE001 -- _Stopped is a BaseException
                outcomes.append(type(exc).__name__ + ": " + str(exc))

        helpers.append(threading.Thread(target=late))
        helpers[-1].start()
        return 1.0

    runner = threading.Thread(target=lambda: outcomes.append(rollout(tiny_agent, agent, tasks(2), num_generations=2)))
    runner.start()
    runner.join(120)
    assert not runner.is_alive(), "the rollout hung on a chat call left behind"
    for helper in helpers:
        helper.join(10)
    done = next(o for o in outcomes if not isinstance(o, str))
    assert [t.reward for t in done.flat] == [1.0] * 4 and all(t.turns == 1 for t in done.flat)
    late = [o for o in outcomes if isinstance(o, str)]  # refused after the agent returned, or stopped
    assert len(late) == 4 and all(o in ("SelfSFTError: chat was called after the agent returned", "_Stopped: ")
                                  for o in late), late


def test_structured_tool_calls_in_the_agents_examples_reach_the_policy_as_text(tiny_agent):
    asked = []
    sample = tiny_agent.sample

    def spying_sample(prompts, *args, **kwargs):
        asked.extend(prompts)
        return sample(prompts, *args, **kwargs)

    tiny_agent.sample = spying_sample
    example = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "lookup", "arguments": {"word": "cat"}}}]}
    rollout(tiny_agent, lambda task, chat: chat([*FEW_SHOT[:1], example, *FEW_SHOT[2:], *task.messages]) and 1.0, tasks(1))
    assert asked[0][1] == FEW_SHOT[1]  # the same <tool_call> text as a reply the policy writes


def test_an_environment_takes_a_reward_or_an_agent(tokenizer):
    with pytest.raises(SelfSFTError, match="a reward, or an agent"):
        SelfSFTGym(tasks(2), tasks(1), tokenizer)
    with pytest.raises(SelfSFTError, match="a reward, or an agent"):
        SelfSFTGym(tasks(2), tasks(1), tokenizer, "contains", agent=tool_agent)


# ---- training ----
def masked_nll(agent, samples, tokenizer):
    batch = collate(tokenizer, [s.messages for s in samples], learn_from=[s.learn_turns for s in samples],
                    tools=[s.tools for s in samples])
    with torch.no_grad():
        logits = agent.actor(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten(), reduction="none")
    mask = batch["loss_mask"][:, 1:].flatten().float()
    return float((nll * mask).sum() / mask.sum())


def test_the_training_loop_learns_the_selected_trajectories(make_agent, tokenizer):
    agent = make_agent(lr=5e-3, max_new_tokens=6)

    def half(task, chat):  # even tasks are "solved"; every conversation has two policy turns
        _, info = tool_agent(task, chat)  # (the random tiny model writes no tool call: no tool turns)
        return float(task.id % 2 == 0), {**info, "even": float(task.id % 2 == 0)}

    env = SelfSFTGym(tasks(6), tasks(2, start=6), tokenizer, agent=half, data_batch_size_per_gpu=4,
                     keep_truncated=True)
    pop, history = finetune_llm_selfsft([agent], env, iterations=2, prompts_per_iteration=6, sft_epochs=3,
                                        eval_samples=1, verbose=False)
    first = history[1]
    assert first["kept"] > 0 and first["learned_self"] > 0 and math.isfinite(first["loss"])
    assert first["train_even"] == 0.5 and first["train_turns"] == 2.0  # the agent's info, averaged
    assert history[0]["eval_even"] == 0.5 and "eval_turns_greedy" in history[0]
    buffer = env.buffer  # the last iteration's selected trajectories
    assert buffer and all(s.reward == 1.0 and s.prompt_id % 2 == 0 and s.learn_turns == [6, 7] for s in buffer)
    batch = env.reset()
    assert batch["num_self"] == len(batch["input_ids"]) and int(batch["loss_mask"].sum()) > 0
    # after training the policy gives its selected replies a higher likelihood than the frozen reference does
    trained = masked_nll(agent, buffer, tokenizer)
    with agent.select_adapter("reference"):
        reference = masked_nll(agent, buffer, tokenizer)
    assert trained < reference


# ---- the shipped example ----
def test_the_capital_agent_runs_its_tool_and_scores_the_call_and_the_answer(tiny_agent):
    from agilerl_selfsft.examples import capital_agent as example

    assert example.country_capital_lookup("the Czech Republic") == "Prague"
    assert example.country_capital_lookup("Atlantis").startswith("Error: unknown country")
    assert example.names_capital("It is Brasilia.", ["Brasília"]) and not example.names_capital("Parisian", ["Paris"])
    assert len(example.train_tasks()) == 157 and len(example.eval_tasks()) == 40  # the example countries left out
    france = [t for t in example.eval_tasks() if t.prompt == "What is the capital of France?"]

    def calls_france(text):  # the random tiny model writes no tool call: read its first reply as one
        if "Paris" in text:
            return [], None
        return [{"type": "function", "function": {"name": example.TOOL_NAME, "arguments": {"country": "France"}}}], None

    done = rollout(tiny_agent, example.capital_agent, france, tool_parser=calls_france)
    [[trajectory]] = done.trajectories
    tool_turns = [m for m in trajectory.messages if m["role"] == "tool"]
    assert tool_turns[-1]["content"] == "Paris"  # the tool ran on the parsed call and its result was fed back
    assert trajectory.info["tool_called"] == 1.0 and trajectory.info["correct_tool_call"] == 1.0
    assert trajectory.turns == example.MAX_TURNS  # it never answers without calling: the turn limit ends it
    assert trajectory.info["answer_correct"] == 0.0 and trajectory.reward == 0.5
    # the two example exchanges are context: only the policy's replies are learned
    replies = [i for i, m in enumerate(trajectory.messages) if m["role"] == "assistant"]
    assert len(replies) == 4 + 3 and trajectory.learn_turns == replies[4:]  # 4 example turns, 3 policy turns
