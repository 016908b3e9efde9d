"""dtype auto: the probe measures this CPU, caches its numbers per machine, and the choice follows them."""

from __future__ import annotations

import json

import pytest
import torch

from agilerl_selfsft import precision
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.precision import machine_key, probe, resolve_dtype


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty probe cache of its own, no in-process memo, and SELFSFT_DTYPE unset (the suite pins it)."""
    monkeypatch.setenv("SELFSFT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SELFSFT_DTYPE", raising=False)
    monkeypatch.setattr(precision, "_memo", {})
    return tmp_path / "dtype_probe.json"


def test_the_probe_measures_once_and_later_runs_read_its_numbers(cache):
    first = probe()
    assert not first["cached"] and first["threads"] == torch.get_num_threads()
    assert first["matmul_gflops"]["float32"] > 0 and first["matmul_gflops"]["bfloat16"] > 0
    saved = json.loads(cache.read_text())
    assert list(saved) == [machine_key()] and saved[machine_key()]["matmul_gflops"] == first["matmul_gflops"]
    precision._memo.clear()  # a new process: read from the file, not measured again
    again = probe()
    assert again["cached"] and again["matmul_gflops"] == first["matmul_gflops"]


@pytest.mark.parametrize(("bf16", "fp32", "chosen"), [(1548.0, 203.0, torch.bfloat16), (1.3, 94.5, torch.float32),
                                                      (140.0, 100.0, torch.float32)])
def test_auto_on_a_cpu_takes_bf16_only_where_the_probe_found_it_clearly_faster(cache, bf16, fp32, chosen):
    # the measured rates of three machines (AMX Xeon, EPYC without bf16, a small bf16 edge) as the cache holds them
    cache.write_text(json.dumps({machine_key(): {"matmul_gflops": {"float32": fp32, "bfloat16": bf16},
                                                 "cpu_model": "test", "cpu_flags": [], "threads": 2}}))
    dtype, why = resolve_dtype("auto", "cpu")
    assert dtype == chosen and why["cached"] and why["matmul_gflops"] == {"float32": fp32, "bfloat16": bf16}
    assert f"bf16 matmul {bf16:.1f} vs fp32 {fp32:.1f} GFLOP/s" in why["reason"]


def test_auto_on_this_cpu_follows_its_own_measurement(cache):
    dtype, why = resolve_dtype(None, "cpu")
    rates = why["matmul_gflops"]
    assert dtype == (torch.bfloat16 if rates["bfloat16"] >= precision.BF16_MARGIN * rates["float32"] else torch.float32)
    assert why["cpu_model"] == precision.cpu_model()


def test_a_corrupt_cache_is_measured_again_and_rewritten(cache):
    cache.write_text("{not json")
    assert not probe()["cached"]
    assert machine_key() in json.loads(cache.read_text())


def test_a_named_dtype_is_taken_as_asked_and_the_environment_decides_auto(cache, monkeypatch):
    assert resolve_dtype("bfloat16", "cpu")[0] == torch.bfloat16
    assert resolve_dtype(torch.float32, "cpu")[0] == torch.float32
    monkeypatch.setenv("SELFSFT_DTYPE", "bfloat16")
    dtype, why = resolve_dtype("auto", "cpu")
    assert dtype == torch.bfloat16 and why["reason"] == "SELFSFT_DTYPE=bfloat16" and not cache.exists()  # no probe


@pytest.mark.parametrize(("name", "env", "message"), [
    ("float16", None, "unknown dtype 'float16'; use auto, float32 or bfloat16"),
    ("auto", "fp8", "SELFSFT_DTYPE='fp8' is not a dtype; use float32 or bfloat16"),
])
def test_a_bad_dtype_is_one_line(cache, monkeypatch, name, env, message):
    if env:
        monkeypatch.setenv("SELFSFT_DTYPE", env)
    with pytest.raises(SelfSFTError, match=f"^{message}$"):
        resolve_dtype(name, "cpu")
