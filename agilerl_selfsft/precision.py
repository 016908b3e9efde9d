"""The policy's compute dtype: ``float32``, ``bfloat16``, or ``auto``, which measures the machine before it chooses.

CPUs differ by two orders of magnitude in bf16 matmul speed: an AMD EPYC without native bf16 ran a 512³ bf16
matmul at ~1 GFLOP/s against ~95 in fp32, while an Intel Xeon with AVX512-BF16 and AMX ran bf16 7.6× *faster*
than fp32. So ``auto`` does not guess from the CPU's name or flags:

- on CUDA it is bf16 where the GPU supports it (:func:`torch.cuda.is_bf16_supported`), else fp32;
- on a CPU it times a short fp32 and a short bf16 matmul (:func:`probe`, about a second) and takes bf16 only
  when bf16 ran at least :data:`BF16_MARGIN` times faster. The result is cached per machine (CPU model, flags,
  torch version and thread count) in ``cache_dir()/dtype_probe.json``, so later runs do not measure again.

``SELFSFT_DTYPE=float32`` (or ``bfloat16``) in the environment decides ``auto`` without a probe, e.g. to pin a
cluster's nodes to one choice. The choice and the numbers behind it are logged and saved in a run's
``config.json`` (``resolved.dtype``).

bf16 applies to the base weights: LoRA adapters stay fp32 (PEFT keeps adapter weights of a bf16 base in fp32),
so the trained parameters and the optimizer state are fp32, and the training loss is taken on fp32 logits.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from agilerl_selfsft.cache import cache_dir
from agilerl_selfsft.errors import SelfSFTError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BF16_MARGIN = 1.5  # bf16 must be this much faster than fp32 for ``auto`` to take it on a CPU
ENV_VAR = "SELFSFT_DTYPE"
_PROBE_FILE = "dtype_probe.json"
_memo: dict[str, dict[str, Any]] = {}


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str = "cpu") -> tuple[torch.dtype, dict[str, Any]]:
    """The dtype for ``name`` on ``device``, and why it was chosen.

    :param name: ``"auto"`` (or None), ``"float32"``, ``"bfloat16"``, or a torch dtype of those two
    :param device: the device the policy runs on
    :return: ``(dtype, record)``; ``record`` holds ``dtype`` (its name), ``asked`` and ``reason``, and for a CPU
        probe the measured ``matmul_gflops`` of each dtype, the ``cpu_model`` and whether it came from the cache
    :raises SelfSFTError: for any other name, or bf16 asked for on a CUDA device without bf16
    """
    device = torch.device(device)
    if isinstance(name, torch.dtype):
        name = {v: k for k, v in DTYPES.items()}.get(name, str(name))
    asked = "auto" if name is None else name
    if asked == "auto" and os.environ.get(ENV_VAR):
        asked_env = os.environ[ENV_VAR]
        if asked_env not in DTYPES:
            raise SelfSFTError(f"{ENV_VAR}={asked_env!r} is not a dtype; use {' or '.join(DTYPES)}")
        return DTYPES[asked_env], {"dtype": asked_env, "asked": "auto", "reason": f"{ENV_VAR}={asked_env}"}
    if asked not in (*DTYPES, "auto"):
        raise SelfSFTError(f"unknown dtype {asked!r}; use auto, float32 or bfloat16")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if asked != "auto":
        if asked == "bfloat16" and device.type == "cuda" and not cuda_bf16:
            raise SelfSFTError(f"dtype bfloat16 was asked for, but {torch.cuda.get_device_name(device)} has no bf16")
        return DTYPES[asked], {"dtype": asked, "asked": asked, "reason": "asked for"}
    if device.type == "cuda":
        chosen = "bfloat16" if cuda_bf16 else "float32"
        return DTYPES[chosen], {"dtype": chosen, "asked": "auto",
                                "reason": f"CUDA {'with' if cuda_bf16 else 'without'} bf16 support"}
    record = probe()
    fp32, bf16 = record["matmul_gflops"]["float32"], record["matmul_gflops"]["bfloat16"]
    chosen = "bfloat16" if bf16 >= BF16_MARGIN * fp32 else "float32"
    reason = (f"bf16 matmul {bf16:.1f} vs fp32 {fp32:.1f} GFLOP/s at {record['threads']} thread(s) "
              f"({'at least' if chosen == 'bfloat16' else 'under'} {BF16_MARGIN}x)")
    return DTYPES[chosen], {"dtype": chosen, "asked": "auto", "reason": reason, **record}


def machine_key() -> str:
    """What the probe's result depends on: CPU model, its vector/matrix flags, torch version, torch threads."""
    return json.dumps([cpu_model(), cpu_flags(), torch.__version__, torch.get_num_threads()])


def probe(cache: Path | None = None) -> dict[str, Any]:
    """fp32 and bf16 matmul rates of this CPU at the current thread count, from the cache when it has them.

    :param cache: the cache file, defaults to ``cache_dir()/dtype_probe.json``
    :return: ``matmul_gflops`` (``float32``, ``bfloat16``), ``cpu_model``, ``cpu_flags``, ``threads``,
        ``cached`` (whether it was read from the cache) and ``probe_seconds``
    """
    key = machine_key()
    if key in _memo:
        return {**_memo[key], "cached": True}
    cache = cache_dir() / _PROBE_FILE if cache is None else cache
    known = _read(cache)
    if key in known:
        _memo[key] = known[key]
        return {**known[key], "cached": True}
    start = time.perf_counter()
    rates = {name: round(matmul_gflops(dtype), 2) for name, dtype in DTYPES.items()}
    record = {"matmul_gflops": rates, "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
              "threads": torch.get_num_threads(), "probe_seconds": round(time.perf_counter() - start, 2)}
    _write(cache, {**_read(cache), key: record})
    _memo[key] = record
    return {**record, "cached": False}


def matmul_gflops(dtype: torch.dtype, size: int = 512, seconds: float = 0.25) -> float:
    """The CPU's rate on ``size``² matmuls of ``dtype`` in GFLOP/s: one warm-up, then repeats for ``seconds``
    (at least two)."""
    a, b = (torch.randn(size, size).to(dtype) for _ in range(2))
    a @ b
    runs, start = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def _read(cache: Path) -> dict[str, Any]:
    """The cache's records; an unreadable or malformed cache counts as empty (it is measured again)."""
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _write(cache: Path, known: dict[str, Any]) -> None:
    """Replace the cache atomically; a cache that cannot be written is skipped (the probe runs again next time)."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, prefix=f".{cache.name}-", delete=False) as f:
            json.dump(known, f, indent=2)
        os.replace(f.name, cache)
    except OSError:
        pass


def _cpu_info(field: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    return _cpu_info("model name") or platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The flags that decide fp32/bf16 speed (AVX2, AVX-512*, AMX*, FMA)."""
    return sorted(f for f in _cpu_info("flags").split() if f.startswith(("avx", "amx", "fma")))
