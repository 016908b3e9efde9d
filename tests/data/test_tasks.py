"""Task files: the shipped capitals task and the errors for malformed JSONL."""

from __future__ import annotations

import json

import pytest
from conftest import write_jsonl

from agilerl_selfsft.data.tasks import CAPITALS_DIR, load_tasks, task_from_row
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.samples import Task


def test_shipped_capitals_task():
    train = load_tasks(CAPITALS_DIR / "train.jsonl")
    evals = load_tasks(CAPITALS_DIR / "eval.jsonl")
    assert len(train) >= 150
    assert len(evals) >= 40
    assert [t.id for t in train] == list(range(len(train)))
    for t in train + evals:
        assert isinstance(t.prompt, str) and t.prompt.strip()
        assert t.messages == [{"role": "user", "content": t.prompt}]
        answers = t.columns["answer"]
        assert answers and all(isinstance(a, str) and a for a in (answers if isinstance(answers, list) else [answers]))
    train_prompts = {t.prompt.strip().casefold() for t in train}
    eval_prompts = {t.prompt.strip().casefold() for t in evals}
    assert len(train_prompts) == len(train), "duplicate train prompts"
    assert len(eval_prompts) == len(evals), "duplicate eval prompts"
    assert not train_prompts & eval_prompts, "a held-out country is also a train prompt"


def test_rows_with_prompt_system_messages_and_columns(tmp_path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Capital of Peru?"}]
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"prompt": "What is 2+2?", "answer": "4"},
        "",  # blank lines are skipped and do not take an id
        {"prompt": "Capital of Chile?", "system": "Answer in one word.", "answer": ["Santiago"], "level": 2},
        {"messages": chat, "answer": "Lima"},
    ])
    tasks = load_tasks(path)
    assert [t.id for t in tasks] == [0, 1, 2]
    assert tasks[0] == Task(0, [{"role": "user", "content": "What is 2+2?"}], "What is 2+2?", {"answer": "4"})
    assert tasks[1].messages == [{"role": "system", "content": "Answer in one word."},
                                 {"role": "user", "content": "Capital of Chile?"}]
    assert tasks[1].prompt == "Capital of Chile?"
    assert tasks[1].columns == {"answer": ["Santiago"], "level": 2}  # system is not a reward column
    assert tasks[2].messages == chat
    assert tasks[2].prompt == chat  # reward functions get the chat as the prompt
    assert tasks[2].columns == {"answer": "Lima"}


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(SelfSFTError, match="nope.jsonl"):
        load_tasks(missing)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(SelfSFTError, match=r"empty\.jsonl.*no rows"):
        load_tasks(path)


def test_invalid_json_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}, {"prompt": "b"}, '{"prompt": "c",'])
    with pytest.raises(SelfSFTError, match=r"bad\.jsonl:3: not valid JSON"):
        load_tasks(path)


def test_row_without_prompt_lists_the_keys_found(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a"}, {"question": "b", "answer": "c"}])
    with pytest.raises(SelfSFTError) as info:
        load_tasks(path)
    message = str(info.value)
    assert "t.jsonl:2" in message
    assert "'answer'" in message and "'question'" in message


@pytest.mark.parametrize("row", [{"prompt": "   "}, {"messages": []}, [1, 2], "just a string"])
def test_other_bad_rows(tmp_path, row):
    path = write_jsonl(tmp_path / "t.jsonl", [row])
    with pytest.raises(SelfSFTError, match=r"t\.jsonl:1"):
        load_tasks(path)


def test_a_whole_conversation_is_a_prompt_with_its_last_reply_as_answer(tmp_path):
    chat = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    path = write_jsonl(tmp_path / "t.jsonl", [{"messages": chat}, {"messages": chat, "answer": ["A", "a"]}])
    first, second = load_tasks(path)
    assert first == Task(0, chat[:1], chat[:1], {"answer": "A"})
    assert second.messages == chat[:1] and second.columns == {"answer": ["A", "a"]}  # the row's own answer wins


def test_alfworld_trajectory_as_a_prompt(tmp_path):
    """Seed 001's {system, conversations} rows (ShareGPT turns): every turn but the last action is the prompt."""
    turns = [{"from": "human", "value": "Task: heat a mug."}, {"from": "gpt", "value": "go to countertop 1"},
             {"from": "human", "value": "You arrive at countertop 1."}, {"from": "gpt", "value": "take mug 1"}]
    path = write_jsonl(tmp_path / "traj.jsonl", [{"system": "You are a household robot.", "conversations": turns}])
    [task] = load_tasks(path)
    assert task.messages == [{"role": "system", "content": "You are a household robot."},
                             {"role": "user", "content": "Task: heat a mug."},
                             {"role": "assistant", "content": "go to countertop 1"},
                             {"role": "user", "content": "You arrive at countertop 1."}]
    assert task.prompt == task.messages and task.columns == {"answer": "take mug 1"}


def test_nothing_to_answer(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"system": "S", "conversations": [{"from": "gpt", "value": "hi"}]}])
    with pytest.raises(SelfSFTError, match=r"t\.jsonl:1: nothing to answer"):
        load_tasks(path)


