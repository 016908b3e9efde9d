"""Reading data: every accepted source and row shape gives the same rows; bad input gets one clear error."""

from __future__ import annotations

import csv
import json
import logging

import pytest
from conftest import CHATS, write_jsonl  # CHATS: every source below holds these two conversations and nothing else
from datasets import Dataset, DatasetDict

from agilerl_selfsft.data.chat import collate
from agilerl_selfsft.data.readers import SHAPES, Row, load_conversations, load_rows, normalise_row, read_jsonl
from agilerl_selfsft.data.tools import parse_tool_calls, with_tools_prompt
from agilerl_selfsft.errors import SelfSFTError

SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system"}


def trl_rows():
    return [{"messages": chat} for chat in CHATS]


def sharegpt_rows(from_value=True):
    rows = []
    for chat in CHATS:
        system = [m["content"] for m in chat if m["role"] == "system"]
        turns = [({"from": SHAREGPT[m["role"]], "value": m["content"]} if from_value else m)
                 for m in chat if m["role"] != "system"]
        rows.append({**({"system": system[0]} if system else {}), "conversations": turns})
    return rows


def prompt_rows():
    rows = []
    for chat in CHATS:
        system = [m["content"] for m in chat if m["role"] == "system"]
        rows.append({"prompt": chat[-2]["content"], "answer": chat[-1]["content"], **({"system": system[0]} if system else {})})
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["prompt", "system", "answer"])
        writer.writeheader()
        writer.writerows(rows)
    return path


SOURCES = {
    "trl jsonl": lambda tmp: write_jsonl(tmp / "trl.jsonl", trl_rows()),
    "sharegpt from/value jsonl": lambda tmp: write_jsonl(tmp / "alf.jsonl", sharegpt_rows()),
    "system+conversations role/content jsonl": lambda tmp: write_jsonl(tmp / "alf2.jsonl", sharegpt_rows(False)),
    "prompt/answer jsonl": lambda tmp: write_jsonl(tmp / "qa.jsonl", prompt_rows()),
    "json array": lambda tmp: (tmp / "trl.json").write_text(json.dumps(trl_rows(), indent=2)) and tmp / "trl.json",
    "csv": lambda tmp: write_csv(tmp / "qa.csv", prompt_rows()),
    "datasets.Dataset": lambda tmp: Dataset.from_list(sharegpt_rows()),
    "saved dataset": lambda tmp: Dataset.from_list(trl_rows()).save_to_disk(tmp / "saved") or tmp / "saved",
    "saved dataset dict (one split)": lambda tmp: DatasetDict({"train": Dataset.from_list(prompt_rows())})
    .save_to_disk(tmp / "dd") or tmp / "dd",
    "list of rows": lambda tmp: sharegpt_rows(),
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_every_source_and_shape_gives_the_same_conversations(tmp_path, kind):
    source = SOURCES[kind](tmp_path)
    assert load_conversations(source) == CHATS
    rows = load_rows(source)
    assert all(isinstance(r, Row) and r.where for r in rows)
    assert [r.messages[0]["role"] for r in rows] == ["system", "user"]  # the system turn first


def test_where_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ["", *trl_rows()])
    assert [r.where for r in load_rows(path)] == [f"{path}:2", f"{path}:3"]
    assert [r.where for r in load_rows(write_csv(tmp_path / "t.csv", prompt_rows()))] == [f"{tmp_path / 't.csv'}:2",
                                                                                        f"{tmp_path / 't.csv'}:3"]
    assert [r.where for r in load_rows(Dataset.from_list(trl_rows()))] == ["dataset row 0", "dataset row 1"]


def test_rows_keep_their_columns_and_prompt():
    row = normalise_row({"prompt": "Q?", "system": "S", "answer": ["a", "b"], "level": 2, "extra": None})
    assert row == Row([{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}], "Q?",
                      {"answer": ["a", "b"], "level": 2})
    row = normalise_row({"messages": CHATS[1], "tests": "assert f()"})
    assert row.prompt is None and row.columns == {"tests": "assert f()"}
    # a system key beside messages that have no system turn becomes one; one already there is not doubled
    assert normalise_row({"system": "S", "messages": CHATS[1]}).messages[0] == {"role": "system", "content": "S"}
    assert normalise_row({"system": "Be brief.", "messages": CHATS[0]}).messages == CHATS[0]


