"""Tool calls: schemas, the tools prompt and the reply parser."""

from __future__ import annotations

import json

import pytest

from agilerl_selfsft import SelfSFTError
from agilerl_selfsft.data.tools import TOOLS_PROMPT, parse_tool_calls, tool_schema, with_tools_prompt


def test_parse_tool_calls_reads_the_hermes_format_and_names_what_is_wrong():
    call = '<tool_call>\n{"name": "lookup", "arguments": {"word": "cat"}}\n</tool_call>'
    parsed = {"type": "function", "function": {"name": "lookup", "arguments": {"word": "cat"}}}
    assert parse_tool_calls(call) == ([parsed], None)
    assert parse_tool_calls("no call here") == ([], None)
    two, error = parse_tool_calls(f"Let me look.\n{call}\n{call.replace('cat', 'dog')}")
    assert error is None and [c["function"]["arguments"]["word"] for c in two] == ["cat", "dog"]
    unclosed, error = parse_tool_calls('<tool_call>\n{"name": "lookup", "parameters": {"word": "x"}}')
    assert error is None and unclosed[0]["function"] == {"name": "lookup", "arguments": {"word": "x"}}
    as_string, _ = parse_tool_calls('<tool_call>{"name": "lookup", "arguments": "{\\"word\\": \\"y\\"}"}</tool_call>')
    assert as_string[0]["function"]["arguments"] == {"word": "y"}
    for bad, why in [('<tool_call>{"name": "lookup", "arguments": {"word": </tool_call>', "not valid JSON"),
                     ('<tool_call>{"capital": "Tokyo"}</tool_call>', "no string 'name'"),
                     ('<tool_call>{"name": "lookup", "arguments": [1]}</tool_call>', "not a JSON object")]:
        calls, error = parse_tool_calls(bad)
        assert calls == [] and why in error
    degenerate = parse_tool_calls("<tool_call>" + "[" * 5000)  # a model stuck in a loop: json.loads recurses
    assert degenerate[0] == [] and "nested too deeply" in degenerate[1]


def lookup(word: str) -> str:
    """Look a word up.

    Args:
        word: the word to look up
    """
    return word


def test_tool_schema_takes_functions_full_and_bare_schemas_and_refuses_the_rest():
    schema = tool_schema(lookup)
    assert schema["type"] == "function" and schema["function"]["name"] == "lookup"
    assert schema["function"]["parameters"]["properties"]["word"]["type"] == "string"
    assert tool_schema(schema) is schema
    assert tool_schema({"name": "bare", "parameters": {}}) == {"type": "function", "function": {"name": "bare", "parameters": {}}}

    def undocumented(x):
        return x

    with pytest.raises(SelfSFTError, match="tool 'undocumented': no JSON schema"):
        tool_schema(undocumented)
    with pytest.raises(SelfSFTError, match="a tool must be a JSON schema with a name"):
        tool_schema({"description": "no name"})


def test_the_tools_prompt_joins_the_system_message_or_becomes_one():
    schema = tool_schema(lookup)
    block = TOOLS_PROMPT.format(tools=json.dumps(schema))
    user = {"role": "user", "content": "hi"}
    system = {"role": "system", "content": "Be brief."}
    assert with_tools_prompt([user], [schema]) == [{"role": "system", "content": block}, user]
    context = [system, user]
    assert with_tools_prompt(context, [schema]) == [{"role": "system", "content": f"Be brief.\n\n{block}"}, user]
    assert context == [system, user]  # the caller's messages are not changed
