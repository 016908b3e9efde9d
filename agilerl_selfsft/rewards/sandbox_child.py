"""The sandbox's child: run model-written code against tests, and print one JSON verdict line.

Run as ``python -I -S sandbox_child.py`` by :mod:`agilerl_selfsft.rewards.sandbox` (which documents the
protections), in a fresh empty cwd, with a JSON job on stdin (``code``, ``setup``, ``tests``, ``timeout``,
``memory_mb``, ``parent``); standard library only. It forks: the *grandchild* protects itself (fds 0-2 to
/dev/null, user + network namespace, no capabilities, ``no_new_privs``, Landlock, seccomp, rlimits; each one
the machine lacks is skipped and reported off) and runs the untrusted code, so a program that kills its parent
kills only this harness. The harness reads one word per test from a pipe (``pass``, ``assertion``,
``memory``, ``error``, then ``done``), kills the grandchild at the wall clock, and prints the verdict. A
program that forges those words (it can write to the pipe) is out of scope: the sandbox protects the machine
and the run, not the reward from a program that tampers with its own harness.
"""

import ctypes
import json
import math
import os
import resource
import select
import signal
import struct
import sys
import sysconfig
import time

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_CAP_AMBIENT = 1, 38, 22, 24, 47
CLONE_NEWUSER, CLONE_NEWNET, CLONE_THREAD = 0x10000000, 0x40000000, 0x00010000
LANDLOCK_SYSCALLS = (444, 445, 446)  # create_ruleset, add_rule, restrict_self (one number on every arch)
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR, FS_TRUNCATE = 1, 2, 4, 8, 1 << 14
FS_ALL_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}  # ABI 5+: 16 bits
NET_BIND_TCP, NET_CONNECT_TCP, SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1, 2, 1, 2
SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/etc")  # read and execute; /dev and /proc: read
FILE_SIZE, RESULT_CAP = 16 << 20, 1 << 16
ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050001, 0x00050026  # seccomp return values
# arch: (AUDIT_ARCH, no-new-process calls, signal calls checked against our pid, always-denied calls, clone, socket)
SYSCALLS = {
    "x86_64": (0xC000003E, (57, 58), (62, 200, 234, 129, 297), (101, 310, 311, 424, 425, 434, 438, 109, 112), 56, 41),
    "aarch64": (0xC00000B7, (), (129, 130, 131, 138, 240), (117, 270, 271, 424, 425, 434, 438, 154, 157), 220, 198),
}


def enter_namespaces(libc):
    """Enter a new user and network namespace, mapping our own uid/gid; True when the network is cut off."""
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        try:
            for path, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{path}", "w") as f:
                    f.write(text)
        except OSError:
            pass  # unmapped: the code runs as the overflow uid (and cannot create files); still no network
        return True
    return libc.unshare(CLONE_NEWNET) == 0  # without user namespaces: works for a privileged user only