def test_sharegpt_speakers_and_tool_turns():
    turns = [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "call"},
             {"from": "tool", "value": "{}"}, {"from": "gpt", "value": "done"}]
    assert [m["role"] for m in normalise_row({"conversations": turns}).messages] == [
        "system", "user", "assistant", "tool", "assistant"]
    with pytest.raises(SelfSFTError, match=r"row: conversations\[0\]: unknown speaker from='bot'; accepted: human"):
        normalise_row({"conversations": [{"from": "bot", "value": "x"}]})


def test_a_datasets_row_with_both_turn_styles():
    """datasets fills the fields a turn lacks with None: those are ignored."""
    data = Dataset.from_list([{"messages": [{"role": "user", "content": "Q"}]},
                              {"messages": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}])
    rows = load_rows(data)
    assert rows[0].messages == [{"role": "user", "content": "Q"}]
    assert rows[1].messages == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


def test_unknown_shape_lists_the_keys_found_and_the_shapes_accepted(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "Q", "response": "A"}])
    with pytest.raises(SelfSFTError) as info:
        load_rows(path)
    message = str(info.value)
    assert message.startswith(f"{path}:1: unknown row shape, found keys ['question', 'response']")
    for shape in SHAPES:
        assert shape in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("row", "match"),
    [([1, 2], "a row must be a JSON object"), ({"prompt": "  "}, "unknown row shape, found keys \\['prompt'\\]"),
     ({"messages": []}, "'messages' must be a non-empty list"), ({"conversations": "hi"}, "'conversations' must be"),
     ({"messages": [{"role": "user"}]}, r"messages\[0\]: every turn needs 'role' and 'content'.*found keys \['role'\]"),
     ({"prompt": "Q", "system": 3}, "'system' must be a string")],
)
def test_bad_rows(row, match):
    with pytest.raises(SelfSFTError, match=match):
        normalise_row(row, "f.jsonl:7")


def test_malformed_lines_stop_or_skip(tmp_path, caplog):
    path = write_jsonl(tmp_path / "bad.jsonl", [trl_rows()[0], '{"messages": [', trl_rows()[1], "not json"])
    with pytest.raises(SelfSFTError, match=r"bad\.jsonl:2: not valid JSON"):
        load_conversations(path)
    with caplog.at_level(logging.WARNING, logger="agilerl_selfsft"):
        assert load_conversations(path, on_error="skip") == CHATS
    assert f"{path}:2: not valid JSON" in caplog.text and f"{path}:4: not valid JSON" in caplog.text
    assert "Skipped 2 bad row(s)" in caplog.text and "kept 2" in caplog.text
    with pytest.raises(SelfSFTError, match="on_error must be 'stop' or 'skip'"):
        load_rows(path, on_error="ignore")


def test_read_jsonl_skips_and_reports(tmp_path, caplog):
    path = write_jsonl(tmp_path / "p.jsonl", [{"a": 1}, "{", {"b": 2}])
    with pytest.raises(SelfSFTError, match=r"p\.jsonl:2"):
        read_jsonl(path, "pairs file")
    with caplog.at_level(logging.WARNING, logger="agilerl_selfsft"):
        assert read_jsonl(path, "pairs file", on_error="skip") == [(1, {"a": 1}), (3, {"b": 2})]
    assert f"{path}:2: not valid JSON" in caplog.text


def test_bad_rows_of_other_kinds_are_skipped_too(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "Q"}, trl_rows()[1]])
    assert load_conversations(path, on_error="skip") == CHATS[1:]


def test_every_row_skipped_names_the_first_problem(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ["{", {"question": "Q"}])
    with pytest.raises(SelfSFTError, match=rf"static data {path} has no usable rows: all 2 were skipped \(first: {path}:1"):
        load_conversations(path, on_error="skip")


