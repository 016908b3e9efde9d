"""The one place that knows which AgileRL is installed: 2.10 (accelerate + DeepSpeed) or 2.58 (FSDP2, torchrun).

Everything else in the package calls these functions and never tests the AgileRL version itself. What differs
(measured in ``docs/agilerl-2.58.md``):

- ``SFT(...)``: 2.58 dropped ``accelerator`` and ``reduce_memory_peak`` (:func:`sft_kwargs`).
- One backward pass: 2.10's ``_backward_pass(loss)`` clips and steps the optimizer on every call; 2.58's
  accumulates ``gradient_accumulation_steps`` calls, dividing each loss by that count. SelfSFT's bucketed
  ``learn`` wants 2.10's meaning (one optimizer step per micro-batch, loss unscaled) on both
  (:func:`backward_step`).
- Sharded weights: DeepSpeed ZeRO-3 on 2.10, FSDP on 2.58 (:func:`is_sharded`, :func:`gather_lm_head`); an
  engine that owns the backward exists only on 2.10 (:func:`engine_backward`).
- The PEFT model: behind the accelerator on 2.10 (``_get_unwrapped_actor``), ``agent.actor`` on 2.58
  (:func:`unwrapped_actor`).
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


def sft_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``SFT.__init__``'s keyword arguments for the installed AgileRL, from 2.10's set.

    On 2.58 ``reduce_memory_peak`` is dropped (it no longer exists) and so is ``accelerator``, which must be None
    there: processes come from ``torchrun``'s environment instead.

    :param kwargs: the arguments as 2.10 names them
    :type kwargs: dict[str, Any]
    :return: the arguments the installed ``SFT`` accepts
    :rtype: dict[str, Any]
    :raises SelfSFTError: for an accelerator on 2.58
    """
    if not AGILERL_258:
        return kwargs
    kwargs = dict(kwargs)
    if kwargs.pop("accelerator", None) is not None:
        raise SelfSFTError(f"agilerl {AGILERL_VERSION} takes no accelerator: launch with torchrun instead "
                           "(several processes) and pass fsdp_config=... to shard the model")
    kwargs.pop("reduce_memory_peak", None)
    return kwargs


def backward_step(agent: Any, loss: torch.Tensor) -> None:
    """Backpropagate ``loss``, clip, and step the optimizer once (2.10's ``_backward_pass`` on either version:
    on 2.58 with ``accumulation_steps=1``, so the loss is not divided and the step is not deferred).

    :param agent: an AgileRL LLM algorithm
    :type agent: SFT
    :param loss: the micro-batch's mean loss
    :type loss: torch.Tensor
    """
    if AGILERL_258:
        agent._backward_pass(loss, accumulation_steps=1)
    else:
        agent._backward_pass(loss)


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
