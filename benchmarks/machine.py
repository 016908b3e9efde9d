"""Machine and environment facts a benchmark records next to its timings (shared by the benchmark scripts)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

import agilerl_selfsft
from agilerl_selfsft.precision import cpu_flags, cpu_model  # noqa: F401 (re-exported to the benchmarks)


def nproc() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_load() -> dict[str, Any]:
    """Load average and CPU pressure (PSI) now: other processes competing for the CPUs make timings noisy."""
    load: dict[str, Any] = {"loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()[1:]
        load["cpu_pressure_some"] = {k: float(v) for k, v in (f.split("=") for f in some) if k != "total"}
    except (OSError, IndexError, ValueError):
        load["cpu_pressure_some"] = None
    return load


def version(package: str) -> str:
    """An installed package's version, or ``"not installed"``."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


#: environment variables that change how torch's CPU threads run. OMP_WAIT_POLICY=PASSIVE (which the tests set, so
#: that two processes sharing the cores do not spin against each other) puts the threads to sleep between parallel
#: regions; on a 2-core AVX2 EPYC (``wait_policy.py``, ``results/wait_policy.md``) a training pass took 1.28-1.54x
#: and sampling ran at 0.78x the speed it has unset. ``make demo`` leaves it unset (libgomp: spin, then sleep)
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND", "OMP_PLACES", "KMP_BLOCKTIME",
              "MKL_NUM_THREADS")


def thread_env() -> dict[str, str]:
    """The :data:`THREAD_ENV` variables this process was started with (those that are set)."""
    return {k: os.environ[k] for k in THREAD_ENV if k in os.environ}


def machine_info(threads: int) -> dict[str, Any]:
    """Platform, CPU, library versions and torch threads (``threads``: the thread count the run asked for)."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "nproc": nproc(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "peft": version("peft"),
        "agilerl": version("agilerl"),
        "agilerl_selfsft": agilerl_selfsft.__version__,
        "torch_threads": torch.get_num_threads(),
        "requested_threads": threads,
        "thread_env": thread_env(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # bf16 may run 150x slower than fp32 on one CPU and 7x faster on another: measured, never assumed
        "matmul_gflops": {"float32": round(matmul_gflops(1.0), 1),
                          "bfloat16": round(matmul_gflops(1.0, size=512, dtype=torch.bfloat16), 1)},
    }


def command_line() -> str:
    """The command line this process was started with, shell-quoted, after the :data:`THREAD_ENV` variables it was
    started with (``OMP_WAIT_POLICY=PASSIVE .venv/bin/python ...``), so that the command reproduces the run."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in thread_env().items()), shlex.join(argv)])


def fmt_load(load: dict[str, Any]) -> str:
    """A ``machine_load()`` result's load averages as ``"1.00, 0.50, 0.25"``."""
    avg = load.get("loadavg_1_5_15")
    return ", ".join(f"{x:.2f}" for x in avg) if avg else "unknown"


def fmt_env(env: dict[str, str]) -> str:
    """A :func:`thread_env` result as ``"OMP_NUM_THREADS=2, OMP_WAIT_POLICY unset"``."""
    told = [f"{k}={v}" for k, v in env.items()]
    return ", ".join(told + ([] if "OMP_WAIT_POLICY" in env else ["OMP_WAIT_POLICY unset"]))


def matmul_gflops(seconds: float = 2.0, size: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """The machine's measured dense matmul rate in GFLOP/s (``size``² matrices of ``dtype``, default fp32, on the
    default device).

    This is the roof the FLOP-based utilisation figures (2·N per generated token, 6·N per trained token) are
    measured against: on CPU it is what torch's BLAS achieves with the current thread count, not a datasheet peak.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def peak_rss_mib() -> float:
    """Peak resident memory of this process, in MiB: since :func:`reset_peak_rss` where Linux allows resetting it
    (``VmHWM``), else since the start (``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux ``/proc/self/clear_refs``); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def environment_markdown(result: dict[str, Any]) -> list[str]:
    """The "Machine" and "Command" sections of a results Markdown file, as lines.

    ``result`` holds ``machine`` (``machine_info()``), ``machine_load`` (``{"before": ..., "after": ...}`` from
    ``machine_load()``), ``date`` and ``command`` (``command_line()``).
    """
    m, load = result["machine"], result["machine_load"]
    return [
        "## Machine",
        "",
        f"- platform: {m['platform']} (Python {m['python']})",
        f"- CPU: {m['cpu_model']}; nproc {m['nproc']} (os.cpu_count {m['cpu_count']}); flags "
        f"{', '.join(m.get('cpu_flags', [])) or 'none of those checked'}",
        *([f"- matmul at {m['torch_threads']} thread(s): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in
                                                                       m["matmul_gflops"].items())]
          if m.get("matmul_gflops") else []),
        f"- torch {m['torch']}, threads {m['torch_threads']}; transformers {m['transformers']}, peft {m['peft']}, "
        f"agilerl {m['agilerl']}, agilerl_selfsft {m['agilerl_selfsft']}",
        f"- CUDA: {m['cuda'] or 'none'}",
        *([f"- thread settings: {fmt_env(m['thread_env'])}"] if "thread_env" in m else []),
        f"- load average (1, 5, 15 min) before / after the runs: {fmt_load(load['before'])} / "
        f"{fmt_load(load['after'])}",
        f"- date: {result['date']}",
        "",
        "## Command",
        "",
        "```",
        result["command"],
        "```",
        "",
    ]
