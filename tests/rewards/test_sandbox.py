"""run_program: real sandboxed subprocesses (nothing mocked), their verdicts, limits, and what they cannot reach."""

from __future__ import annotations

import ast
import glob
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.rewards import sandbox
from agilerl_selfsft.rewards.sandbox import PROTECTIONS, Verdict, isolation, run_program

T = 2.0  # seconds: small limits keep the suite fast


def leftovers() -> set[str]:
    """The sandbox directories now in the temp dir."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "selfsft-sandbox-*")))


def children_running() -> list[str]:
    """Processes still running the sandbox's child script."""
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if sandbox.CHILD_PATH.encode() in Path(cmdline).read_bytes():
                found.append(cmdline)
        except OSError:
            pass
    return found


def test_correct_code_passes_and_wrong_asserts_count():
    code = "def add(a, b):\n    return a + b\n"
    assert run_program(code, ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], timeout=T) == Verdict(2, 2, "passed")
    half = run_program(code, ["assert add(1, 2) == 3", "assert add(2, 2) == 5"], timeout=T)
    assert (half.passed, half.total, half.outcome, half.fraction) == (1, 2, "assertion", 0.5)


def test_syntax_errors_and_other_errors():
    assert run_program("def f(:\n  pass", ["assert True"], timeout=T) == Verdict(0, 1, "syntax_error")
    assert run_program("x = 1\0", ["assert True"], timeout=T).outcome == "syntax_error"  # a NUL byte
    error = run_program("def f():\n    return 1 / 0\n", ["assert True", "f()", "assert False"], timeout=T)
    assert error == Verdict(1, 3, "crashed")  # a test that raises, not asserts: crashed, passes still counted
    bad_test = run_program("x = 1", ["assert x == 1", "assert (", "assert x"], timeout=T)
    assert bad_test == Verdict(2, 3, "crashed")


def test_setup_runs_after_the_code_and_before_the_tests():
    verdict = run_program("def f(x):\n    return x * 2\n", ["assert g(3) == 7"], setup="def g(x):\n    return f(x) + 1",
                          timeout=T)
    assert verdict.outcome == "passed"


def test_exit_before_the_tests_is_a_crash_not_a_pass():
    assert run_program("import sys\nsys.exit(0)", ["assert True"], timeout=T) == Verdict(0, 1, "crashed")
    assert run_program("import os\nos._exit(0)", ["assert True"], timeout=T) == Verdict(0, 1, "crashed")
    # An exit during the tests: the ones before it count, the run is a crash (no "done").
    mid = run_program("import os", ["assert True", "os._exit(0)", "assert True"], timeout=T)
    assert mid == Verdict(1, 3, "crashed")
    raised = run_program("def f():\n    raise SystemExit(0)\n", ["assert True", "f()"], timeout=T)
    assert raised == Verdict(1, 2, "crashed")


def test_an_infinite_loop_times_out_promptly():
    start = time.monotonic()
    verdict = run_program("while True:\n    pass", ["assert True"], timeout=T)
    assert verdict == Verdict(0, 1, "timeout")
    assert time.monotonic() - start < T + 2
    assert not children_running()


def test_a_sleeping_program_is_killed_at_the_wall_clock_and_earlier_passes_count():
    start = time.monotonic()
    verdict = run_program("import time", ["assert True", "time.sleep(60)", "assert True"], timeout=1.0)
    assert verdict == Verdict(1, 3, "timeout")
    assert time.monotonic() - start < 3


def test_memory_limit():
    assert run_program("b = bytearray(50 * 2**30)", ["assert True"], timeout=T).outcome == "killed_memory"
    in_test = run_program("x = 1", ["assert x", "b = bytearray(2 * 2**30)"], timeout=T, memory_mb=256)
    assert in_test == Verdict(1, 2, "killed_memory")
    assert run_program("b = bytearray(100 * 2**20)", ["assert len(b)"], timeout=T, memory_mb=512).outcome == "passed"


def test_a_large_job_goes_through_the_pipes():
    code = "x = 1\n" * 200_000  # 1.2 MB of code: far more than a pipe buffer
    assert run_program(code, ["assert x == 1"] * 500, timeout=5.0) == Verdict(500, 500, "passed")


def test_the_environment_is_scrubbed_and_home_is_the_sandbox(monkeypatch):
    monkeypatch.setenv("SELFSFT_SECRET_TOKEN", "hunter2")
    verdict = run_program("import os", [
        "assert 'SELFSFT_SECRET_TOKEN' not in os.environ",
        "assert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'PYTHONDONTWRITEBYTECODE', 'PYTHONHASHSEED'}",
        "assert os.path.expanduser('~') == os.getcwd() == os.environ['TMPDIR']",
        "assert os.path.basename(os.getcwd()).startswith('selfsft-sandbox-')",
        "assert os.listdir('.') == []",
    ], timeout=T)
    assert verdict == Verdict(5, 5, "passed")


def test_nothing_written_survives_and_no_process_is_left():
    before = leftovers()
    code = ("import os\nos.makedirs('a/b/c')\nopen('a/b/c/f.txt', 'w').write('x')\nos.chmod('a/b', 0)\n"
            "os.mkfifo('pipe')\nos.symlink('/etc/passwd', 'link')\n")
    assert run_program(code, ["assert os.path.exists('pipe')"], timeout=T).outcome == "passed"
    assert leftovers() <= before
    assert not children_running()


def test_big_files_are_capped():
    verdict = run_program("", ["open('big', 'wb').write(b'x' * (32 << 20))"], timeout=T)
    assert verdict == Verdict(0, 1, "crashed")  # OSError EFBIG past the 16 MiB file size limit


def test_output_goes_nowhere():
    code = "import sys\nfor _ in range(256):\n    sys.stdout.write('x' * 2**20)\n    sys.stderr.write('y' * 2**20)\n"
    start = time.monotonic()
    assert run_program(code, ["print('z' * 10**6)"], timeout=5.0) == Verdict(1, 1, "passed")
    assert time.monotonic() - start < 5


def test_isolation_reports_each_protection():
    got = isolation()
    assert set(got) == set(PROTECTIONS) and all(isinstance(v, bool) for v in got.values())
    assert got == isolation()  # probed once, and a copy each time
    got["seccomp"] = not got["seccomp"]
    assert got != isolation()
    verdict = run_program("", ["assert True"], timeout=T)
    assert {k: verdict.isolation.get(k, False) for k in PROTECTIONS} == isolation()


def test_bad_limits_are_user_errors():
    for kwargs in ({"timeout": 0}, {"timeout": float("nan")}, {"memory_mb": 8}, {"memory_mb": 1.5}):
        with pytest.raises(SelfSFTError, match="python_tests"):
            run_program("", ["assert True"], **kwargs)


def test_many_threads_may_run_programs_at_once():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda i: run_program(f"x = {i}", [f"assert x == {i}", "assert x < 3"], timeout=T),
                            range(6)))
    assert [v.passed for v in got] == [2, 2, 2, 1, 1, 1]


def test_the_child_script_is_standalone_and_documented():
    source = Path(sandbox.CHILD_PATH).read_text()
    tree = ast.parse(source)
    assert ast.get_docstring(tree)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            assert ast.get_docstring(node), node.name
    assert len(source.splitlines()) <= 250
