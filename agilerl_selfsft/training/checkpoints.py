"""Versioned checkpoints of a run: ``checkpoints/iteration_NNNN/`` in AgileRL's layout, and ``latest``.

Each checkpoint is written into a hidden temporary folder and renamed into place, then ``latest`` (a
relative symlink) is switched to it atomically, so ``latest`` only ever points at a complete checkpoint.
Only the newest ``keep_last`` iterations are kept.

With several processes (an accelerator on the agent) every rank takes part in writing the checkpoint
(DeepSpeed writes each rank's optimizer shard into the same folder, so the run directory must be shared),
while the main process alone does the bookkeeping: the temporary folder, the manifest, the renames.

Every checkpoint carries ``selfsft.json`` (:mod:`agilerl_selfsft.manifest`): format version, iteration,
base model, LoRA shape and the SHA-256 of every file. :func:`verify_checkpoint` checks it before anything is
loaded, so a truncated, changed, extended or mismatched checkpoint is a clear error rather than a crash inside
a loader (or an unchecked file unpickled). A resume reads only ``checkpoints/latest`` that names an
``iteration_NNNN`` folder of the run itself (:func:`latest_checkpoint`).

**Run state.** A checkpoint of the loop also holds, next to the elite's AgileRL checkpoint,
``run_state.json`` (:func:`write_state`): the iteration, the environment's state
(:meth:`~agilerl_selfsft.env.gym.SelfSFTGym.state_dict`: random state, prompt and static-data order, replay
contents), each member's fitness history and lineage, and the torch and numpy random states; with a
population, every member's own checkpoint goes under ``population/agent_<i>/``. Both files are written into
the same temporary folder, so weights and run state always belong to the same iteration. :func:`restore`
puts it all back. Plain JSON: nothing of ours is unpickled.

One :data:`FORMAT_VERSION` covers the folder (manifest and run state). Manifests written before it was one
number say 1 and are read as they are: their layout is the same.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from agilerl.utils.utils import save_llm_checkpoint
from safetensors import SafetensorError

from agilerl_selfsft.distributed import DataParallel
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.manifest import FORMAT_VERSION, read_versioned_json, verify_checkpoint, write_manifest
from agilerl_selfsft.training.faults import crash_point

STATE_FILE = "run_state.json"
_ITERATION = re.compile(r"iteration_\d{4,}")


def save_iteration(
    agent: Any,
    run_dir: str | Path,
    iteration: int,
    keep_last: int = 3,
    info: dict | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Save ``agent`` as ``run_dir/checkpoints/iteration_NNNN`` and point ``latest`` at it.

    :param extra: writes more files into the (temporary) checkpoint folder before it is renamed into place
    :return: the checkpoint folder
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 (the checkpoint just written is kept), got {keep_last}")
    dp = DataParallel(getattr(agent, "accelerator", None))
    root = Path(run_dir) / "checkpoints"
    name = f"iteration_{iteration:04d}"
    final, tmp = root / name, root / f".{name}.tmp"
    if dp.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    dp.barrier()
    try:
        _write(agent, tmp, iteration, info, extra, dp)
    except (OSError, SafetensorError) as exc:  # disk full, quota, file-size limit…: the previous one is untouched
        shutil.rmtree(tmp, ignore_errors=True)
        previous = (root / "latest").resolve().name if (root / "latest").exists() else "none"
        # safetensors reports an I/O failure as "… I/O error: File too large (os error 27)"
        reason = getattr(exc, "strerror", None) or re.sub(r".*I/O error: (.+?) \(os error \d+\).*", r"\1", str(exc))
        raise SelfSFTError(
            f"could not write the checkpoint of iteration {iteration} ({reason}); "
            f"the previous checkpoint ({previous}) is intact"
        ) from None
    crash_point("checkpoint", iteration)
    if dp.is_main:
        _publish(root, name, tmp, final, keep_last)
    dp.barrier()  # no rank goes on (or reads ``latest``) before the checkpoint is in place
    return final


def _publish(root: Path, name: str, tmp: Path, final: Path, keep_last: int) -> None:
    """Rename the finished temporary folder into place, point ``latest`` at it, drop old iterations."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    link = root / ".latest.tmp"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(name, target_is_directory=True)
    os.replace(link, root / "latest")
    _prune(root, keep_last)


