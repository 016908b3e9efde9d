"""Tasks: prompt sets read from JSONL files, one row a prompt plus the columns its reward needs.

A row has ``prompt`` (a string) or ``messages`` (a chat without the answer), optionally ``system``, and any
other columns (``answer``, ``tests``…), which are passed to reward functions by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agilerl_selfsft.errors import SelfSFTError

CAPITALS_DIR = Path(__file__).parent / "tasks" / "capitals"
ARITHMETIC_DIR = Path(__file__).parent / "tasks" / "arithmetic"  # small + and - with a 3-shot prefix; reward first_number


@dataclass
class Task:
    """One prompt of a task.

    :param id: position of the row in its split; selection groups completions by it (never by text)
    :param messages: the chat to answer (system and user turns)
    :param prompt: what reward functions receive as the prompt: the ``prompt`` string, or the messages
    :param columns: the row's other fields, passed to reward functions as keyword lists
    """

    id: int
    messages: list[dict[str, Any]]
    prompt: Any
    columns: dict[str, Any] = field(default_factory=dict)


def read_jsonl(path: str | Path, what: str) -> list[tuple[int, Any]]:
    """``(line number, parsed row)`` for every non-blank line of a JSONL file.

    :param what: names the file in errors, e.g. ``"task file"``
    :raises SelfSFTError: naming the file (and the line) when it is missing, unreadable or not JSON
    """
    path = Path(path)
    if not path.is_file():
        raise SelfSFTError(f"{what} not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SelfSFTError(f"{what} {path} cannot be read: {exc}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise SelfSFTError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return rows


def load_tasks(path: str | Path) -> list[Task]:
    """Read a JSONL task file; a clear error names the file (and line) for anything wrong with it."""
    tasks: list[Task] = []
    for number, row in read_jsonl(path, "task file"):
        tasks.append(task_from_row(row, len(tasks), where=f"{path}:{number}"))
    if not tasks:
        raise SelfSFTError(f"task file {path} has no rows")
    return tasks


def task_from_row(row: Any, index: int, where: str = "row") -> Task:
    """Turn one mapping (``prompt`` or ``messages``, optional ``system``, other columns) into a :class:`Task`."""
    if not isinstance(row, dict):
        raise SelfSFTError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    columns = {k: v for k, v in row.items() if k not in ("prompt", "messages", "system")}
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        messages = [{"role": "user", "content": row["prompt"]}]
        if isinstance(row.get("system"), str):
            messages.insert(0, {"role": "system", "content": row["system"]})
        return Task(index, messages, row["prompt"], columns)
    if isinstance(row.get("messages"), list) and row["messages"]:
        messages = row["messages"]
        for m in messages:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m):
                raise SelfSFTError(f"{where}: every message needs 'role' and 'content'")
        if messages[-1]["role"] == "assistant":
            raise SelfSFTError(f"{where}: 'messages' must end before the answer (last role is assistant)")
        return Task(index, messages, messages, columns)
    raise SelfSFTError(f"{where}: a row needs a non-empty 'prompt' string or 'messages' list; found keys {sorted(row)}")


def drop_long_prompts(tasks: list[Task], tokenizer: Any, limit: int, action: str, split: str) -> tuple[list[Task], int]:
    """Keep the tasks whose rendered prompt has at most ``limit`` tokens.

    :param action: ``"skip"`` drops the long ones (and the caller reports the count); ``"stop"`` raises
    :return: the kept tasks and how many were dropped
    """
    from agilerl_selfsft.chat import render_prompt

    kept = []
    for task in tasks:
        length = len(tokenizer(render_prompt(tokenizer, task.messages), add_special_tokens=False)["input_ids"])
        if length <= limit:
            kept.append(task)
        elif action == "stop":
            raise SelfSFTError(f"{split} prompt {task.id} has {length} tokens, more than the limit of {limit} (long_prompts: stop)")
    if not kept:
        raise SelfSFTError(f"every {split} prompt is longer than {limit} tokens")
    return kept, len(tasks) - len(kept)