def drop_capabilities(libc):
    """Drop every capability (bounding, ambient, effective, permitted, inheritable); True on success."""
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    return libc.capset((ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()) == 0  # version 3, self


def landlock(libc, cwd):
    """Restrict this process with Landlock: read-only system paths, read-write ``cwd``; the flags applied."""
    syscall = libc.syscall
    off = {"landlock_filesystem": False, "landlock_network": False, "landlock_signal_scope": False}
    abi = syscall(LANDLOCK_SYSCALLS[0], None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return off
    handled = FS_ALL_BY_ABI.get(abi, (1 << 16) - 1)
    attr = (ctypes.c_uint64 * 3)(handled, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                                 SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL if abi >= 6 else 0)
    ruleset = syscall(LANDLOCK_SYSCALLS[0], attr, ctypes.c_size_t(8 * (1 + (abi >= 4) + (abi >= 6))),
                      ctypes.c_uint32(0))
    if ruleset < 0:
        return off
    paths = sysconfig.get_paths()
    python = (sys.base_prefix, paths["stdlib"], paths["platstdlib"], os.path.dirname(os.path.realpath(sys.executable)))
    rules = {p: FS_EXECUTE | FS_READ_FILE | FS_READ_DIR for p in (*SYSTEM, *python)}
    rules.update({"/dev": FS_READ_FILE | FS_READ_DIR, "/proc": FS_READ_FILE | FS_READ_DIR, cwd: handled,
                  "/dev/null": FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE})
    try:
        for path, access in rules.items():
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a path this machine does not have
            if not os.path.isdir(path):
                access &= FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE
            rule = struct.pack("=Qi", access & handled, fd)  # landlock_path_beneath_attr (packed)
            syscall(LANDLOCK_SYSCALLS[1], ctypes.c_int(ruleset), ctypes.c_int(1), rule, ctypes.c_uint32(0))
            os.close(fd)
        if syscall(LANDLOCK_SYSCALLS[2], ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return off
    finally:
        os.close(ruleset)
    return {"landlock_filesystem": True, "landlock_network": abi >= 4, "landlock_signal_scope": abi >= 6}


def seccomp(libc, pid):
    """Install a seccomp filter: no new processes, signals to ``pid`` only, no unix sockets, ptrace, new session."""
    known = SYSCALLS.get(os.uname().machine)
    if known is None:
        return False
    arch, no_spawn, signals, denied, clone, sock = known

    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06  # BPF instructions: (code, jump if true, if false, k)
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, EPERM), (ld, 0, 0, 0)]  # a foreign arch: deny all
    if arch == 0xC000003E:
        prog += [(0x35, 0, 1, 0x40000000), (ret, 0, 0, EPERM)]  # x32 calls
    for nr in (*no_spawn, *denied):
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, EPERM)]
    prog += [(jeq, 0, 1, 435), (ret, 0, 0, ENOSYS)]  # clone3 (flags in memory): libc falls back to clone
    prog += [(jeq, 0, 4, clone), (ld, 0, 0, 16), (jset, 0, 1, CLONE_THREAD), (ret, 0, 0, ALLOW), (ret, 0, 0, EPERM)]
    prog += [(jeq, 0, 4, sock), (ld, 0, 0, 16), (jeq, 0, 1, 1), (ret, 0, 0, EPERM), (ret, 0, 0, ALLOW)]  # AF_UNIX
    for nr in signals:  # the first argument (the pid) must be ours
        prog += [(jeq, 0, 4, nr), (ld, 0, 0, 16), (jeq, 0, 1, pid), (ret, 0, 0, ALLOW), (ret, 0, 0, EPERM)]
    prog.append((ret, 0, 0, ALLOW))
    program = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in prog))
    fprog = (ctypes.c_uint64 * 2)(len(prog), ctypes.addressof(program))  # sock_fprog, little-endian
    return libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0) == 0


def set_limits(job):
    """CPU seconds, address space, file size, no new processes, no core files (capped at the hard limits)."""
    cpu = math.ceil(job["timeout"])
    for which, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_CORE, 0, 0),
                              (resource.RLIMIT_AS, job["memory_mb"] << 20, job["memory_mb"] << 20),
                              (resource.RLIMIT_FSIZE, FILE_SIZE, FILE_SIZE), (resource.RLIMIT_NPROC, 0, 0)):
        top = resource.getrlimit(which)[1]
        if top != resource.RLIM_INFINITY:
            soft, hard = min(soft, top), min(hard, top)
        resource.setrlimit(which, (soft, hard))


