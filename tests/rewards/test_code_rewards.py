"""python_tests: code extraction, the tests column's forms, rewards and metrics, and hostile programs.

Every program runs in a real sandboxed subprocess (nothing mocked); each hostile one must score 0 (or end the
right way), leave the outside unchanged, and leave this process alive.
"""

from __future__ import annotations

import glob
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.rewards import code as code_reward
from agilerl_selfsft.rewards.code import extract_code, python_tests
from agilerl_selfsft.rewards.sandbox import isolation

T = 2.0  # seconds per program: hostile ones that loop end quickly
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(0, 0) == 0", "assert add(2, 2) == 4"]


def fence(code: str) -> str:
    """A completion with ``code`` in a python block, between some prose."""
    return f"Here is the function:\n```python\n{code}\n```\nIt adds the numbers."


def score_one(code: str, tests=ADD_TESTS, **kwargs):
    """The reward and outcome of one completion whose code is ``code``."""
    got = python_tests(["prompt"], [fence(code)], tests=[tests], timeout=kwargs.pop("timeout", T), **kwargs)
    (outcome,) = [name[len("code_"):] for name, count in got.metrics.items() if count == 1.0]
    return got[0], outcome


def sandbox_dirs() -> set[str]:
    """The sandbox directories now in the temp dir."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "selfsft-sandbox-*")))


@pytest.fixture
def outside():
    """Checks, after the test, that no sandbox directory is left behind."""
    before = sandbox_dirs()
    yield
    assert sandbox_dirs() <= before


# --- extraction and the tests column ---------------------------------------------------------------------


def test_extract_code_prefers_the_first_python_block():
    text = "x\n```\nplain = 1\n```\n```python\nfirst = 1\n```\n```python\nsecond = 2\n```"
    assert extract_code(text) == "first = 1"
    assert extract_code("```py\nshort = 1\n```") == "short = 1"
    assert extract_code("Sure:\n```\nplain = 1\n```\ndone") == "plain = 1"
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"  # no fence: the whole text
    assert extract_code("```python\ncut = 1\nmore = 2") == "cut = 1\nmore = 2"  # unclosed: to the end


def test_tests_of_each_form():
    asserts = ["assert f(1) == 1", "assert f(2) == 2"]
    assert code_reward.tests_of(asserts, None) == ("", asserts)
    humaneval = "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1) == 2\n"
    assert code_reward.tests_of(humaneval, "inc") == (humaneval, ["check(inc)"])
    with pytest.raises(SelfSFTError, match="entry_point"):
        code_reward.tests_of(humaneval, None)
    mixed = "import math\nassert f(4) == 2\nhelper = math.sqrt\nassert f(9) == helper(9)\n"
    setup, tests = code_reward.tests_of(mixed, None)
    assert setup == "import math\nhelper = math.sqrt" and tests == ["assert f(4) == 2", "assert f(9) == helper(9)"]
    for bad, match in ((["ok", 3], "list of strings"), (7, "list of strings"), ("assert (", "do not parse"),
                       ("x = 1", "no tests"), ([], "no tests")):
        with pytest.raises(SelfSFTError, match=match):
            code_reward.tests_of(bad, None)


def test_a_missing_tests_column_is_a_user_error():
    with pytest.raises(SelfSFTError, match="python_tests needs a 'tests' column"):
        python_tests(["p"], ["c"])
    with pytest.raises(SelfSFTError, match="2 rows of tests"):
        python_tests(["p"], ["c"], tests=[["assert True"], ["assert True"]])


# --- ordinary programs --------------------------------------------------------------------------------------


def test_correct_code_scores_one_and_half_wrong_scores_half():
    assert score_one("def add(a, b):\n    return a + b") == (1.0, "passed")
    assert score_one("def add(a, b):\n    return a + b if a >= 0 else 99") == (0.75, "assertion")
    assert score_one("def add(a, b):\n    return a * 2") == (0.5, "assertion")  # two of four asserts fail


def test_syntax_error():
    assert score_one("def add(a, b)\n    return a + b") == (0.0, "syntax_error")


def test_a_fenced_completion_is_extracted():
    completion = "I think this works.\n```python\ndef add(a, b):\n    return a + b\n```\nExplanation: ...```"
    assert list(python_tests(["p"], [completion], tests=[ADD_TESTS], timeout=T)) == [1.0]
    assert list(python_tests(["p"], ["Here it is: def add(a, b): return a + b"], tests=[ADD_TESTS], timeout=T)) == [0.0]


def test_humaneval_style_check_and_string_tests():
    check = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(-3) == 9\n"
    completions = [fence("def square(x):\n    return x * x"), fence("def square(x):\n    return 2 * x")]
    got = python_tests(["p", "p"], completions, tests=[check, check], entry_point=["square", "square"], timeout=T)
    assert list(got) == [1.0, 0.0]  # one test: check(square), which fails at its first wrong assert
    as_string = "from math import isclose\nassert isclose(half(1), 0.5)\nassert half(4) == 2\nassert half(0) == 1\n"
    assert list(python_tests(["p"], [fence("def half(x):\n    return x / 2")], tests=[as_string], timeout=T)) == [2 / 3]


def test_the_pool_scores_in_order_and_in_parallel():
    codes = [f"import time\ntime.sleep(0.5)\ndef add(a, b):\n    return a + b + {i % 3}" for i in range(8)]
    start = time.monotonic()
    got = python_tests(["p"] * 8, [fence(c) for c in codes], tests=[ADD_TESTS] * 8, timeout=T, workers=8)
    elapsed = time.monotonic() - start
    assert list(got) == [1.0, 0.0, 0.0] * 2 + [1.0, 0.0]
    assert elapsed < 8 * 0.5  # the sleeps overlapped
    assert got.metrics["code_passed"] == 3.0 and got.metrics["code_assertion"] == 5.0


def test_metrics_count_each_outcome():
    codes = ["def add(a, b):\n    return a + b", "def add(a, b):\n    return 3", "def add(a, b) return",
             "import sys\nsys.exit(0)", "b = bytearray(50 * 2**30)", "while True:\n    pass",
             "def add(a, b):\n    return a + b"]
    got = python_tests(["p"] * 7, [fence(c) for c in codes], tests=[ADD_TESTS] * 7, timeout=1.0, workers=4)
    assert list(got) == [1.0, 0.25, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert got.metrics == {"code_passed": 2.0, "code_syntax_error": 1.0, "code_timeout": 1.0,
                           "code_killed_memory": 1.0, "code_assertion": 1.0, "code_crashed": 1.0}
    assert python_tests([], [], tests=[]).metrics["code_passed"] == 0.0


# --- hostile programs ---------------------------------------------------------------------------------------


def test_infinite_loop_times_out(outside):
    start = time.monotonic()
    assert score_one("while True:\n    pass\ndef add(a, b):\n    return a + b") == (0.0, "timeout")
    assert time.monotonic() - start < T + 3


def test_fork_bomb_fails(outside):
    # The first fork fails: seccomp denies it, and RLIMIT_NPROC 0 does for a non-root user (root is exempt).
    assert isolation()["seccomp"] or os.getuid() != 0  # else a root fork bomb would run until the timeout
    code = "import os\nwhile True:\n    os.fork()\ndef add(a, b):\n    return a + b"
    assert score_one(code) == (0.0, "crashed")
    assert score_one("def add(a, b):\n    return a + b") == (1.0, "passed")  # this process is fine


def test_allocating_50_gb_is_killed_memory(outside):
    assert score_one("b = bytearray(50 * 2**30)\ndef add(a, b):\n    return a + b") == (0.0, "killed_memory")


def test_home_is_the_sandbox_and_the_real_home_is_untouched(outside):
    name = f"selfsft-probe-{uuid.uuid4().hex}"
    code = f"import os\nopen(os.path.expanduser('~/{name}'), 'w').write('x')\ndef add(a, b):\n    return a + b"
    tests = [f"assert os.path.exists('{name}')", "assert os.path.expanduser('~') == os.getcwd()", *ADD_TESTS]
    assert score_one(code, tests) == (1.0, "passed")  # it wrote to ~, which is the sandbox directory
    assert not (Path.home() / name).exists()
    real = f"open('{Path.home() / name}', 'w').write('x')\ndef add(a, b):\n    return a + b"
    assert score_one(real)[0] == 0.0
    assert (Path.home() / name).exists() == (not isolation()["landlock_filesystem"])
    (Path.home() / name).unlink(missing_ok=True)


def test_writing_tmp_is_denied(outside):
    target = Path(tempfile.gettempdir()) / f"selfsft-probe-{uuid.uuid4().hex}"
    assert score_one(f"open('{target}', 'w').write('x')\ndef add(a, b):\n    return a + b")[0] == 0.0
    assert target.exists() == (not isolation()["landlock_filesystem"])
    target.unlink(missing_ok=True)


def test_reading_the_run_directory_fails(outside, tmp_path):
    secret = tmp_path / "run" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("hunter2")
    code = f"SECRET = open('{secret}').read()\ndef add(a, b):\n    return a + b"
    reward, outcome = score_one(code, ["assert SECRET == 'hunter2'", *ADD_TESTS])
    if isolation()["landlock_filesystem"]:
        assert (reward, outcome) == (0.0, "crashed")
    else:  # no Landlock on this machine: the read works, and isolation() says so
        assert reward == 1.0
    assert secret.read_text() == "hunter2"


def test_killing_the_parent_only_kills_the_harness(outside):
    assert score_one("import os\nos.kill(os.getppid(), 9)\ndef add(a, b):\n    return a + b") == (0.0, "crashed")
    protections = isolation()
    assert protections["seccomp"] or protections["landlock_signal_scope"]  # else the next would kill this test
    assert score_one(f"import os\nos.kill({os.getpid()}, 9)\ndef add(a, b):\n    return a + b") == (0.0, "crashed")
    assert score_one("import os\nos.kill(-1, 9)\ndef add(a, b):\n    return a + b") == (0.0, "crashed")
    assert score_one("def add(a, b):\n    return a + b") == (1.0, "passed")  # still alive and working


def test_deleting_files_in_the_cwd_does_not_touch_ours(outside, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    code = ("import os, shutil\nfor name in os.listdir('.'):\n    shutil.rmtree(name, ignore_errors=True)\n"
            "    if os.path.exists(name): os.remove(name)\ndef add(a, b):\n    return a + b")
    assert score_one(code) == (1.0, "passed")  # its own (empty) cwd: nothing of ours is there
    assert keep.read_text() == "mine"
    assert score_one(f"import os\nos.remove('{keep}')\ndef add(a, b):\n    return a + b")[0] == 0.0
    assert keep.exists() == isolation()["landlock_filesystem"]


def test_a_socket_cannot_connect(outside):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    try:
        code = (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                "def add(a, b):\n    return a + b")
        assert score_one(code) == (0.0, "crashed")
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


def test_a_unix_socket_cannot_connect(outside, tmp_path):
    path = tmp_path / "s.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    try:
        code = f"import socket\nsocket.socket(socket.AF_UNIX).connect('{path}')\ndef add(a, b):\n    return a + b"
        reward, _ = score_one(code)
        listener.settimeout(0.2)
        if isolation()["seccomp"]:
            assert reward == 0.0
            with pytest.raises(TimeoutError):
                listener.accept()
        else:  # Landlock (up to ABI 7) does not cover connecting to a unix socket: only seccomp stops it
            assert reward == 1.0
    finally:
        listener.close()


def test_printing_a_gigabyte_returns_promptly(outside):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    loud = "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2**20)\ndef add(a, b):\n    return a + b"
    assert score_one(loud, [*ADD_TESTS, "assert False"], timeout=10.0) == (0.8, "assertion")
    assert score_one(loud, timeout=10.0) == (1.0, "passed")
    assert score_one("print('x' * 2**30)\ndef add(a, b):\n    return a + b", timeout=10.0)[0] == 0.0
    assert time.monotonic() - start < 20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: none of it came here


def test_exit_before_the_tests_scores_zero(outside):
    assert score_one("import sys\ndef add(a, b):\n    return a + b\nsys.exit(0)") == (0.0, "crashed")
    assert score_one("import os\ndef add(a, b):\n    return a + b\nos._exit(0)") == (0.0, "crashed")
