"""Data-parallel self-training across the processes of an accelerate + DeepSpeed launch.

The semantics (every rank ends each iteration with the same adapters, buffer and metrics):

- **Prompts are sharded, samples are gathered.** Every rank draws the same prompts (the environment's random
  state is the same everywhere), generates and scores only its contiguous share of them, and then all
  scored samples are gathered onto every rank, in prompt order. Selection and the training buffer are
  therefore identical on all ranks. Held-out evaluation is sharded and gathered the same way.
- **Each rank trains on its slice of each batch.** A training batch holds the agent's ``batch_size`` (its
  ``batch_size_per_process`` × processes) samples; rank ``r`` trains on the ``r``-th slice and DeepSpeed
  averages the gradients, so the adapters stay equal. The last batch of a pass is padded (with its own first
  samples, as PyTorch's ``DistributedSampler`` does) so every rank makes the same number of optimizer steps.
- Losses are averaged over ranks, token counts summed, timings are the slowest rank's; the run's
  ``metrics.jsonl`` and checkpoint bookkeeping are written by the main process only (the DeepSpeed part of
  a checkpoint is written by every rank into the same folder: the run directory must be shared).

Without an accelerator (or with one process) every helper here is a no-op. :func:`make_accelerator` builds
the DeepSpeed ``Accelerator`` the agents need, on CPU (gloo) or GPUs; :func:`check_launch` checks a run's agents
against it. A leaf: the stages use these helpers (generation shards prompts and gathers samples in
:func:`agilerl_selfsft.generation.collect.sample_scored`, the environment slices batches with :func:`shard_rows`),
never the other way round.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from typing import TYPE_CHECKING, Any

from agilerl_selfsft import agilerl_adapter
from agilerl_selfsft.agilerl_adapter import is_sharded
from agilerl_selfsft.errors import SelfSFTError

if TYPE_CHECKING:
    from accelerate import Accelerator

# Generation seeds of rank r are offset by r × this, so ranks never share a random stream.
RANK_SEED_STRIDE = 1_000_003


class DataParallel:
    """Rank, world size and the few collectives the loop needs: of the accelerator (agilerl 2.10), or of the
    ``torchrun`` process group AgileRL starts (agilerl 2.58, ``accelerator`` None)."""

    def __init__(self, accelerator: Accelerator | None = None) -> None:
        self.accelerator = accelerator
        self.world, self.rank = agilerl_adapter.world_and_rank(accelerator)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def rank_seed(self, seed: int) -> int:
        """``seed`` for this rank: unchanged on the main process, offset on the others."""
        return seed + self.rank * RANK_SEED_STRIDE

    def barrier(self) -> None:
        if self.enabled:
            agilerl_adapter.barrier(self.accelerator)

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (the first ``n % world`` ranks get one more)."""
        if not self.enabled:
            return slice(0, n)
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's ``items``, concatenated in rank order, on every rank."""
        if not self.enabled:
            return list(items)
        return agilerl_adapter.gather_objects(self.accelerator, items)

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj``, on every rank."""
        if not self.enabled:
            return obj
        return agilerl_adapter.broadcast_object(self.accelerator, obj)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (the same float on every rank)."""
        if not self.enabled:
            return value
        values = self.gather([value])
        return sum(values) / len(values)


# What make_accelerator uses when neither it nor the launcher is given a DeepSpeed config.
ZERO2_CONFIG: dict[str, Any] = {
    "zero_optimization": {"stage": 2},
    "train_micro_batch_size_per_gpu": "auto",  # AgileRL sets it: batch_size / processes / accumulation
    "gradient_accumulation_steps": 1,
}


def make_accelerator(ds_config: dict[str, Any] | None = None, **kwargs: Any) -> Accelerator:
    """An ``Accelerator`` with DeepSpeed, as AgileRL's LLM algorithms require, for CPU or GPU processes.

    :param ds_config: a DeepSpeed config (dict); defaults to None: the launcher's DeepSpeed settings
        (``accelerate launch --use_deepspeed ...`` or a config file), else :data:`ZERO2_CONFIG`
    :param kwargs: more ``Accelerator`` arguments
    :return: the accelerator; without CUDA its processes talk over gloo (accelerate would otherwise count
        one process per launch on CPU), and a ``gradient_accumulation_steps`` left at ``"auto"`` is set to
        the accelerator's (AgileRL needs a number)
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    handlers = list(kwargs.pop("kwargs_handlers", None) or [])
    if not torch.cuda.is_available() and not any(isinstance(h, InitProcessGroupKwargs) for h in handlers):
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    if ds_config is None and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        ds_config = ZERO2_CONFIG
    if ds_config is not None:
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=copy.deepcopy(ds_config))
    accelerator = Accelerator(kwargs_handlers=handlers, **kwargs)
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    if config.get("gradient_accumulation_steps") == "auto":
        config["gradient_accumulation_steps"] = accelerator.gradient_accumulation_steps
    return accelerator


def check_launch(pop: list[Any], accelerator: Accelerator | None) -> DataParallel:
    """The :class:`DataParallel` of a run, after checking that its agents and launch can run together."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator is not None and accelerator.num_processes != launched:
        raise SelfSFTError(
            f"the launcher started {launched} processes but the accelerator counts {accelerator.num_processes}: "
            "on CPU build it with make_accelerator() (or pass InitProcessGroupKwargs(backend='gloo'))"
        )
    for agent in pop:
        if agent.accelerator is not accelerator:
            raise SelfSFTError(
                "every agent must be built with the accelerator passed to finetune_llm_selfsft "
                "(SelfSFT(..., accelerator=accelerator))"
            )
    if accelerator is not None and len(pop) > 1:
        # accelerate wires only the first DeepSpeed engine it prepares into Accelerator.backward
        # (deepspeed_engine_wrapped): every other agent's loss would go through that engine and fail.
        raise SelfSFTError(
            "populations are not supported with an accelerator: accelerate sends every backward pass to the "
            "first DeepSpeed engine it prepared, so only one agent could train; train one agent per launch"
        )
    dp = DataParallel(accelerator)
    if dp.enabled:
        if is_sharded(pop[0]):
            raise SelfSFTError(
                "sharded weights (DeepSpeed ZeRO-3, FSDP) are not supported with several processes: each process "
                "generates for its own prompts, which their collective forward passes do not allow; use ZeRO "
                "stage 0, 1 or 2 (agilerl 2.10) or no fsdp_config (agilerl 2.58)"
            )
        engines = {getattr(agent, "generation_engine", "hf") for agent in pop}
        if "vllm" in engines or ("auto" in engines and importlib.util.find_spec("vllm") is not None):
            raise SelfSFTError("the vllm generation engine is not supported with several processes yet: "
                               "use generation_engine='hf'")
    return dp


def shard_rows(rows: list[int], world: int, rank: int) -> list[int]:
    """Rank ``rank``'s slice of one global batch, padded with its first rows to a multiple of ``world``."""
    if world <= 1 or not rows:
        return rows
    padded = list(rows)
    while len(padded) % world:
        padded.append(rows[(len(padded) - len(rows)) % len(rows)])
    per = len(padded) // world
    return padded[rank * per : (rank + 1) * per]
