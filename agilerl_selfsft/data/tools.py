"""Tool calls: the schemas chat templates take, the Hermes / Qwen2.5 prompt and the parser of its replies.

A template that renders tools (Qwen2.5, Hermes, ...) gets the schemas through ``apply_chat_template(tools=...)``
(:func:`template_supports_tools` probes for that); one that does not (SmolLM2's) gets :data:`TOOLS_PROMPT` in
its system message (:func:`with_tools_prompt`). Either way the model is asked to answer with
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, which :func:`parse_tool_calls` reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from agilerl_selfsft.data.chat import render_prompt
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.samples import Message

ToolParser = Callable[[str], tuple[list[dict[str, Any]], str | None]]

TOOLS_PROMPT = (
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def parse_tool_calls(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """The tool calls in a reply, in the Hermes / Qwen2.5 format ``<tool_call>{"name", "arguments"}</tool_call>``.

    ``arguments`` may also be called ``parameters`` (Llama 3 style) or be a JSON string (OpenAI style).

    :return: the calls as ``{"type": "function", "function": {"name": str, "arguments": dict}}`` and None;
        or ``[]`` and why a ``<tool_call>`` block could not be read
    """
    if "<tool_call>" not in text:
        return [], None
    calls = []
    for n, raw in enumerate(_TOOL_CALL.findall(text), start=1):
        raw = raw.strip()
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            return [], f"tool call {n} is not valid JSON ({exc.msg}): {raw[:80]!r}"
        except RecursionError:  # a degenerate reply ("[[[[..."): a parse error like any other
            return [], f"tool call {n} is nested too deeply to parse: {raw[:80]!r}"
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            return [], f"tool call {n} has no string 'name': {raw[:80]!r}"
        args = _json_object(obj.get("arguments", obj.get("parameters", {})))
        if not isinstance(args, dict):
            return [], f"tool call {n} has arguments that are not a JSON object: {raw[:80]!r}"
        calls.append({"type": "function", "function": {"name": obj["name"], "arguments": args}})
    return calls, None


def tool_schema(tool: Any) -> dict[str, Any]:
    """A tool as the JSON schema chat templates take: ``{"type": "function", "function": {...}}``."""
    if callable(tool):
        from transformers.utils import get_json_schema

        try:
            return get_json_schema(tool)
        except Exception as exc:  # noqa: BLE001 -- transformers' reasons (missing docstring…), in one line
            raise SelfSFTError(f"tool {getattr(tool, '__name__', tool)!r}: no JSON schema ({exc})") from None
    if isinstance(tool, dict) and isinstance(tool.get("function"), dict) and "name" in tool["function"]:
        return tool
    if isinstance(tool, dict) and isinstance(tool.get("name"), str):
        return {"type": "function", "function": tool}
    raise SelfSFTError(f"a tool must be a JSON schema with a name, or a function; got {tool!r:.80}")


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools`` argument (probed with a dummy tool)."""
    probe = {"type": "function", "function": {"name": "selfsft_probe_tool", "description": "probe",
                                              "parameters": {"type": "object", "properties": {}}}}
    try:
        text = render_prompt(tokenizer, [{"role": "user", "content": "x"}], [probe])
    except Exception:  # noqa: BLE001 -- a template that chokes on tools does not support them
        return False
    return "selfsft_probe_tool" in text


def with_tools_prompt(context: list[Message], schemas: list[dict[str, Any]]) -> list[Message]:
    """``context`` with :data:`TOOLS_PROMPT` for ``schemas`` appended to its system message (or as its own)."""
    block = TOOLS_PROMPT.format(tools="\n".join(json.dumps(s) for s in schemas))
    if context and context[0]["role"] == "system":
        return [{**context[0], "content": f"{context[0]['content']}\n\n{block}"}, *context[1:]]
    return [{"role": "system", "content": block}, *context]


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    """One call as the model is asked to write it (and :func:`parse_tool_calls` reads it)."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def as_tool_text(messages: list[Message], tools: Any = None) -> list[Message]:
    """A conversation with structured tools (TRL / OpenAI style: a ``tools`` list, assistant ``tool_calls``) in
    the text form the agent loop writes for templates that do not render tools: :data:`TOOLS_PROMPT` in the
    system message, each call a ``<tool_call>`` block after its turn's content. With such a template, static
    agent trajectories written this way train the tokens the policy writes in
    :func:`agilerl_selfsft.generation.agents.rollout`
    (a template that renders tools itself gets the same Hermes text, not its own rendering of ``tools``).
    A conversation without tools or tool calls comes back as it is (copied).

    :param tools: tool schemas, or a JSON string of them (``datasets`` columns), defaults to None
    :raises SelfSFTError: naming the turn for a malformed ``tools`` value or tool call
    """
    if isinstance(tools, str) and not tools.strip():  # a blank CSV cell
        tools = None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise SelfSFTError(f"'tools' is not valid JSON ({exc.msg})") from None
    if tools is not None and not isinstance(tools, list):
        raise SelfSFTError(f"'tools' must be a list of tool schemas, got {type(tools).__name__}")
    out = []
    for i, m in enumerate(messages):
        calls = m.get("tool_calls")
        if not calls:
            out.append({k: v for k, v in m.items() if k != "tool_calls"})
            continue
        if m["role"] != "assistant" or not isinstance(calls, list):
            raise SelfSFTError(f"turn {i}: 'tool_calls' must be a list on an assistant turn")
        blocks = [_call_text(call, i) for call in calls]
        content = str(m.get("content") or "").strip()
        text = "\n".join(([content] if content else []) + blocks)
        out.append({**{k: v for k, v in m.items() if k != "tool_calls"}, "content": text})
    return with_tools_prompt(out, [tool_schema(t) for t in tools]) if tools else out


def _call_text(call: Any, turn: int) -> str:
    function = call.get("function", call) if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    arguments = _json_object(function.get("arguments", {})) if isinstance(function, dict) else None
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        raise SelfSFTError(f"turn {turn}: a tool call needs a string 'name' and object 'arguments', got {call!r:.80}")
    return tool_call_text(name, arguments)


def _json_object(value: Any) -> Any:
    """Tool-call arguments given as a JSON string (OpenAI style) decoded; anything else as it is."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
    return value
