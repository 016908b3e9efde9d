"""The run directory: one trainer at a time (a lock), and what in it a run of ours wrote (for ``--overwrite``).

**The lock.** :func:`run_lock` takes an exclusive ``fcntl.flock`` on ``RUN/.selfsft.lock`` and writes the
holder's PID into it. A second trainer on the same directory (a second ``train``, or a ``--resume`` while the
first still runs) stops with one line naming that PID. The kernel releases the lock when its process ends,
however it ends (SIGKILL included), so a killed run never blocks its resume; the file itself stays. The lock
is re-entrant within a process: the command line takes it before it looks at the folder, and
:func:`~agilerl_selfsft.training.loop.finetune_llm_selfsft` takes it again for the run itself, so the Python
entry point follows the same rule. (With several processes only the main one takes it.)

**Ours.** A run folder written by ``agilerl-selfsft train`` holds ``config.json`` (a run config) and
``checkpoints/iteration_NNNN`` folders that each carry a manifest, plus the files in :data:`RUN_ENTRIES`.
:func:`check_ours` refuses a folder that is anything else or holds anything else, naming those entries;
:func:`clear_run` deletes exactly what a run wrote.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.manifest import MANIFEST

LOCK_FILE = ".selfsft.lock"
#: what ``agilerl-selfsft train`` writes at the top of its run folder
RUN_ENTRIES = ("config.json", "metrics.jsonl", "checkpoints", "reward_curve.png", LOCK_FILE)
_CHECKPOINT_ENTRY = re.compile(r"\.?iteration_\d{4,}(\.tmp)?|\.?latest(\.tmp)?")

_held: dict[str, list[int]] = {}  # resolved run dir -> [file descriptor, depth], the locks this process holds
_held_guard = threading.Lock()


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the run directory's lock for the block (creating the directory); re-entrant within a process.

    :param run_dir: the run directory
    :return: (as the context value) the run directory
    :raises SelfSFTError: when another process holds it, naming that process's PID
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(run_dir)
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
        else:
            _held[key] = [_acquire(run_dir), 1]
    try:
        yield run_dir
    except BaseException:
        if created and run_dir.is_dir() and os.listdir(run_dir) == [LOCK_FILE]:  # nothing written: leave nothing
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        with _held_guard:
            _held[key][1] -= 1
            if _held[key][1] == 0:
                os.close(_held.pop(key)[0])  # closing the last descriptor releases the flock


def _acquire(run_dir: Path) -> int:
    """Open the lock file and take the lock without waiting; write our PID into it."""
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f"PID {holder}" if holder.isdigit() else "another process"
        raise SelfSFTError(f"run directory {run_dir} is in use by another trainer ({who}); wait for it to end, "
                           "or stop it, before starting or resuming a run there") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run (its metrics or its checkpoints)."""
    run_dir = Path(run_dir)
    return (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()


def foreign_entries(run_dir: str | Path) -> list[str]:
    """What in ``run_dir`` no run of ours wrote (empty when all of it is a run's, or there is no folder).

    At the top, the names of :data:`RUN_ENTRIES` are a run's; under ``checkpoints/``, ``latest`` and the
    ``iteration_NNNN`` folders that carry a manifest (and the hidden temporaries a crash while saving
    leaves). Whether ``config.json`` is a run config is :func:`check_ours`'s question.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    foreign = [n for n in sorted(os.listdir(run_dir)) if n not in RUN_ENTRIES]
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        for name in sorted(os.listdir(checkpoints)):
            entry = checkpoints / name
            checkpoint = entry.is_dir() and not entry.is_symlink() and (
                name.endswith(".tmp") or (entry / MANIFEST).is_file())
            ours = _CHECKPOINT_ENTRY.fullmatch(name) and (entry.is_symlink() if "latest" in name else checkpoint)
            if not ours:
                foreign.append(f"checkpoints/{name}")
    elif checkpoints.exists() or checkpoints.is_symlink():
        foreign.append("checkpoints (not a folder)")
    return foreign


def check_ours(run_dir: str | Path) -> None:
    """Refuse (for ``--overwrite``) a folder that is not wholly a run of ours; nothing is touched.

    :raises SelfSFTError: when ``run_dir`` has no run ``config.json``, or holds anything a run does not
        write (naming those entries)
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not set(os.listdir(run_dir)) - {LOCK_FILE}:
        return
    if not _is_run_config(run_dir / "config.json"):
        raise SelfSFTError(f"--overwrite deletes only a run of agilerl-selfsft train, and {run_dir} has no run "
                           "config.json; delete the folder yourself or choose another --output")
    foreign = foreign_entries(run_dir)
    if foreign:
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise SelfSFTError(f"--overwrite deletes only a run of ours, and {run_dir} also holds {shown}; "
                           "move those away or choose another --output")


def clear_run(run_dir: str | Path) -> None:
    """Delete the run in ``run_dir`` (for ``--overwrite``): only what a run wrote, keeping the lock file.

    :raises SelfSFTError: as :func:`check_ours` (nothing is deleted then)
    """
    run_dir = Path(run_dir)
    check_ours(run_dir)
    for name in RUN_ENTRIES:
        entry = run_dir / name
        if name == LOCK_FILE or not (entry.exists() or entry.is_symlink()):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` is a ``config.json`` that ``agilerl-selfsft train`` wrote (a mapping with a task)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("task"), dict) and "model" in data