def test_empty_sources(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n \n")
    (tmp_path / "e.csv").write_text("")
    (tmp_path / "h.csv").write_text("prompt,answer\n")
    for name in ("e.jsonl", "e.csv", "h.csv"):
        with pytest.raises(SelfSFTError, match=rf"static data {tmp_path / name} has no rows"):
            load_conversations(tmp_path / name)
    with pytest.raises(SelfSFTError, match="static data dataset has no rows"):
        load_conversations(Dataset.from_list([]))


def test_conversation_without_an_assistant_turn(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [trl_rows()[0], {"messages": [{"role": "user", "content": "Q"}]},
                                              {"prompt": "Q", "answer": ["a", "b"]}])
    with pytest.raises(SelfSFTError, match=rf"^{path}:2: the conversation has no assistant turn to learn from$"):
        load_conversations(path)
    assert load_conversations(path, on_error="skip") == CHATS[:1]
    with pytest.raises(SelfSFTError, match=r":3: .*no assistant turn.*needs a 'completion' \(or string 'answer'\)"):
        load_conversations(write_jsonl(tmp_path / "u.jsonl", [trl_rows()[0], trl_rows()[1], {"prompt": "Q", "answer": ["a"]}]))


def test_prompt_completion_rows_are_conversations():
    chats = load_conversations([{"prompt": "Q", "completion": "A", "answer": "ignored"}])
    assert chats == [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]]


def test_multi_turn_trajectory_keeps_every_turn(tmp_path):
    """An ALFWorld-style record (seed 001): system + many user/assistant turns, in order."""
    turns = [{"role": "user", "content": "Task: heat a mug. Observation: kitchen."}]
    for step in range(3):
        turns += [{"role": "assistant", "content": f"action {step}"}, {"role": "user", "content": f"Observation {step}"}]
    turns.append({"role": "assistant", "content": "done"})
    path = write_jsonl(tmp_path / "traj.jsonl", [{"system": "You are a household robot.", "conversations": turns}])
    [chat] = load_conversations(path)
    assert chat == [{"role": "system", "content": "You are a household robot."}, *turns]


LOOKUP = {"type": "function", "function": {"name": "lookup", "description": "Look up a capital.",
                                          "parameters": {"type": "object", "properties": {"country": {"type": "string"}}}}}


def tool_trajectory():
    """An oracle agent trajectory in TRL's tool format: a tools column and structured assistant tool calls."""
    return [
        {"role": "system", "content": "Use the tool."},
        {"role": "user", "content": "Capital of Peru?"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "lookup",
                                                                             "arguments": '{"country": "Peru"}'}}]},
        {"role": "tool", "name": "lookup", "content": "Lima"},
        {"role": "assistant", "content": "Lima."},
    ]


def test_tool_trajectories_are_written_as_the_agent_loop_writes_tools(tokenizer):
    """Static agent trajectories learn the tokens the policy writes in a rollout: the <tool_call> text that
    parse_tool_calls reads back, with the tools prompt in the system turn (SmolLM2 renders no tools)."""
    dataset = Dataset.from_list([{"messages": tool_trajectory(), "tools": json.dumps([LOOKUP])}])  # a string column
    [chat] = load_conversations(dataset)
    assert chat[0] == with_tools_prompt([{"role": "system", "content": "Use the tool."}], [LOOKUP])[0]
    assert chat[2] == {"role": "assistant", "content": '<tool_call>\n{"name": "lookup", "arguments": {"country": "Peru"}}\n</tool_call>'}
    assert parse_tool_calls(chat[2]["content"]) == ([{"type": "function", "function": {"name": "lookup", "arguments": {"country": "Peru"}}}], None)
    assert chat[1:2] + chat[3:] == tool_trajectory()[1:2] + tool_trajectory()[3:]
    batch = collate(tokenizer, [chat])  # a static conversation learns every assistant turn, the tool call included
    learned = tokenizer.decode(batch["input_ids"][0][batch["loss_mask"][0].bool()])
    assert learned == f"{chat[2]['content']}<|im_end|>\nLima.<|im_end|>\n"


