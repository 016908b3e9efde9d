"""What a resumable run saves beside the agents' checkpoints, and how it is put back.

Each iteration's checkpoint folder holds, next to the elite's AgileRL checkpoint, ``run_state.json``: the
iteration, the environment's random state, prompt and static-data order and replay contents, each
member's fitness history and the torch random state; with a population, every member's own checkpoint
goes under ``population/agent_<i>/``. The folder is written whole and renamed into place (see
:mod:`agilerl_selfsft.checkpoints`), so weights and run state always belong to the same iteration.
Plain JSON: nothing here is unpickled.
"""

from __future__ import annotations

import base64
import json
import os
import signal
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.selection import Scored

STATE_FILE = "run_state.json"
FORMAT_VERSION = 2


def env_state(env: Any) -> dict[str, Any]:
    """The parts of a :class:`~agilerl_selfsft.env.SelfSFTGym` that change during a run."""
    return {
        "rng": env.rng.bit_generator.state,
        "prompt_order": [int(i) for i in env._prompt_order],
        "static_order": [int(i) for i in env._static_order],
        "replays": {str(member): [asdict(s) for s in buf.samples] for member, buf in env.replays.items()},
        "num_epochs": env.num_epochs,
    }


def restore_env(env: Any, state: dict[str, Any]) -> None:
    """Put back what :func:`env_state` saved."""
    env.rng.bit_generator.state = state["rng"]
    env._prompt_order = list(state["prompt_order"])
    env._static_order = list(state.get("static_order", []))  # absent in states written before static data
    env.replays = {}
    for member, samples in state["replays"].items():
        env.replay_for(int(member)).samples.extend(Scored(**s) for s in samples)
    env.num_epochs = state["num_epochs"]
    env.buffer, env._order, env._cursor = [], [], 0


def write_state(folder: Path, iteration: int, env: Any, pop: list[Any], mutation: Any | None = None) -> None:
    """Write ``run_state.json`` (and each member's checkpoint when there are several) into ``folder``.

    Called on every process of a multi-process run; only the main one writes ``run_state.json`` (the
    torch random state saved is its own: the loop reseeds every process at each iteration).
    """
    if len(pop) > 1:
        for agent in pop:
            agent.save_checkpoint(str(folder / "population" / f"agent_{agent.index}"))
    accelerator = getattr(pop[0], "accelerator", None)
    if accelerator is not None and not accelerator.is_main_process:
        return
    state = {
        "format_version": FORMAT_VERSION,
        "iteration": iteration,
        "env": env_state(env),
        "members": [
            {"index": a.index, "fitness": [float(f) for f in a.fitness], "parent": getattr(a, "_cloned_from", None),
             "mutation": getattr(a, "mut", None)}
            for a in pop
        ],
        "mutation_rng": mutation.rng.bit_generator.state if mutation is not None else None,
        "torch_rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy_rng": _numpy_global_state(),  # AgileRL's tournament and mutations draw from np.random
    }
    (folder / STATE_FILE).write_text(json.dumps(state))


def read_versioned_json(path: Path, version: int, what: str) -> dict[str, Any]:
    """A JSON file with a ``format_version``; a :class:`SelfSFTError` that starts with ``what`` otherwise."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SelfSFTError(f"{what}: {path.name} is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SelfSFTError(f"{what}: {path.name} is unreadable ({exc})") from None
    if data.get("format_version") != version:
        raise SelfSFTError(f"{what}: {path.name} has format {data.get('format_version')!r}; this version reads {version}")
    return data


def read_state(folder: Path) -> dict[str, Any]:
    """Read and check ``run_state.json`` of a checkpoint folder."""
    return read_versioned_json(folder / STATE_FILE, FORMAT_VERSION, f"cannot resume from {folder}")


def restore(folder: Path, env: Any, pop: list[Any], mutation: Any | None = None) -> int:
    """Load every member's adapters and optimizer, the environment and the torch random state.

    :return: the iteration the checkpoint completed
    """
    from agilerl_selfsft.checkpoints import verify_checkpoint  # (checkpoints imports this module)

    verify_checkpoint(folder, pop[0])  # before AgileRL unpickles attributes.pt: only files this run wrote
    state = read_state(folder)
    if len(state["members"]) != len(pop):
        raise SelfSFTError(f"cannot resume: the run has {len(state['members'])} agents, this config makes {len(pop)}")
    for agent, member in zip(pop, state["members"], strict=True):
        agent.index = member["index"]
        path = folder if len(pop) == 1 else folder / "population" / f"agent_{member['index']}"
        agent.load_checkpoint(str(path), load_optimizer=True)
        agent.use_adapter("actor")  # AgileRL leaves the last loaded adapter active
        agent.fitness = member["fitness"]
        agent._cloned_from, agent.mut = member["parent"], member["mutation"]
    restore_env(env, state["env"])
    if mutation is not None and state.get("mutation_rng") is not None:
        mutation.rng.bit_generator.state = state["mutation_rng"]
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch_rng"])), dtype=torch.uint8))
    name, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return int(state["iteration"])


def _numpy_global_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def crash_point(name: str, iteration: int) -> None:
    """Test hook: ``SELFSFT_CRASH_AT=<name>:<iteration>`` kills this process with SIGKILL right here.

    The resume tests use it to die at exact points (during generation, learning, checkpoint writing) the
    way a pre-empted machine would: no cleanup, no exception handlers.
    """
    if os.environ.get("SELFSFT_CRASH_AT") == f"{name}:{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)
