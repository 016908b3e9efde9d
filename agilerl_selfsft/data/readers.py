"""Reading data: every accepted file or dataset shape, normalised to one row type, :class:`Row`.

Sources: a JSONL file (``.jsonl``; bad lines are named by file and line), a JSON file holding a list of
rows (``.json``; otherwise read as JSONL), a CSV file (``.csv``; every cell a string, ``messages`` or
``conversations`` cells as JSON text), a folder written by ``datasets``' ``save_to_disk``, a
``datasets.Dataset``, or a list of mappings.

Row shapes (see :data:`SHAPES`), each turned into a :class:`Row` whose ``messages`` are
``{"role", "content"}`` turns, system turn first:

- ``{"prompt": str}`` with optional ``system`` and any other columns (``answer``, ``completion``…);
- ``{"messages": [...]}`` (TRL's conversational format), optional ``system``;
- ``{"system": str, "conversations": [...]}`` (ShareGPT, ALFWorld trajectories).

Turns are ``{"role", "content"}`` or ShareGPT's ``{"from", "value"}`` with ``from`` one of ``human``,
``gpt``, ``system``, ``tool`` (see :data:`ROLES`); an assistant turn may carry TRL's ``tool_calls`` (with a
``tools`` column: see :func:`conversation_from_row`). What a row is used for — a prompt to answer
(:func:`agilerl_selfsft.data.tasks.load_tasks`) or a conversation to learn (:func:`load_conversations`) —
is decided after reading, by the caller's ``convert``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from agilerl_selfsft.data.tools import as_tool_text
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.manifest import sha256
from agilerl_selfsft.samples import Message

log = logging.getLogger("agilerl_selfsft")

OnError = Literal["stop", "skip"]
T = TypeVar("T")

SHAPES = (
    '{"prompt": str, "system"?: str, ...columns}',
    '{"messages": [turns], "system"?: str, ...columns}',
    '{"system"?: str, "conversations": [turns], ...columns}',
)
TURNS = '{"role", "content"} or {"from": human|gpt|system|tool, "value"}'
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "tool": "tool"}
_SHOWN_SKIPS = 10  # skipped rows named one by one in the log; the rest are counted


@dataclass
class Row:
    """One row of any accepted shape.

    :param messages: the whole chat as ``{"role", "content"}`` turns, the system turn first if there is one
    :param prompt: the row's ``prompt`` string when it had one (reward functions receive it), else None
    :param columns: every other field (``answer``, ``completion``, ``tests``…), None values left out
    :param where: where the row came from (``file:line``, ``file row i``, ``dataset row i``), for errors
    """

    messages: list[Message]
    prompt: str | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    where: str = "row"


def read_jsonl(path: str | Path, what: str, on_error: OnError = "stop") -> list[tuple[int, Any]]:
    """``(line number, parsed row)`` for every non-blank line of a JSONL file.

    :param what: names the file in errors, e.g. ``"task file"``
    :param on_error: a line that is not JSON: ``"stop"`` raises, ``"skip"`` logs ``file:line`` and goes
        on, defaults to ``"stop"``
    :raises SelfSFTError: naming the file (and the line) when it is missing, unreadable or not JSON
    """
    return [(int(where.rsplit(":", 1)[1]), raw) for where, raw in _read_jsonl(Path(path), what, on_error)]


def load_rows(
    source: Any, what: str = "data", on_error: OnError = "stop", convert: Callable[[Row], T] | None = None
) -> list[T]:
    """Read every row of ``source`` (see the module docstring), normalise it, and ``convert`` it.

    :param source: a file or saved-dataset folder path, a ``datasets.Dataset``, or a list of mappings
    :param what: names the source in errors, e.g. ``"task file"``, defaults to ``"data"``
    :param on_error: a bad row (not JSON, an unknown shape, or refused by ``convert``): ``"stop"`` raises
        its error, ``"skip"`` logs it (``file:line: why``) and leaves the row out, defaults to ``"stop"``
    :param convert: turns a :class:`Row` into what the caller keeps, raising :class:`SelfSFTError` for a
        row it cannot use, defaults to None (the rows themselves)
    :raises SelfSFTError: for a missing or unreadable source, an empty one, a bad row under ``"stop"``, or
        when every row was skipped
    """
    if on_error not in ("stop", "skip"):
        raise SelfSFTError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
    name = _name(source)
    skipped: list[str] = []
    out = []
    for where, raw in _raw_rows(source, what, on_error, skipped):
        try:
            row = normalise_row(raw, where)
            out.append(convert(row) if convert is not None else row)
        except SelfSFTError as exc:
            if on_error == "stop":
                raise
            skipped.append(str(exc))
    for problem in skipped[:_SHOWN_SKIPS]:
        log.warning("Skipped a bad row: %s", problem)
    if skipped:
        log.warning("Skipped %d bad row(s) of %s %s; kept %d.", len(skipped), what, name, len(out))
    if not out and skipped:
        raise SelfSFTError(f"{what} {name} has no usable rows: all {len(skipped)} were skipped (first: {skipped[0]})")
    if not out:
        raise SelfSFTError(f"{what} {name} has no rows")
    return out


def load_conversations(source: Any, on_error: OnError = "stop") -> list[list[Message]]:
    """Static SFT conversations: every row of ``source`` as a whole chat with at least one assistant turn.

    A plain ``{"prompt", "completion"}`` or ``{"prompt", "answer"}`` row (a string answer) becomes a
    user turn and an assistant turn. Training learns every assistant turn of a conversation and nothing else.

    :param source: see :func:`load_rows`
    :param on_error: see :func:`load_rows`, defaults to ``"stop"``
    :raises SelfSFTError: as :func:`load_rows`; a conversation with no assistant turn is a bad row
    """
    return load_rows(source, "static data", on_error, conversation_from_row)


def as_conversations(data: Any) -> list[list[Message]]:
    """Static SFT data as conversations: conversations already loaded (a list of message lists) are checked,
    structured tool calls written as text as :func:`load_conversations` writes them; any other source is read
    by :func:`load_conversations`.

    :raises SelfSFTError: naming the conversation that has no assistant turn or a malformed tool call
    """
    if isinstance(data, list) and data and all(isinstance(c, list) for c in data):
        out = []
        for i, chat in enumerate(data):
            if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in chat):
                raise SelfSFTError(f"static conversation {i} has no assistant turn to learn from")
            try:
                out.append(as_tool_text(chat))
            except SelfSFTError as exc:
                raise SelfSFTError(f"static conversation {i}: {exc}") from None
        return out
    return load_conversations(data)


def conversation_from_row(row: Row) -> list[Message]:
    """The chat of ``row`` to learn from (its assistant turns); a plain prompt row takes its ``completion``
    or string ``answer`` as the reply. A row with a ``tools`` column or assistant ``tool_calls`` (TRL's tool
    format) is written as the agent loop writes tools (:func:`agilerl_selfsft.data.tools.as_tool_text`).

    :raises SelfSFTError: naming the row when it has no assistant turn
    """
    messages = list(row.messages)
    if row.prompt is not None and not any(m["role"] == "assistant" for m in messages):
        reply = row.columns.get("completion", row.columns.get("answer"))
        if isinstance(reply, str) and reply.strip():
            messages.append({"role": "assistant", "content": reply})
    if not any(m["role"] == "assistant" for m in messages):
        hint = "; a prompt row needs a 'completion' (or string 'answer')" if row.prompt is not None else ""
        raise SelfSFTError(f"{row.where}: the conversation has no assistant turn to learn from{hint}")
    try:
        return as_tool_text(messages, row.columns.get("tools"))  # a chat without tools comes back as it is
    except SelfSFTError as exc:
        raise SelfSFTError(f"{row.where}: {exc}") from None


def normalise_row(raw: Any, where: str = "row") -> Row:
    """One mapping of any accepted shape (see :data:`SHAPES`) as a :class:`Row`.

    :raises SelfSFTError: naming the row, the keys found and the shapes accepted, when it fits none
    """
    if not isinstance(raw, dict):
        raise SelfSFTError(f"{where}: a row must be a JSON object (a mapping), got {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if v is not None}  # datasets fills absent fields with None
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise SelfSFTError(f"{where}: 'system' must be a string, got {type(system).__name__}")
    system_turn = [{"role": "system", "content": system}] if system and system.strip() else []
    if isinstance(raw.get("prompt"), str) and raw["prompt"].strip():
        columns = _columns(raw)
        return Row([*system_turn, {"role": "user", "content": raw["prompt"]}], raw["prompt"], columns, where)
    for key in ("messages", "conversations"):
        if key in raw:
            turns = raw[key]
            if not isinstance(turns, list) or not turns:
                raise SelfSFTError(f"{where}: '{key}' must be a non-empty list of turns")
            messages = [_turn(t, f"{where}: {key}[{i}]") for i, t in enumerate(turns)]
            if system_turn and messages[0]["role"] != "system":
                messages = system_turn + messages
            return Row(messages, None, _columns(raw), where)
    raise SelfSFTError(
        f"{where}: unknown row shape, found keys {sorted(raw)}; accepted shapes: {' | '.join(SHAPES)} "
        "(with a non-empty prompt or list of turns)"
    )


def _columns(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k not in ("prompt", "messages", "conversations", "system")}


def _turn(turn: Any, where: str) -> Message:
    """A turn as ``{"role", "content", ...}``, from ``{"role", "content"}`` or ShareGPT's ``{"from", "value"}``."""
    if not isinstance(turn, dict):
        raise SelfSFTError(f"{where}: a turn must be a mapping {TURNS}, got {type(turn).__name__}")
    turn = {k: v for k, v in turn.items() if v is not None}
    if isinstance(turn.get("role"), str) and ("content" in turn or "tool_calls" in turn):
        role = ROLES.get(turn["role"].lower(), turn["role"])  # other roles go to the chat template as they are
        return {"content": "", **turn, "role": role}  # a tool-call turn may have no content
    if isinstance(turn.get("from"), str) and "value" in turn:
        role = ROLES.get(turn["from"].lower())
        if role is None:
            raise SelfSFTError(f"{where}: unknown speaker from={turn['from']!r}; accepted: {', '.join(ROLES)}")
        rest = {k: v for k, v in turn.items() if k not in ("from", "value")}
        return {"role": role, "content": turn["value"], **rest}
    raise SelfSFTError(f"{where}: every turn needs 'role' and 'content' ({TURNS}); found keys {sorted(turn)}")


