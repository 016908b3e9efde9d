"""The ``python_tests`` reward: run each completion's code against its row's tests, in a sandbox.

A row's ``tests`` column is one of:

- a list of strings, each one test (usually an ``assert ...`` line);
- one string defining ``check(candidate)`` (HumanEval style): it is the setup, and the one test is
  ``check(<entry_point>)``, so the row needs an ``entry_point`` column naming the function;
- any other string: every top-level ``assert`` in it is one test, the other top-level statements (imports,
  helpers) are setup run before the tests.

The code is the completion's first fenced ``python`` block, else its first fenced block, else the whole text
(:func:`extract_code`). The reward is the fraction of the row's tests that pass; each program runs in its own
sandboxed subprocess (:func:`agilerl_selfsft.rewards.sandbox.run_program`), several at once. The call reports
how many programs ended each way, as metrics: ``code_passed``, ``code_syntax_error``, ``code_timeout``,
``code_killed_memory``, ``code_assertion``, ``code_crashed``.
"""

from __future__ import annotations

import ast
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.rewards.sandbox import OUTCOMES, Verdict, run_program
from agilerl_selfsft.rewards.scoring import RewardValues

# A fenced block: ``` with an optional language tag, up to the closing fence (or the end, when cut off).
FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:\n?```|\Z)", re.DOTALL)
PYTHON_TAGS = ("python", "py", "python3")


def extract_code(completion: str) -> str:
    """The code in a completion: its first ```python block, else its first ``` block, else the whole text.

    :param completion: the model's reply
    """
    text = str(completion)
    blocks = FENCE.findall(text)
    for tag, body in blocks:
        if tag.lower() in PYTHON_TAGS:
            return body
    return blocks[0][1] if blocks else text


def tests_of(row_tests: Any, entry_point: str | None = None) -> tuple[str, list[str]]:
    """The setup code and the list of tests of one row's ``tests`` value (the forms are in the module doc).

    :param row_tests: a list of test strings, or one string of test code
    :param entry_point: the function a HumanEval-style ``check(candidate)`` is called with, defaults to None
    :return: ``(setup, tests)``
    :raises SelfSFTError: for a value of another type, test code that does not parse, a ``check`` without an
        entry point, or no tests at all
    """
    if isinstance(row_tests, str):
        if "def check(" in row_tests:
            if not isinstance(entry_point, str) or not entry_point.isidentifier():
                raise SelfSFTError("python_tests: a row's tests define check(candidate) (HumanEval style), so the "
                                   f"row needs an 'entry_point' column naming the function; got {entry_point!r}")
            return row_tests, [f"check({entry_point})"]
        try:
            tree = ast.parse(row_tests)
        except SyntaxError as exc:
            raise SelfSFTError(f"python_tests: a row's tests do not parse as Python (line {exc.lineno}: "
                               f"{exc.msg})") from None
        setup = "\n".join(ast.unparse(node) for node in tree.body if not isinstance(node, ast.Assert))
        tests = [ast.unparse(node) for node in tree.body if isinstance(node, ast.Assert)]
    elif isinstance(row_tests, (list, tuple)) and all(isinstance(t, str) for t in row_tests):
        setup, tests = "", list(row_tests)
    else:
        raise SelfSFTError("python_tests: a row's tests must be a list of strings or one string of test code, "
                           f"got {type(row_tests).__name__}")
    if not tests:
        raise SelfSFTError("python_tests: a row has no tests (no assert statements)")
    return setup, tests


def check_options(timeout: float = 10.0, memory_mb: int = 1024, workers: int | None = None, **_: Any) -> None:
    """Refuse a bad ``timeout``, ``memory_mb`` or ``workers`` when the reward is resolved, before any work."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise SelfSFTError(f"python_tests: timeout must be a positive number of seconds, got {timeout!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 16:
        raise SelfSFTError(f"python_tests: memory_mb must be a whole number of MiB >= 16, got {memory_mb!r}")
    if isinstance(workers, bool) or (workers is not None and (not isinstance(workers, int) or workers < 1)):
        raise SelfSFTError(f"python_tests: workers must be a positive whole number, got {workers!r}")


def python_tests(prompts: list, completions: list[str], tests: list | None = None,
                 entry_point: list | str | None = None, timeout: float = 10.0, memory_mb: int = 1024,
                 workers: int | None = None, **_: Any) -> RewardValues:
    """The fraction of its row's tests each completion's code passes, run in a sandbox.

    :param prompts: the prompts (unused)
    :param completions: the completions, whose code is :func:`extract_code`'s
    :param tests: the task's ``tests`` column, one value per completion (forms: :func:`tests_of`)
    :param entry_point: the task's ``entry_point`` column (or one name for all rows), defaults to None
    :param timeout: seconds each program may take, defaults to 10.0
    :param memory_mb: the memory each program may use in MiB, defaults to 1024
    :param workers: programs run at once, defaults to None (``os.cpu_count()``)
    :return: the rewards, with counts of each outcome as metrics (``code_passed``…)
    :raises SelfSFTError: without a ``tests`` column, or for a bad row
    """
    if tests is None:
        raise SelfSFTError("python_tests needs a 'tests' column: per row, a list of assert strings or one string "
                           "of test code")
    if len(tests) != len(completions):
        raise SelfSFTError(f"python_tests: {len(completions)} completions but {len(tests)} rows of tests")
    if entry_point is None or isinstance(entry_point, str):
        entry_point = [entry_point] * len(completions)
    check_options(timeout, memory_mb, workers)
    jobs = [(extract_code(c), *tests_of(t, e)) for c, t, e in zip(completions, tests, entry_point, strict=True)]

    def run(job: tuple[str, str, list[str]]) -> Verdict:
        """One program's verdict."""
        code, setup, row_tests = job
        return run_program(code, row_tests, setup=setup, timeout=timeout, memory_mb=memory_mb)

    verdicts: list[Verdict] = []
    if jobs:
        threads = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="python-tests") as pool:
            verdicts = list(pool.map(run, jobs))
    metrics = {f"code_{outcome}": float(sum(v.outcome == outcome for v in verdicts)) for outcome in OUTCOMES}
    return RewardValues([v.fraction for v in verdicts], metrics)