def test_a_blank_tools_cell_is_no_tools(tmp_path):
    path = tmp_path / "static.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["prompt", "completion", "tools"], ["Capital of Peru?", "Lima.", ""]])
    assert load_conversations(path) == [[{"role": "user", "content": "Capital of Peru?"},
                                         {"role": "assistant", "content": "Lima."}]]


@pytest.mark.parametrize(
    ("tools", "call", "match"),
    [
        ("[{", {"function": {"name": "lookup", "arguments": {}}}, r"row 0: 'tools' is not valid JSON"),
        ({"name": "lookup"}, {"function": {"name": "lookup", "arguments": {}}}, r"row 0: 'tools' must be a list"),
        ([LOOKUP], {"function": {"arguments": {}}}, r"row 0: turn 2: a tool call needs a string 'name'"),
        ([LOOKUP], {"function": {"name": "lookup", "arguments": "not json"}}, r"row 0: turn 2: a tool call needs"),
    ],
)
def test_bad_tool_rows_name_the_row_and_the_turn(tools, call, match):
    chat = tool_trajectory()
    chat[2] = {"role": "assistant", "tool_calls": [call]}
    with pytest.raises(SelfSFTError, match=match):
        load_conversations([{"messages": chat, "tools": tools}])


def test_csv_cells_stay_strings_and_json_cells_are_read(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('prompt,answer\n"Agent number?",007\n"Two\nlines?",\n', encoding="utf-8")
    rows = load_rows(path)
    assert [r.columns["answer"] for r in rows] == ["007", ""]
    assert rows[1].prompt == "Two\nlines?" and rows[1].where == f"{path}:3"
    path = tmp_path / "m.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["messages", "answer"], [json.dumps(CHATS[1][:1]), "Lima"]])
    [row] = load_rows(path)
    assert row.messages == CHATS[1][:1] and row.columns == {"answer": "Lima"}
    path.write_text('messages\n"[{""role"": "\n', encoding="utf-8")
    with pytest.raises(SelfSFTError, match=r"m\.csv:2: the 'messages' cell is not valid JSON"):
        load_rows(path)
    path.write_text("prompt\nQ,extra\n", encoding="utf-8")
    with pytest.raises(SelfSFTError, match=r"m\.csv:2: more cells than the header has columns \(prompt\)"):
        load_rows(path)


def test_source_errors(tmp_path):
    with pytest.raises(SelfSFTError, match=rf"^data not found: {tmp_path / 'nope.jsonl'}$"):
        load_rows(tmp_path / "nope.jsonl")
    (tmp_path / "t.parquet").write_text("x")
    with pytest.raises(SelfSFTError, match=r"unknown file type '\.parquet'; accepted: \.jsonl, \.json, \.csv, or a folder"):
        load_rows(tmp_path / "t.parquet")
    (tmp_path / "folder").mkdir()
    with pytest.raises(SelfSFTError, match="is a folder but not a dataset written by datasets' save_to_disk"):
        load_rows(tmp_path / "folder")
    DatasetDict({"train": Dataset.from_list(trl_rows()), "test": Dataset.from_list(trl_rows())}).save_to_disk(tmp_path / "dd")
    with pytest.raises(SelfSFTError, match=rf"holds the splits train, test: give one, e.g. {tmp_path / 'dd' / 'train'}"):
        load_rows(tmp_path / "dd")
    assert len(load_rows(tmp_path / "dd" / "train")) == 2  # each split is a dataset folder of its own
    with pytest.raises(SelfSFTError, match="got DatasetDict with the splits train; pass one of them"):
        load_rows(DatasetDict({"train": Dataset.from_list(trl_rows())}))
    (tmp_path / "bad.json").write_text('[{"prompt": "a"},\n {"prompt": }]')
    with pytest.raises(SelfSFTError, match=r"bad\.json:2: not valid JSON"):
        load_rows(tmp_path / "bad.json")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9?"}\n')
    with pytest.raises(SelfSFTError, match="latin1.jsonl cannot be read"):
        load_rows(tmp_path / "latin1.jsonl")


def test_a_json_file_of_lines_is_read_as_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "lines.json", trl_rows())
    assert load_conversations(path) == CHATS