# ---- sources ----
def _name(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return "dataset" if hasattr(source, "features") else "rows"


def _raw_rows(source: Any, what: str, on_error: OnError, skipped: list[str]) -> list[tuple[str, Any]]:
    """``(where, raw row)`` for every row of ``source``."""
    if isinstance(source, list):
        return [(f"row {i}", raw) for i, raw in enumerate(source)]
    if not isinstance(source, (str, Path)):
        return _dataset_rows(source, "dataset")
    path = Path(source)
    if path.is_dir():
        return _dataset_rows(_load_from_disk(path, what), str(path))
    if not path.is_file():
        raise SelfSFTError(f"{what} not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(path, what)
    if suffix == ".json":
        rows = _json_array(path, what)
        if rows is not None:
            return rows
    elif suffix != ".jsonl":
        raise SelfSFTError(
            f"{what} {path}: unknown file type {suffix or '(none)'!r}; accepted: .jsonl, .json, .csv, "
            "or a folder written by datasets' save_to_disk"
        )
    return _read_jsonl(path, what, on_error, skipped)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SelfSFTError(f"{what} {path} cannot be read: {exc}") from None


def _read_jsonl(path: Path, what: str, on_error: OnError, skipped: list[str] | None = None) -> list[tuple[str, Any]]:
    if not path.is_file():
        raise SelfSFTError(f"{what} not found: {path}")
    rows = []
    for number, line in enumerate(_read_text(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            problem = f"{path}:{number}: not valid JSON ({exc.msg})"
            if on_error == "stop":
                raise SelfSFTError(problem) from None
            if skipped is None:
                log.warning("Skipped a bad line: %s", problem)
            else:
                skipped.append(problem)
    return rows


def _json_array(path: Path, what: str) -> list[tuple[str, Any]] | None:
    """The rows of a ``.json`` file holding one list, or None when it is not one (then it is read as JSONL)."""
    text = _read_text(path, what)
    if not text.lstrip().startswith("["):
        return None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SelfSFTError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    return [(f"{path} item {i}", raw) for i, raw in enumerate(rows)]


def _csv_rows(path: Path, what: str) -> list[tuple[str, Any]]:
    """Every CSV row as strings, named by the line it starts on.

    The standard ``csv`` module rather than ``datasets``' CSV builder: that one has pandas guess types
    (an answer ``007`` would become ``7.0``) and loses line numbers.
    """
    rows = []
    reader = csv.DictReader(_read_text(path, what).splitlines(keepends=True))
    line = 2
    for raw in reader:
        where = f"{path}:{line}"
        line = reader.line_num + 1
        if None in raw:
            columns = ", ".join(reader.fieldnames or [])
            raise SelfSFTError(f"{where}: more cells than the header has columns ({columns})")
        for key in ("messages", "conversations"):
            if isinstance(raw.get(key), str):
                try:
                    raw[key] = json.loads(raw[key])
                except json.JSONDecodeError as exc:
                    raise SelfSFTError(f"{where}: the '{key}' cell is not valid JSON ({exc.msg})") from None
        rows.append((where, raw))
    return rows


def _load_from_disk(path: Path, what: str) -> Any:
    from datasets import Dataset, load_from_disk

    try:
        data = load_from_disk(str(path))
    except FileNotFoundError:
        raise SelfSFTError(f"{what} {path} is a folder but not a dataset written by datasets' save_to_disk") from None
    if not isinstance(data, Dataset):  # a DatasetDict: save_to_disk wrote each split in its own folder
        splits = list(data)
        if len(splits) != 1:
            raise SelfSFTError(f"{what} {path} holds the splits {', '.join(splits)}: give one, e.g. {path / splits[0]}")
        data = data[splits[0]]
    return data


def _dataset_rows(data: Any, name: str) -> list[tuple[str, Any]]:
    from datasets import Dataset

    if not isinstance(data, Dataset):
        keys = list(data.keys()) if hasattr(data, "keys") else []
        splits = f" with the splits {', '.join(map(str, keys))}; pass one of them" if keys else ""
        raise SelfSFTError("expected a file path, a saved dataset folder, a datasets.Dataset or a list of rows, "
                           f"got {type(data).__name__}{splits}")
    return [(f"{name} row {i}", raw) for i, raw in enumerate(data.to_list())]


def content_sha256(path: str | Path) -> str:
    """The SHA-256 of a source's content: a file's bytes, or a folder's files (``save_to_disk``) by relative
    path and bytes; so a moved or copied source is recognised as the same data ("missing" when it is gone)."""
    path = Path(path)
    if path.is_file():
        return sha256(path)
    if path.is_dir():
        files = {f.relative_to(path).as_posix(): sha256(f) for f in sorted(path.rglob("*")) if f.is_file()}
        return hashlib.sha256(json.dumps(files).encode()).hexdigest()
    return "missing"

