"""The one place that knows which AgileRL is installed: 2.10 (accelerate + DeepSpeed) or 2.58 (FSDP2, torchrun).

Everything else in the package calls these functions and never tests the AgileRL version itself. What differs
(measured in ``docs/agilerl-2.58.md``):

- ``SFT(...)``: 2.58 dropped ``accelerator`` and ``reduce_memory_peak`` (:func:`sft_kwargs`).
- One backward pass: 2.10's ``_backward_pass(loss)`` clips and steps the optimizer on every call; 2.58's
  accumulates ``gradient_accumulation_steps`` calls (mini-batch / micro-batch), dividing each loss by that
  count. SelfSFT's bucketed ``learn`` follows the installed release, as its ``SFT.learn`` does
  (:func:`backward_step`, :func:`accumulation_steps`), and a mutated batch size re-derives the split
  (:func:`follow_batch_size`).
- Sharded weights: DeepSpeed ZeRO-3 on 2.10, FSDP on 2.58 (:func:`is_sharded`, :func:`gather_lm_head`); an
  engine that owns the backward exists only on 2.10 (:func:`engine_backward`).
- The PEFT model: behind the accelerator on 2.10 (``_get_unwrapped_actor``), ``agent.actor`` on 2.58
  (:func:`unwrapped_actor`).
- The processes of a launch: an accelerate ``Accelerator`` on 2.10; on 2.58 the ``torch.distributed`` process
  group AgileRL starts from ``torchrun``'s environment (:func:`world_and_rank`, :func:`gather_objects`,
  :func:`broadcast_object`, :func:`barrier`).
- AgileRL's own SFT loop and its environment: ``finetune_llm_sft`` driving an ``SFTGym`` (``reset`` once, then
  ``step``) on 2.10; ``train_llm_dataset`` driving a ``DatasetEnv`` (every ``reset`` the next batch) on 2.58
  (:func:`sft_training_loop`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

import torch
from packaging.version import Version

from agilerl_selfsft.errors import SelfSFTError

#: the installed AgileRL's version
AGILERL_VERSION = Version(version("agilerl"))
#: True on the FSDP-era API (2.58); False on 2.10's accelerate + DeepSpeed API
AGILERL_258 = AGILERL_VERSION >= Version("2.58")
#: the releases this package is built and tested against
SUPPORTED = ("2.10", "2.58")

if f"{AGILERL_VERSION.major}.{AGILERL_VERSION.minor}" not in SUPPORTED:
    raise SelfSFTError(
        f"agilerl {AGILERL_VERSION} is not supported (2.10.x and 2.58.x are): "
        "pip install 'agilerl-selfsft[agl258]' (or [agl210]) installs one that is"
    )


def sft_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``SFT.__init__``'s keyword arguments for the installed AgileRL, from the union of both releases' sets.

    On 2.58 ``reduce_memory_peak`` is dropped (it no longer exists) and so is ``accelerator``, which must be None
    there: processes come from ``torchrun``'s environment instead. On 2.10 ``fsdp_config`` and
    ``moe_lora_recompute`` (2.58's) are dropped, and must be None.

    :param kwargs: the arguments
    :type kwargs: dict[str, Any]
    :return: the arguments the installed ``SFT`` accepts
    :rtype: dict[str, Any]
    :raises SelfSFTError: for an accelerator on 2.58, or an FSDP config on 2.10
    """
    kwargs = dict(kwargs)
    if not AGILERL_258:
        if kwargs.pop("fsdp_config", None) is not None:
            raise SelfSFTError(f"agilerl {AGILERL_VERSION} has no FSDP: shard with DeepSpeed (accelerator=...) "
                               "or install agilerl 2.58 (pip install 'agilerl-selfsft[agl258]')")
        kwargs.pop("moe_lora_recompute", None)
        return kwargs
    if kwargs.pop("accelerator", None) is not None:
        raise SelfSFTError(f"agilerl {AGILERL_VERSION} takes no accelerator: launch with torchrun instead "
                           "(several processes) and pass fsdp_config=... to shard the model")
    kwargs.pop("reduce_memory_peak", None)
    return kwargs


def backward_step(agent: Any, loss: torch.Tensor) -> None:
    """Backpropagate one micro-batch's ``loss`` the way the installed ``SFT.learn`` does: on 2.10 clip and step the
    optimizer at every call; on 2.58 divide by ``gradient_accumulation_steps`` and step (after the gradient sync
    and clipping) every that many calls, pending micro-batches carrying into the next ``learn``.

    :param agent: an AgileRL LLM algorithm
    :type agent: SFT
    :param loss: the micro-batch's mean loss
    :type loss: torch.Tensor
    """
    agent._backward_pass(loss)


