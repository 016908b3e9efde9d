"""The run directory: one trainer at a time (a lock), and what in it a run of ours wrote (for ``--overwrite``).

**The lock.** :func:`run_lock` takes an exclusive ``fcntl.flock`` on ``RUN/.selfsft.lock`` and writes the
holder's PID into it. A second trainer on the same directory (a second ``train``, or a ``--resume`` while the
first still runs) stops with one line naming that PID. The kernel releases the lock when its process ends,
however it ends (SIGKILL included), so a killed run never blocks its resume; the file itself stays. The lock
is re-entrant within a process: the command line takes it before it looks at the folder, and
:func:`~agilerl_selfsft.training.loop.finetune_llm_selfsft` takes it again for the run itself, so the Python
entry point follows the same rule. (With several processes only the main one takes it.)

**The rules** (:func:`run_folder`, the same for ``agilerl-selfsft train`` and ``finetune_llm_selfsft``): a
folder that holds a run is refused unless the run is resumed or overwritten; a resume of a folder that does
not exist (a typo) is refused; an overwrite deletes the old run only once the lock is ours; and a run that
fails or is interrupted before it completed an iteration (no ``checkpoints/latest``) leaves nothing behind.

**Ours.** A run folder holds ``checkpoints/iteration_NNNN`` folders that each carry a manifest, the
``samples/iteration_NNNN.jsonl`` files, and the other entries of :data:`RUN_ENTRIES` (``config.json``, a run
config, when ``agilerl-selfsft train`` wrote it). :func:`check_ours` refuses a folder that holds anything
else, naming those entries; :func:`clear_run` deletes exactly what a run wrote.
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
RUN_ENTRIES = ("config.json", "task_files.json", "metrics.jsonl", "checkpoints", "samples", "tensorboard",
               "reward_curve.png", LOCK_FILE)
_CHECKPOINT_ENTRY = re.compile(r"\.?iteration_\d{4,}(\.tmp)?|\.?latest(\.tmp)?")
_SAMPLES_ENTRY = re.compile(r"iteration_\d{4,}\.jsonl(\.tmp)?")

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


@contextmanager
def run_folder(run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """The run directory of one run, under its lock (:func:`run_lock`), by the rules of the module docstring.

    The folder is checked before the lock is taken (a refused folder is left as it is) and again after; with
    ``overwrite`` the old run is then deleted. When the block raises (Ctrl-C included) and the run completed
    no iteration, what it wrote is deleted (by the outermost block only: the command line's holds the
    loop's).

    :param run_dir: the run directory
    :param resume: the run continues the one in ``run_dir``, defaults to False
    :param overwrite: the run replaces the one in ``run_dir``, defaults to False
    :raises SelfSFTError: for a folder the rules refuse, naming the problem
    """
    run_dir = Path(run_dir)
    check_run_folder(run_dir, resume, overwrite)
    with _held_guard:
        outer = os.path.realpath(run_dir) not in _held
    created = next((p for p in reversed([run_dir, *run_dir.parents]) if not p.exists()), None)  # the top new folder
    try:
        with run_lock(run_dir):
            check_run_folder(run_dir, resume, overwrite)  # it may have changed before the lock was ours
            if overwrite and holds_run(run_dir):
                clear_run(run_dir)
            try:
                yield run_dir
            except BaseException:
                if outer and not (run_dir / "checkpoints" / "latest").exists():
                    _delete_entries(run_dir)  # no iteration completed: nothing is kept (run_lock removes a new folder)
                raise
    except BaseException:
        if outer and created is not None and created != run_dir:  # and the new folders above it, if left empty
            for folder in [run_dir.parent, *run_dir.parent.parents]:
                if not folder.is_dir() or os.listdir(folder):
                    break
                folder.rmdir()
                if folder == created:
                    break
        raise


def check_run_folder(run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse (read only) what :func:`run_folder` refuses: a run without ``resume`` / ``overwrite``, a resume of a
    folder that does not exist, both flags, or (with ``overwrite``) a folder that is not wholly a run of ours."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise SelfSFTError("resume and overwrite exclude each other")
    if resume and not run_dir.exists():
        raise SelfSFTError(f"cannot resume {run_dir}: it does not exist; check the path, or start a new run there "
                           "without resume")
    if not holds_run(run_dir):
        return
    if not (resume or overwrite):
        raise SelfSFTError(f"output dir {run_dir} holds another run; resume it (--resume, resume=True) or replace it "
                           "(--overwrite, overwrite=True)")
    if overwrite:
        check_ours(run_dir)  # names what is not ours; nothing is deleted


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
    for folder, ours in (("samples", _SAMPLES_ENTRY), ("tensorboard", None)):
        entry = run_dir / folder
        if entry.is_symlink() or (entry.exists() and not entry.is_dir()):
            foreign.append(f"{folder} (not a folder)")
        elif entry.is_dir() and ours is not None:
            foreign += [f"{folder}/{n}" for n in sorted(os.listdir(entry)) if not ours.fullmatch(n)]
    return foreign


def check_ours(run_dir: str | Path) -> None:
    """Refuse (for ``--overwrite``) a folder that is not wholly a run of ours; nothing is touched.

    :raises SelfSFTError: when ``run_dir`` holds no run, a ``config.json`` that is not a run config, or anything
        a run does not write (naming those entries)
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not set(os.listdir(run_dir)) - {LOCK_FILE}:
        return
    config = run_dir / "config.json"
    ours = _is_run_config(config) if config.exists() else (run_dir / "checkpoints").is_dir() or _is_run_metrics(run_dir)
    if not holds_run(run_dir) or not ours:
        raise SelfSFTError(f"overwrite deletes only a run of agilerl-selfsft, and {run_dir} holds no run (or a "
                           "config.json that is not a run's); delete the folder yourself or choose another output")
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
    _delete_entries(run_dir)


def _delete_entries(run_dir: Path) -> None:
    """Delete the entries of :data:`RUN_ENTRIES` in ``run_dir`` but the lock file."""
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


def _is_run_metrics(run_dir: Path) -> bool:
    """Whether ``run_dir/metrics.jsonl`` is a run's: its first row has an ``iteration`` and ``wall_seconds``."""
    try:
        with open(run_dir / "metrics.jsonl") as fh:
            first = json.loads(fh.readline() or "{}")
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and {"iteration", "wall_seconds"} <= set(first)
