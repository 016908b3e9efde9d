"""Run untrusted (model-written) Python code against tests in a sandboxed subprocess: :func:`run_program`.

Each call makes a fresh directory (``selfsft-sandbox-*`` under the system temp dir, removed afterwards: nothing
the program writes survives) and starts ``python -I -S sandbox_child.py`` there with a scrubbed environment
(``HOME`` and ``TMPDIR`` are that directory) in a session of its own. The child script (standard library
only) forks a grandchild that runs the code, so a program that kills its parent kills only that harness. The
grandchild, before running anything untrusted:

- sends its stdin, stdout and stderr to /dev/null (a program printing a gigabyte costs nothing);
- enters a new user and network namespace: no network interface but a down loopback;
- drops every capability and sets ``no_new_privs``;
- restricts itself with Landlock: read and execute only under ``/usr``, ``/lib``, ``/lib64``, ``/bin``,
  ``/etc`` and Python's own directories, read ``/dev`` and ``/proc``, read and write under its directory;
  no TCP bind or connect (Landlock ABI 4); signals and abstract unix sockets scoped to the sandbox (ABI 6);
- installs a seccomp filter (x86_64, aarch64): no new processes (threads are allowed), signals only to
  itself, no unix sockets (Landlock does not cover connecting to a path-named one), no ptrace,
  ``process_vm_*``, pidfd, io_uring, ``setsid`` or ``setpgid``;
- sets rlimits: CPU seconds (``ceil(timeout)``), address space (``memory_mb``), 16 MiB per written file, no
  new processes (``RLIMIT_NPROC`` 0, which a root user is exempt from; hence the seccomp filter), no cores.

Every protection is best effort: one the machine lacks (an old kernel, user namespaces switched off) is
skipped, and the :class:`Verdict`'s ``isolation`` (and :func:`isolation`) says which were in force. The wall
clock is enforced twice: the harness kills the grandchild at ``timeout``, and this side kills the whole
process group at ``timeout`` + :data:`GRACE`.

What it does not protect: the sandbox protects the machine and the training run, not the reward from a
program that deliberately tampers with its own harness (it can write forged result lines to the pipe the
harness reads, or redefine builtins the test code uses). Reading the system directories (``/etc``, ``/proc``)
is not prevented either; nothing read can leave the sandbox other than through the pass/fail count. On a
machine with neither seccomp nor the Landlock signal scope, a program run by root can still fork without
limit and signal every process (``os.kill(-1, 9)``): check :func:`isolation` there.
"""

from __future__ import annotations

import functools
import json
import math
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agilerl_selfsft.errors import SelfSFTError

CHILD_PATH = str(Path(__file__).resolve().with_name("sandbox_child.py"))
OUTCOMES = ("passed", "syntax_error", "timeout", "killed_memory", "assertion", "crashed")
PROTECTIONS = ("network_namespace", "landlock_filesystem", "landlock_network", "landlock_signal_scope",
               "seccomp", "capabilities_dropped")
GRACE = 5.0  # seconds beyond ``timeout`` before this side kills the sandbox's process group
OUTPUT_CAP = 1 << 20  # bytes of the child's stdout read at most (its verdict is one short line)


@dataclass(frozen=True)
class Verdict:
    """How one program did on its tests.

    :param passed: the tests that passed (0 when the code did not compile or did not run to the tests)
    :param total: the tests there were
    :param outcome: one of :data:`OUTCOMES`: ``passed`` (all), ``syntax_error``, ``timeout`` (wall clock or CPU
        limit), ``killed_memory`` (the memory limit), ``assertion`` (some test's assert failed, no other
        error), ``crashed`` (any other error, an early exit, a killed harness)
    :param isolation: the protections that were in force (:data:`PROTECTIONS` → bool); empty when unknown
    """

    passed: int
    total: int
    outcome: str
    isolation: dict[str, bool] = field(default_factory=dict, compare=False)

    @property
    def fraction(self) -> float:
        """``passed / total`` (0.0 with no tests)."""
        return self.passed / self.total if self.total else 0.0


def _environment(home: str) -> dict[str, str]:
    """The child's whole environment: nothing of the training process's leaks in.

    :param home: the sandbox directory, which is also ``HOME`` and ``TMPDIR``
    """
    return {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}


def _force_remove(function, path: str, _exc_info) -> None:
    """``shutil.rmtree``'s error handler: make the parent directory writable and try once more.

    :param function: the removal that failed
    :param path: the path it failed on
    """
    try:
        parent = os.path.dirname(path)
        os.chmod(parent, os.stat(parent).st_mode | stat.S_IRWXU)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, stat.S_IRWXU)
            shutil.rmtree(path, ignore_errors=True)
        else:
            function(path)
    except OSError:
        pass


