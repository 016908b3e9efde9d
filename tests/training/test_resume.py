"""Resume after a crash gives the same run as no crash: the process is SIGKILLed during generation, learning
and checkpoint writing, resumed with --resume, and compared with an uninterrupted run of the same seed."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agilerl_selfsft.training.report import read_metrics, without_timings

REWARD = '''
def even_length(prompts, completions, **kw):
    return [float(len(c) % 2 == 0) for c in completions]
'''
@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_factory, tokenizer) -> Path:
    root = tmp_path_factory.mktemp("resume")
    tiny_model_factory(0).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rows = [{"prompt": f"Question {i}?", "answer": str(i)} for i in range(6)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    (root / "lengthreward.py").write_text(REWARD)
    config = {
        "model": str(root / "model"), "task": {"train": "train.jsonl", "eval": "eval.jsonl"},
        "reward": "lengthreward:even_length", "iterations": 3, "prompts_per_iteration": 3, "num_generations": 2,
        "max_new_tokens": 4, "batch_size": 2, "sft_epochs": 2, "eval_samples": 2, "lr": 1e-3,
        "lora": {"r": 4, "alpha": 8}, "keep_checkpoints": 2,
        "selection": {"keep_truncated": True, "replay_capacity": 8, "replay_ratio": 1.0},
    }
    (root / "config.yaml").write_text(json.dumps(config))
    return root


def train(root: Path, out: str, *flags: str, crash_at: str | None = None, config: str = "config.yaml") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "2"}
    env.pop("SELFSFT_CRASH_AT", None)
    if crash_at:
        env["SELFSFT_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "agilerl_selfsft.cli", "train", "--config", config, "--output", out, *flags],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )


def comparable(run: Path) -> list[dict]:
    return [without_timings(r) for r in read_metrics(run)]


@pytest.fixture(scope="module")
def uninterrupted(setup) -> Path:
    proc = train(setup, "clean")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return setup / "clean"


@pytest.mark.parametrize("crash_at", ["generate:2", "learn:2", "checkpoint:2", "checkpoint:3"])
def test_killed_run_resumes_to_the_same_result(setup, uninterrupted, crash_at):
    out = f"crash-{crash_at.replace(':', '-')}"
    crashed = train(setup, out, crash_at=crash_at)
    assert crashed.returncode == -9  # SIGKILL: no cleanup ran
    latest = setup / out / "checkpoints" / "latest"
    if latest.exists():  # latest only ever names a complete checkpoint
        assert (latest / "actor" / "adapter_model.safetensors").is_file() and (latest / "run_state.json").is_file()
    assert not any(p.name.endswith(".tmp") for p in (setup / out / "checkpoints").iterdir() if p.is_dir()) or crash_at.startswith("checkpoint")

    refused = train(setup, out)  # a run is there: without --resume it is refused, not overwritten
    assert refused.returncode == 2 and f"output dir {out} holds another run; resume it (--resume" in refused.stderr

    resumed = train(setup, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming after iteration" in resumed.stderr

    assert comparable(setup / out) == comparable(uninterrupted)  # every iteration exactly once, same numbers
    for adapter in ("actor", "reference"):
        ours = load_file(setup / out / "checkpoints" / "latest" / adapter / "adapter_model.safetensors")
        theirs = load_file(uninterrupted / "checkpoints" / "latest" / adapter / "adapter_model.safetensors")
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    state = json.loads((setup / out / "checkpoints" / "latest" / "run_state.json").read_text())
    clean_state = json.loads((uninterrupted / "checkpoints" / "latest" / "run_state.json").read_text())
    assert state["env"]["replays"] == clean_state["env"]["replays"]  # no kept sample lost or duplicated
    assert sorted(p.name for p in (setup / out / "checkpoints").iterdir()) == ["iteration_0002", "iteration_0003", "latest"]


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(setup):
    first = train(setup, "diskfull")
    assert first.returncode == 0
    ckpts = setup / "diskfull" / "checkpoints"
    before = {p.name: p.stat().st_mtime for p in ckpts.iterdir()}

    # every write that takes a file past `limit` fails with EFBIG, as on a full disk: the metrics log still takes
    # its next row, the checkpoint's largest file does not fit
    limit = (setup / "diskfull" / "metrics.jsonl").stat().st_size + 4096
    largest = max(p.stat().st_size for p in (ckpts / "latest").resolve().rglob("*") if p.is_file())
    assert largest > limit

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    config = json.loads((setup / "config.yaml").read_text())
    (setup / "longer.yaml").write_text(json.dumps({**config, "iterations": 4}))
    env = {**os.environ, "PYTHONPATH": str(setup), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "agilerl_selfsft.cli", "train", "--config", "longer.yaml", "--output", "diskfull", "--resume"],
        cwd=setup, env=env, capture_output=True, text=True, timeout=600, preexec_fn=small_files,
    )
    assert proc.returncode == 2
    assert "could not write the checkpoint of iteration 4 (File too large); the previous checkpoint (iteration_0003) is intact" in proc.stderr
    assert {p.name: p.stat().st_mtime for p in ckpts.iterdir()} == before  # nothing touched, no temporaries
    from agilerl_selfsft.training.checkpoints import verify_checkpoint

    assert verify_checkpoint(ckpts / "latest")["iteration"] == 3


def test_sigterm_leaves_a_resumable_run(setup, uninterrupted):
    # a real SIGTERM, sent at iteration 2's generation by the process itself: a signal from this test process
    # raced the run (on a stalled machine the run had finished before the test read the line to signal at)
    stopped = train(setup, "sigterm", crash_at="generate:2:SIGTERM")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "interrupted: the run keeps its last complete iteration; continue it with --resume" in stopped.stderr
    from agilerl_selfsft.training.checkpoints import verify_checkpoint

    assert verify_checkpoint(setup / "sigterm" / "checkpoints" / "latest")["iteration"] == 1
    resumed = train(setup, "sigterm", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert comparable(setup / "sigterm") == comparable(uninterrupted)


def killed_and_resumed_equals_clean(setup: Path, name: str, config: dict, crash_at: str) -> None:
    """Run ``config`` clean into ``<name>-clean``, and killed at ``crash_at`` then resumed into ``<name>-crash``:
    the two runs' metrics must be the same."""
    (setup / f"{name}.yaml").write_text(json.dumps(config))
    clean = train(setup, f"{name}-clean", config=f"{name}.yaml")
    assert clean.returncode == 0, clean.stderr[-2000:]
    crashed = train(setup, f"{name}-crash", config=f"{name}.yaml", crash_at=crash_at)
    assert crashed.returncode == -9
    resumed = train(setup, f"{name}-crash", "--resume", config=f"{name}.yaml")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert comparable(setup / f"{name}-crash") == comparable(setup / f"{name}-clean")