def accumulation_steps(agent: Any) -> int:
    """Micro-batches per optimizer step in :func:`backward_step` (what a loss backpropagated directly, without
    it, must be divided by): ``gradient_accumulation_steps`` on 2.58; 1 on 2.10, whose non-DeepSpeed backward
    steps at every micro-batch (DeepSpeed's engine does its own accumulation).

    :param agent: an AgileRL LLM algorithm
    :type agent: SFT
    :rtype: int
    """
    return max(1, int(getattr(agent, "gradient_accumulation_steps", 1) or 1)) if AGILERL_258 else 1


def hold_loss(agent: Any, loss: torch.Tensor, held: torch.Tensor | None) -> torch.Tensor | None:
    """Check a micro-batch's loss for NaN/inf before the backward pass that steps the optimizer: on 2.58 once per
    optimizer step (AgileRL's ``_hold_loss_until_step``: the window's first non-finite loss is held until its
    last micro-batch), on 2.10 at every micro-batch (each one steps).

    :param agent: an AgileRL LLM algorithm
    :type agent: SFT
    :param loss: the micro-batch's loss, about to be backpropagated
    :type loss: torch.Tensor
    :param held: what the last call returned, or None
    :type held: torch.Tensor, optional
    :return: the loss still held (2.58, mid-window), else None
    :raises ValueError: for a non-finite loss at the check (AgileRL's error, on every rank)
    """
    if AGILERL_258:
        return agent._hold_loss_until_step(loss, held, accumulation_steps(agent))
    agent._raise_if_loss_not_finite_on_any_rank(loss)
    return None


def follow_batch_size(agent: Any) -> None:
    """After ``batch_size`` changed (a mutation): one micro-batch and one optimizer step per process's share
    of it (2.58 re-derives the share over the data-parallel ranks and the accumulation steps).

    :param agent: an AgileRL LLM algorithm without an explicit micro-batch size
    :type agent: SFT
    """
    if AGILERL_258:
        agent.configure_batch_size_per_process(agent.batch_size, None, None)
    else:
        agent.batch_size_per_process = agent.micro_batch_size_per_gpu = agent.mini_batch_size = agent.batch_size


def is_sharded(agent: Any) -> bool:
    """Whether the agent's weights are partitioned across processes (ZeRO-3 on 2.10, FSDP on 2.58).

    :param agent: an AgileRL LLM algorithm
    :type agent: SFT
    :rtype: bool
    """
    if AGILERL_258:
        runtime = getattr(agent, "shard_runtime", None)
        return bool(getattr(runtime, "is_sharded", False))
    return (getattr(agent, "zero_stage", None) or 0) >= 3


def engine_backward(agent: Any) -> bool:
    """Whether an engine (DeepSpeed, 2.10 only) owns the backward pass, so a micro-batch must be one backward.

    :param agent: an AgileRL LLM algorithm
    :type agent: SFT
    :rtype: bool
    """
    return not AGILERL_258 and bool(getattr(agent, "_uses_deepspeed", False))


@contextmanager
def gather_lm_head(agent: Any, lm_head: torch.nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """The full weight and bias of ``lm_head`` for the duration (gathered when the weights are sharded).

    :param agent: an AgileRL LLM algorithm
    :type agent: SFT
    :param lm_head: the output projection
    :type lm_head: torch.nn.Module
    :return: a context yielding ``(weight, bias)``
    """
    if AGILERL_258:
        with agent.shard_runtime.gather_layer(lm_head, agent.device) as (weight, bias):
            yield weight, bias
        return
    from agilerl.utils.llm_utils import gather_if_ds_param

    with gather_if_ds_param(lm_head.weight, lm_head.bias):
        yield lm_head.weight, lm_head.bias


def unwrapped_actor(agent: Any) -> torch.nn.Module:
    """The agent's PEFT model, outside any accelerator wrapper.

    :param agent: an AgileRL LLM algorithm
    :type agent: SFT
    :rtype: torch.nn.Module
    """
    unwrap = getattr(agent, "_get_unwrapped_actor", None)
    return unwrap() if unwrap is not None else agent.actor


def world_and_rank(accelerator: Any | None = None) -> tuple[int, int]:
    """The number of processes of the launch and this one's rank: the accelerator's on 2.10, the process
    group's on 2.58 (AgileRL starts it when the agent is built under ``torchrun``).

    :param accelerator: the agents' accelerator (2.10), defaults to None
    :type accelerator: accelerate.Accelerator, optional
    :rtype: tuple[int, int]
    """
    if accelerator is not None:
        return accelerator.num_processes, accelerator.process_index
    if AGILERL_258 and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def gather_objects(accelerator: Any | None, items: list[Any]) -> list[Any]:
    """Every rank's ``items``, concatenated in rank order, on every rank (call only with several processes).

    :param accelerator: the agents' accelerator (2.10), or None (2.58)
    :type accelerator: accelerate.Accelerator, optional
    :param items: this rank's picklable items
    :type items: list
    :rtype: list
    """
    if accelerator is not None:
        from accelerate.utils import gather_object

        return gather_object(list(items))
    from agilerl.distributed import gather_objects as gather

    return gather(list(items))


def broadcast_object(accelerator: Any | None, obj: Any) -> Any:
    """The main process's ``obj`` on every rank (call only with several processes).

    :param accelerator: the agents' accelerator (2.10), or None (2.58)
    :type accelerator: accelerate.Accelerator, optional
    :param obj: a picklable object
    :type obj: Any
    :rtype: Any
    """
    if accelerator is not None:
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]
    from agilerl.distributed import broadcast_object_list

    return broadcast_object_list([obj], src=0)[0]


