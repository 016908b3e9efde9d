"""Tasks: prompt sets to generate for, one row a prompt plus the columns its reward needs.

Any source and row shape of :mod:`agilerl_selfsft.data.readers` is a prompt set: a ``prompt`` string (optional
``system``), or a chat (``messages``, or ``system`` + ``conversations``) that ends before the answer. A
chat that ends with an assistant turn (a whole conversation, as SFT data has them) is a prompt too: its
last assistant turn is dropped and kept as the ``answer`` column, unless the row has its own ``answer``.
The row's other columns (``answer``, ``tests``…) are passed to reward functions by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agilerl_selfsft.data.chat import render_prompt
from agilerl_selfsft.data.readers import OnError, Row, load_rows, normalise_row
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.samples import Task

CAPITALS_DIR = Path(__file__).parent / "builtin" / "capitals"
# small + and - with a 3-shot prefix; reward first_number
ARITHMETIC_DIR = Path(__file__).parent / "builtin" / "arithmetic"
# short Python functions with assert tests (benchmarks/make_code_task.py); reward python_tests
CODE_DIR = Path(__file__).parent / "builtin" / "code"


def load_tasks(source: Any, on_error: OnError = "stop") -> list[Task]:
    """Read a prompt set; a clear error names the file (and line) for anything wrong with it.

    :param source: a ``.jsonl`` / ``.json`` / ``.csv`` file, a folder written by ``save_to_disk``, a
        ``datasets.Dataset`` or a list of mappings (see :mod:`agilerl_selfsft.data.readers`)
    :param on_error: a bad row: ``"stop"`` raises, ``"skip"`` logs it and leaves it out, defaults to ``"stop"``
    :raises SelfSFTError: for a missing, unreadable or empty source, or a bad row under ``"stop"``
    """
    what = "task file" if isinstance(source, (str, Path)) else "task set"
    tasks = load_rows(source, what, on_error, lambda row: task_from_row(row, 0))
    for index, task in enumerate(tasks):  # ids count the rows kept
        task.id = index
    return tasks


def task_from_row(row: Any, index: int, where: str = "row") -> Task:
    """Turn one row (a mapping of any accepted shape, or a :class:`~agilerl_selfsft.data.readers.Row`) into a
    :class:`Task`.

    :raises SelfSFTError: naming the row when it fits no shape or leaves nothing to answer
    """
    if not isinstance(row, Row):
        row = normalise_row(row, where)
    messages, columns = list(row.messages), dict(row.columns)
    if messages[-1]["role"] == "assistant":  # a whole conversation: its last reply is the reference answer
        columns.setdefault("answer", messages[-1]["content"])
        messages = messages[:-1]
    if all(m["role"] == "system" for m in messages):
        raise SelfSFTError(f"{row.where}: nothing to answer: no turn before the answer but the system prompt")
    return Task(index, messages, row.prompt if row.prompt is not None else messages, columns)


def drop_long_prompts(tasks: list[Task], tokenizer: Any, limit: int, action: str, split: str) -> tuple[list[Task], int]:
    """Keep the tasks whose rendered prompt has at most ``limit`` tokens.

    :param action: ``"skip"`` drops the long ones (and the caller reports the count); ``"stop"`` raises
    :return: the kept tasks and how many were dropped
    """
    kept = []
    for task in tasks:
        length = len(tokenizer(render_prompt(tokenizer, task.messages), add_special_tokens=False)["input_ids"])
        if length <= limit:
            kept.append(task)
        elif action == "stop":
            raise SelfSFTError(
                f"{split} prompt {task.id} has {length} tokens, more than the limit of {limit} (long_prompts: stop)"
            )
    if not kept:
        raise SelfSFTError(f"every {split} prompt is longer than {limit} tokens")
    return kept, len(tasks) - len(kept)