def test_killed_population_run_resumes_to_the_same_result(setup):
    """Two agents evolving (tournament + lr/temperature/K mutations), killed while training in iteration 2."""
    config = json.loads((setup / "config.yaml").read_text())
    config.update(population=2, evolution={"tournament_size": 2, "no_mutation": 0.2, "rl_hp": 0.8, "mutate_elite": True,
                                           "hp": {"lr": [1e-4, 1e-2], "temperature": [0.5, 1.5], "num_generations": [1, 4]}})
    killed_and_resumed_equals_clean(setup, "pop", config, "learn:2")
    rows = read_metrics(setup / "pop-clean")
    # each member's hyperparameters, lineage and fitness are recorded per generation; mutations happened
    assert all(len(r["population"]) == 2 for r in rows)
    members = [m for r in rows[1:] for m in r["population"]]
    assert {"lr", "temperature", "num_generations", "parent", "mutation", "eval_reward"} <= set(members[0])
    assert {m["mutation"] for m in rows[-1]["population"]} & {"lr", "temperature", "num_generations"}
    latest = setup / "pop-crash" / "checkpoints" / "latest"
    assert sorted(p.name for p in (latest / "population").iterdir()) == sorted(f"agent_{m['index']}" for m in json.loads((latest / "run_state.json").read_text())["members"])


def test_killed_run_with_difficulty_sampling_and_restarts_resumes_to_the_same_result(setup):
    """The prompts' solve-rate history, the walk and the accumulated selections are part of the run state."""
    config = json.loads((setup / "config.yaml").read_text())
    config.update(sampling={"mastered_streak": 1, "unsolved_tries": 1, "unsolved_weight": 0.5, "max_draws": 2,
                            "extra_samples": 1}, restart_from_base=True,
                  selection={"strategy": "top_k", "top_k": 1, "threshold": 0.0, "prefer_shorter": True,
                             "keep_truncated": True})
    killed_and_resumed_equals_clean(setup, "hard", config, "learn:3")
    rows = read_metrics(setup / "hard-clean")[1:]
    assert all({"informative_prompts", "prompts_skipped_mastered", "prompts_unsolvable", "draws"} <= set(r) for r in rows)
    # restart_from_base learns everything selected so far: the buffer grows with the kept samples
    assert [r["buffer"] for r in rows] == [sum(x["kept"] for x in rows[: i + 1]) for i in range(len(rows))]
