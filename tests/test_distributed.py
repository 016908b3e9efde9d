"""Data-parallel self-training: two CPU processes (gloo) under ``accelerate launch`` with DeepSpeed ZeRO-2
(agilerl 2.10), or under ``torchrun`` with AgileRL's own data-parallel runtime (agilerl 2.58).

The launch runs ``tests/distributed_worker.py`` (two iterations of ``finetune_llm_selfsft`` on the tiny
model: sharded generation through the DeepSpeed-wrapped actor, gathered scoring, each rank learning on its
slice of each batch, sharded evaluation, checkpoints; then the same run stopped after one iteration and
resumed) and every rank writes what it ended with. Both ranks must agree on everything, training must have
moved the adapters, and the resumed run must equal the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agilerl_selfsft import load_adapters
from agilerl_selfsft.agilerl_adapter import AGILERL_258
from agilerl_selfsft.distributed import DataParallel, check_launch, shard_rows
from agilerl_selfsft.training.report import without_timings
from agilerl_selfsft.errors import SelfSFTError

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
sys.path.insert(0, str(WORKER.parent))
from distributed_worker import adapter_weights, digest  # noqa: E402


def launch(out: Path, *worker_args: str, num_processes: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    if AGILERL_258:  # torchrun's environment; AgileRL builds the process group (gloo without CUDA)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_processes),
               str(WORKER), str(out), *worker_args]
        return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--use_deepspeed", "--zero_stage", "2",  # what a GPU launch passes (the worker may bring its own plugin)
        "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "0",  # a free port
        str(WORKER), str(out), *worker_args,
    ]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_two_processes_agree_on_everything(tmp_path, make_agent):
    proc = launch(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["world"] == 2
        if AGILERL_258:
            assert (r["backend"], r["runtime"], r["actor_type"]) == ("gloo", "DPRuntime", "PeftModelForCausalLM")
        else:
            assert r["distributed_type"] == "DistributedType.DEEPSPEED"
            assert r["zero_stage"] == 2
            assert r["actor_type"] == "DeepSpeedEngine"
    zero, one = ranks
    # the same adapters: at the start, at the end and in the saved checkpoint
    assert zero["initial_digest"] == one["initial_digest"]
    assert zero["final_digest"] == one["final_digest"]
    assert zero["final_digest"] != zero["initial_digest"], "training did not change the adapters"
    assert zero["checkpoint_digest"] == zero["final_digest"] == one["checkpoint_digest"]
    # the same metrics (computed on each rank from gathered samples; timings are the slowest rank's)
    assert zero["history"] == one["history"]
    assert [row["iteration"] for row in zero["history"]] == [0, 1, 2]
    assert zero["buffer"] == one["buffer"]
    for row in zero["history"][1:]:
        # 5 prompts sharded 3 + 2, K = 2, 8 new tokens each (the tiny model never stops early): all of them
        assert row["gen_tokens"] == 5 * 2 * 8
        if row["buffer"]:
            # batches of 2 samples per process: ceil(buffer / 4) steps per epoch
            assert row["learn_steps"] == -(-int(row["buffer"]) // 4)
            assert row["loss"] is not None
    # held-out: 3 prompts sharded 2 + 1, 2 samples + 1 greedy each, all gathered
    assert all(row["eval_tokens"] == 3 * 3 * 8 for row in zero["history"])
    # written once, by the main process
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == zero["history"]
    latest = tmp_path / "run" / "checkpoints" / "latest"
    assert json.loads((latest / "selfsft.json").read_text())["iteration"] == 2
    assert json.loads((latest / "run_state.json").read_text())["iteration"] == 2
    if not AGILERL_258:  # each rank's ZeRO optimizer shard (2.58: the main rank writes the whole checkpoint)
        assert sorted(p.name for p in (latest / "save_checkpoint").glob("zero_pp_rank_*_optim_states.pt")) == [
            "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    # the adapters of that checkpoint load into a single-process agent on the same base (seed 0)
    single = make_agent(lr=1e-2)
    load_adapters(single, latest)
    assert digest(adapter_weights(single)) == zero["final_digest"]
    # stopped after iteration 1 and resumed from its checkpoint (adapters, each rank's ZeRO optimizer shard,
    # environment): the same adapters and metrics as without the stop
    assert zero["resumed_digest"] == one["resumed_digest"] == zero["final_digest"]
    assert zero["resumed_history"] == one["resumed_history"]
    assert untimed(zero["resumed_history"]) == untimed(zero["history"])


@pytest.mark.agilerl210
def test_deepspeed_settings_from_the_launcher(tmp_path):
    """``make_accelerator()`` under ``accelerate launch --use_deepspeed --zero_stage 2``: the documented recipe."""
    proc = launch(tmp_path, "--from-launcher")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    zero, one = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in range(2)]
    for r in (zero, one):
        assert (r["world"], r["zero_stage"], r["gradient_accumulation_steps"]) == (2, 2, 1)
    assert zero["final_digest"] == one["final_digest"] != zero["initial_digest"]
    assert zero["history"] == one["history"]


def untimed(history):
    return [{k: v for k, v in without_timings(row).items() if k != "population"} for row in history]


# ---- the sharding arithmetic, without processes ----

class FakeAccelerator:
    def __init__(self, rank, world):
        self.process_index, self.num_processes = rank, world


@pytest.mark.parametrize("n", [0, 1, 2, 5, 8])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_prompt_shards_cover_everything_once_in_order(n, world):
    parts = [list(range(n))[DataParallel(FakeAccelerator(r, world)).shard(n)] for r in range(world)]
    assert [i for part in parts for i in part] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("rows", [[7], [3, 1], [4, 0, 2], [5, 6, 7, 8]])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_batch_slices_are_equal_sized_and_cover_the_batch(rows, world):
    slices = [shard_rows(rows, world, r) for r in range(world)]
    assert len({len(s) for s in slices}) == 1  # the same number of optimizer steps on every rank
    assert sorted(set(i for s in slices for i in s)) == sorted(rows)
    assert sum(map(len, slices)) == len(rows) + (-len(rows)) % world  # padding only up to a multiple of world


@pytest.mark.agilerl210  # accelerators (2.58 has none: its launches are torchrun's process group)
def test_unsupported_setups_are_refused_before_any_work(monkeypatch):
    two = FakeAccelerator(0, 2)
    monkeypatch.setenv("WORLD_SIZE", "2")

    def agent(accelerator, **kw):
        return type("Agent", (), {"accelerator": accelerator, "zero_stage": 2, "generation_engine": "hf", **kw})()

    assert check_launch([agent(None)], None).world == 1
    assert check_launch([agent(two)], two).world == 2
    with pytest.raises(SelfSFTError, match="built with the accelerator"):
        check_launch([agent(None)], two)
    with pytest.raises(SelfSFTError, match=r"sharded weights \(DeepSpeed ZeRO-3, FSDP\) are not supported"):
        check_launch([agent(two, zero_stage=3)], two)
    with pytest.raises(SelfSFTError, match="populations are not supported"):
        check_launch([agent(two), agent(two)], two)
    with pytest.raises(SelfSFTError, match="the vllm generation engine is not supported with several processes"):
        check_launch([agent(two, generation_engine="vllm")], two)
    # accelerate on CPU without gloo: every process believes it is alone
    one_of_two = FakeAccelerator(0, 1)
    with pytest.raises(SelfSFTError, match="launcher started 2 processes but the accelerator counts 1"):
        check_launch([agent(one_of_two)], one_of_two)
    monkeypatch.delenv("WORLD_SIZE")
    assert check_launch([agent(one_of_two)], one_of_two).world == 1