def _exchange(proc: subprocess.Popen, job: bytes, deadline: float) -> tuple[bytes, bool]:
    """Send the job, then read the child's stdout until it closes or ``deadline`` passes.

    :param proc: the child, with stdin and stdout pipes
    :param job: the JSON job
    :param deadline: the ``time.monotonic()`` by which the child must be done
    :return: what it printed (at most :data:`OUTPUT_CAP` bytes; empty when it printed more), and whether the
        deadline passed
    """
    try:
        proc.stdin.write(job)
        proc.stdin.close()
    except OSError:  # the child died before reading it all: its verdict (none) says so
        pass
    fd = proc.stdout.fileno()
    poller = select.poll()  # not select.select: a training process may hold more than 1024 fds
    poller.register(fd, select.POLLIN | select.POLLHUP)
    chunks, size = [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), True
        if not poller.poll(left * 1000):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks), False
        size += len(chunk)
        if size > OUTPUT_CAP:
            return b"", False
        chunks.append(chunk)


def _stop(proc: subprocess.Popen) -> None:
    """Kill the child's whole process group, then reap the child.

    The group is killed before the leader is reaped, so its id cannot yet belong to another process.

    :param proc: the child, started in a session (and process group) of its own
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None and not pipe.closed:
            pipe.close()


def _parse(output: bytes, timed_out: bool, total: int) -> Verdict:
    """The :class:`Verdict` of the child's last stdout line (``crashed`` when there is none, or it is bad).

    :param output: what the child printed
    :param timed_out: whether this side had to kill it at the wall clock
    :param total: the number of tests
    """
    if timed_out:
        return Verdict(0, total, "timeout")
    try:
        reply = json.loads(output.decode().strip().splitlines()[-1])
        passed, outcome = int(reply["passed"]), str(reply["outcome"])
        isolation = {k: bool(v) for k, v in dict(reply.get("isolation") or {}).items()}
    except (ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError):
        return Verdict(0, total, "crashed")
    if outcome not in OUTCOMES:
        return Verdict(0, total, "crashed", isolation)
    return Verdict(max(0, min(passed, total)), total, outcome, isolation)


def run_program(code: str, tests: Sequence[str], setup: str = "", timeout: float = 10.0,
                memory_mb: int = 1024) -> Verdict:
    """Run ``code``, then ``setup``, then each of ``tests`` in one namespace, in a sandboxed subprocess.

    Safe to call from many threads at once (each call is one subprocess; no ``preexec_fn``).

    :param code: the untrusted program (a completion's code)
    :param tests: Python statements run one by one after it (usually ``assert`` lines); a test passes when
        it runs without an exception
    :param setup: trusted code run after ``code`` and before the tests (helpers, imports), defaults to ""
    :param timeout: seconds (wall clock, and CPU) the whole program may take, defaults to 10.0
    :param memory_mb: the address space it may use in MiB, defaults to 1024
    :return: the :class:`Verdict`
    :raises SelfSFTError: for a bad ``timeout`` or ``memory_mb``, or when no subprocess can be started
    """
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise SelfSFTError(f"python_tests: timeout must be a positive number of seconds, got {timeout!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
        raise SelfSFTError(f"python_tests: memory_mb must be a whole number of MiB, at least 64, got {memory_mb!r}")
    tests = [str(t) for t in tests]
    job = json.dumps({"code": str(code), "setup": str(setup), "tests": tests, "timeout": float(timeout),
                      "memory_mb": memory_mb, "parent": os.getpid()}).encode()
    home = tempfile.mkdtemp(prefix="selfsft-sandbox-")
    proc = None
    try:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", CHILD_PATH], cwd=home, env=_environment(home),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                start_new_session=True, close_fds=True)
        except OSError as exc:
            raise SelfSFTError(f"python_tests: cannot start the sandbox ({exc})") from None
        output, timed_out = _exchange(proc, job, time.monotonic() + timeout + GRACE)
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(home, onerror=_force_remove)
    return _parse(output, timed_out, len(tests))


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[tuple[str, bool], ...]:
    """The protections a trivial program gets here (run once per process)."""
    verdict = run_program("", ["assert True"], timeout=5.0)
    return tuple((name, bool(verdict.isolation.get(name))) for name in PROTECTIONS)


def isolation() -> dict[str, bool]:
    """Which protections this machine gives a sandboxed program (found by running one, once per process).

    ``network_namespace``: no network (a new user and network namespace); ``landlock_filesystem``: reads
    limited to system and Python directories, writes to the sandbox directory; ``landlock_network``: no TCP
    bind or connect; ``landlock_signal_scope``: no signals (and no abstract unix sockets) outside the sandbox;
    ``seccomp``: no new processes, no signals but to itself, no unix sockets, no ptrace;
    ``capabilities_dropped``: none kept.

    :return: each of :data:`PROTECTIONS` → whether it is in force
    """
    return dict(_probe())