def barrier(accelerator: Any | None) -> None:
    """Wait for every process of the launch (call only with several processes).

    :param accelerator: the agents' accelerator (2.10), or None (2.58)
    :type accelerator: accelerate.Accelerator, optional
    """
    if accelerator is not None:
        accelerator.wait_for_everyone()
    else:
        torch.distributed.barrier()


def sft_training_loop() -> Any:
    """AgileRL's own SFT training loop: ``finetune_llm_sft`` (2.10) or ``train_llm_dataset`` (2.58).

    :return: the function; both take the population first and the environment as ``env=``
    :rtype: Callable
    """
    if AGILERL_258:
        from agilerl.training.llm import train_llm_dataset

        return train_llm_dataset
    from agilerl.training.train_llm import finetune_llm_sft

    return finetune_llm_sft


def dataset_env(train: Any, test: Any, tokenizer: Any, objective: str = "sft", **kwargs: Any) -> Any:
    """AgileRL's environment over a fixed dataset: ``SFTGym`` / ``PreferenceGym`` (2.10) or
    ``DatasetEnv(objective=...)`` (2.58). Keyword arguments are the ones both take (``data_batch_size_per_gpu``,
    ``response_column`` for SFT, ``seed`` ...).

    :param train: the training rows (``prompt`` and ``response``, or ``prompt``/``chosen``/``rejected``)
    :type train: datasets.Dataset
    :param test: the held-out rows
    :type test: datasets.Dataset
    :param tokenizer: the model's tokenizer
    :type tokenizer: PreTrainedTokenizerBase
    :param objective: ``"sft"`` or ``"preference"`` (DPO pairs), defaults to ``"sft"``
    :type objective: str, optional
    :rtype: SFTGym | PreferenceGym | DatasetEnv
    """
    if objective not in ("sft", "preference"):
        raise SelfSFTError(f"objective must be 'sft' or 'preference', got {objective!r}")
    if AGILERL_258:
        from agilerl.llm_envs import DatasetEnv

        return DatasetEnv(train, test, tokenizer, objective=objective, **kwargs)
    from agilerl.llm_envs import PreferenceGym, SFTGym

    return (SFTGym if objective == "sft" else PreferenceGym)(train, test, tokenizer, **kwargs)


def next_batch(env: Any) -> dict[str, Any]:
    """The next batch of an AgileRL dataset environment (2.10: ``step()``, 2.58: ``reset()``).

    :param env: from :func:`dataset_env`, after its first ``reset()``
    :type env: SFTGym | PreferenceGym | DatasetEnv
    :rtype: dict
    """
    return env.reset() if AGILERL_258 else env.step()


class _NoPhases:
    """2.10 has no learn-phase timer: marks do nothing."""

    def mark(self, phase: str) -> None:
        """Charge the time since the last mark to ``phase`` (here: nothing)."""


def learn_phases(agent: Any) -> Any:
    """Open the timing window of one ``learn`` (2.58: AgileRL's phase timer, whose ``mark(phase)`` charges the time
    since the last mark to ``prepare``, ``forward``, ``backward`` ...; its backward pass marks its own phases).

    :param agent: an AgileRL LLM algorithm
    :type agent: SFT
    :return: an object with ``mark(phase)``
    """
    return agent._start_learn_phases() if AGILERL_258 else _NoPhases()


def learn_phase_seconds(agent: Any) -> dict[str, float]:
    """Close the window :func:`learn_phases` opened: 2.58's ``learn_phase_<phase>_s`` metrics (2.10: none).

    :param agent: an AgileRL LLM algorithm
    :type agent: SFT
    :rtype: dict[str, float]
    """
    return agent._learn_phase_seconds() if AGILERL_258 else {}