@pytest.mark.parametrize("kind", ["trl", "sharegpt", "prompt", "csv", "dataset", "saved"])
def test_every_source_gives_the_same_tasks(tmp_path, kind):
    from datasets import Dataset

    chats = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Chile?"},
              {"role": "assistant", "content": "Santiago"}],
             [{"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Lima"}]]
    trl = [{"messages": c} for c in chats]
    plain = [{"prompt": c[-2]["content"], "answer": c[-1]["content"], "system": c[0]["content"] if len(c) == 3 else ""}
             for c in chats]
    if kind == "trl":
        source = write_jsonl(tmp_path / "t.jsonl", trl)
    elif kind == "sharegpt":
        source = write_jsonl(tmp_path / "t.jsonl", [
            {"system": "Be brief.", "conversations": [{"from": "human", "value": "Capital of Chile?"},
                                                      {"from": "gpt", "value": "Santiago"}]},
            {"conversations": [{"from": "human", "value": "Capital of Peru?"}, {"from": "gpt", "value": "Lima"}]}])
    elif kind == "prompt":
        source = write_jsonl(tmp_path / "t.jsonl", plain)
    elif kind == "csv":
        source = tmp_path / "t.csv"
        source.write_text("prompt,answer,system\n" + "".join(f"{r['prompt']},{r['answer']},{r['system']}\n" for r in plain))
    elif kind == "dataset":
        source = Dataset.from_list(trl)
    else:
        source = tmp_path / "saved"
        Dataset.from_list(plain).save_to_disk(source)
    tasks = load_tasks(source)
    assert [t.id for t in tasks] == [0, 1]
    assert [t.messages for t in tasks] == [c[:-1] for c in chats]
    assert [t.columns for t in tasks] == [{"answer": "Santiago"}, {"answer": "Lima"}]
    expected_prompts = [r["prompt"] for r in plain] if kind in ("prompt", "csv", "saved") else [c[:-1] for c in chats]
    assert [t.prompt for t in tasks] == expected_prompts


def test_bad_rows_can_be_skipped_and_ids_count_the_kept_rows(tmp_path, caplog):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a"}, "{oops", {"question": "b"}, {"prompt": "c"}])
    with pytest.raises(SelfSFTError, match=r"t\.jsonl:2: not valid JSON"):
        load_tasks(path)
    tasks = load_tasks(path, on_error="skip")
    assert [(t.id, t.prompt) for t in tasks] == [(0, "a"), (1, "c")]
    assert "t.jsonl:2: not valid JSON" in caplog.text and "t.jsonl:3: unknown row shape" in caplog.text


def test_messages_need_role_and_content():
    with pytest.raises(SelfSFTError, match="role"):
        task_from_row({"messages": [{"role": "user"}]}, 0)


def test_an_unreadable_task_file_is_named(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9?"}\n')  # not UTF-8
    with pytest.raises(SelfSFTError, match=r"latin1.jsonl cannot be read: 'utf-8' codec can't decode"):
        load_tasks(path)