def _write(
    agent: Any, tmp: Path, iteration: int, info: dict | None, extra: Callable[[Path], None] | None, dp: DataParallel
) -> None:
    save_llm_checkpoint(agent, str(tmp))  # every rank (DeepSpeed's save is collective); ends with a barrier
    if extra is not None:
        extra(tmp)  # every rank too (a population's checkpoints are collective); it writes files on the main one
    dp.barrier()
    if dp.is_main:
        write_manifest(tmp, agent, iteration, info)


def _prune(root: Path, keep_last: int) -> None:
    versions = sorted(p for p in root.glob("iteration_*") if p.is_dir() and not p.is_symlink())
    for old in versions[: max(0, len(versions) - keep_last)]:
        shutil.rmtree(old)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``run_dir/checkpoints/latest`` names, or None when there is none.

    :raises SelfSFTError: when ``latest`` leads anywhere but to an ``iteration_NNNN`` folder of this run's
        ``checkpoints/`` (a resume loads only the run's own checkpoints)
    """
    root = Path(run_dir) / "checkpoints"
    latest = root / "latest"
    if not latest.is_symlink() and not latest.exists():
        return None
    target = latest.resolve()
    own = latest.is_symlink() and target.parent == root.resolve() and _ITERATION.fullmatch(target.name)
    if not own or target.is_symlink() or not target.is_dir():
        shown = os.readlink(latest) if latest.is_symlink() else "a folder, not a link"
        raise SelfSFTError(f"cannot resume from {run_dir}: checkpoints/latest leads to {shown}, "
                           "not to an iteration_NNNN folder of this run's checkpoints/")
    return target


def load_adapters(agent: Any, path: str | Path) -> dict[str, Any]:
    """Verify a checkpoint, then load its adapters into ``agent`` from safetensors only (no unpickling).

    AgileRL's public ``load_checkpoint`` also unpickles ``attributes.pt``; its adapter loader
    ``_load_model_checkpoint`` reads only ``adapter_model.safetensors`` and ``adapter_config.json``, which
    is all evaluation needs.
    """
    manifest = verify_checkpoint(path, agent)
    agent._load_model_checkpoint(str(path))
    agent.use_adapter("actor")
    return manifest


# ---- run state ----
def write_state(folder: Path, iteration: int, env: Any, pop: list[Any], mutation: Any | None = None) -> None:
    """Write ``run_state.json`` (and each member's checkpoint when there are several) into ``folder``.

    Called on every process of a multi-process run; only the main one writes ``run_state.json`` (the
    torch random state saved is its own: the loop reseeds every process at each iteration).
    """
    if len(pop) > 1:
        for agent in pop:
            agent.save_checkpoint(str(folder / "population" / f"agent_{agent.index}"))
    if not DataParallel(getattr(pop[0], "accelerator", None)).is_main:
        return
    state = {
        "format_version": FORMAT_VERSION,
        "iteration": iteration,
        "env": env.state_dict(),
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


def read_state(folder: Path) -> dict[str, Any]:
    """Read and check ``run_state.json`` of a checkpoint folder."""
    return read_versioned_json(folder / STATE_FILE, f"cannot resume from {folder}")


def restore(folder: Path, env: Any, pop: list[Any], mutation: Any | None = None) -> int:
    """Load every member's adapters and optimizer, the environment and the torch random state.

    :return: the iteration the checkpoint completed
    """
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
    env.load_state_dict(state["env"])
    if mutation is not None and state.get("mutation_rng") is not None:
        mutation.rng.bit_generator.state = state["mutation_rng"]
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch_rng"])), dtype=torch.uint8))
    name, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return int(state["iteration"])


def _numpy_global_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