def untrusted(job, wfd):
    """Run the code, the setup and each test, writing one result word per test to ``wfd``; never returns."""

    def put(word):
        """Report one result word."""
        os.write(wfd, word.encode() + b"\n")

    try:
        code, setup = [compile(job[key], f"<{key}>", "exec") for key in ("code", "setup")]
    except (SyntaxError, ValueError):  # ValueError: a NUL byte
        put("syntax")
        os._exit(0)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)  # noqa: S102 -- this is the sandbox
        exec(setup, namespace)  # noqa: S102
    except BaseException as exc:  # noqa: BLE001 -- SystemExit before the tests is a crash, not a pass
        put("setup memory" if isinstance(exc, MemoryError) else "setup error")
        os._exit(0)
    for test in job["tests"]:
        try:
            exec(compile(test, "<test>", "exec"), namespace)  # noqa: S102
            put("pass")
        except BaseException as exc:  # noqa: BLE001
            put("assertion" if isinstance(exc, AssertionError) else "memory" if isinstance(exc, MemoryError)
                else "error")
            if not isinstance(exc, Exception):  # an exit during a test: no "done", a crash
                os._exit(0)
    put("done")
    os._exit(0)


def grandchild(job, wfd, harness):
    """Protect the machine, then run the untrusted code (:func:`untrusted`); never returns."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != harness:
        os._exit(1)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    isolation = {"network_namespace": enter_namespaces(libc), "capabilities_dropped": drop_capabilities(libc)}
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        os._exit(1)
    isolation.update(landlock(libc, os.getcwd()))
    isolation["seccomp"] = seccomp(libc, os.getpid())
    set_limits(job)
    os.write(wfd, b"iso " + json.dumps(isolation).encode() + b"\n")
    untrusted(job, wfd)


def collect(rfd, pid, timeout):
    """The result words ``pid`` writes to ``rfd`` until it closes it, and whether it hit the wall clock."""
    deadline, data, poller = time.monotonic() + timeout, b"", select.poll()
    poller.register(rfd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or len(data) > RESULT_CAP:
            os.kill(pid, signal.SIGKILL)
            return data.decode(errors="replace").splitlines(), left <= 0
        if poller.poll(left * 1000):
            chunk = os.read(rfd, 65536)
            if not chunk:
                return data.decode(errors="replace").splitlines(), False
            data += chunk


def judge(words, status, usage, timed_out, job):
    """The verdict (passed, total, outcome, isolation) from the result words and the grandchild's end."""
    total = len(job["tests"])
    results = [w for w in words if w in ("pass", "assertion", "memory", "error")][:total]
    isolation = next((json.loads(w[4:]) for w in words if w.startswith("iso ")), {})
    passed = results.count("pass")
    signalled, cpu = os.WIFSIGNALED(status), usage.ru_utime + usage.ru_stime
    sig = os.WTERMSIG(status) if signalled else 0
    if "syntax" in words:
        outcome, passed = "syntax_error", 0
    elif timed_out or sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= math.ceil(job["timeout"]) - 0.05):
        outcome = "timeout"
    elif "setup memory" in words or "memory" in results or (
            signalled and usage.ru_maxrss * 1024 >= (job["memory_mb"] << 20) // 2):
        outcome = "killed_memory"
    elif "done" in words and not signalled and len(results) == total and "error" not in results:
        outcome = "passed" if passed == total else "assertion"
    else:
        outcome = "crashed"
    if any(w.startswith("setup ") for w in words):
        passed = 0
    return {"passed": passed, "total": total, "outcome": outcome, "isolation": isolation}


def main():
    """Read the job, run it in a sandboxed grandchild, print the verdict as one JSON line."""
    job = json.loads(sys.stdin.buffer.read())
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != job.get("parent", os.getppid()):
        os._exit(1)  # the training process is already gone
    (rfd, wfd), harness = os.pipe(), os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        try:
            grandchild(job, wfd, harness)
        finally:
            os._exit(1)
    os.close(wfd)
    words, timed_out = collect(rfd, pid, job["timeout"])
    _, status, usage = os.wait4(pid, 0)
    print(json.dumps(judge(words, status, usage, timed_out, job)), flush=True)


if __name__ == "__main__":
    main()
