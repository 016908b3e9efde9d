"""Restart from the base: fresh actor adapters and optimizer state before an iteration's training (ReST-EM, STaR).

ReST-EM (Singh et al. 2023) and STaR (Zelikman et al. 2022) fine-tune each iteration from the base model, on
everything selected so far, instead of continuing from the last iteration's weights: errors a fine-tune made
are not compounded. :func:`restart_from_base` does that for a :class:`~agilerl_selfsft.algorithm.selfsft.SelfSFT`
agent: its ``actor`` LoRA adapter is initialised again as PEFT initialises one (B = 0: the policy *is* the base
model again, A drawn anew from torch's generator) and the optimizer forgets its moments and step counts. The
frozen reference adapter and the hyperparameters (a mutated lr included) are kept.

Assumed: LoRA initialised the default way (``init_lora_weights`` True or ``"gaussian"``), no DeepSpeed or
sharded weights (their optimizer holds master copies of the weights), no learning-rate schedule.
"""

from __future__ import annotations

from typing import Any

from peft.tuners.lora import LoraLayer

from agilerl_selfsft.agilerl_adapter import is_sharded, unwrapped_actor
from agilerl_selfsft.errors import SelfSFTError

ADAPTER = "actor"


def check_restartable(agent: Any) -> None:
    """Refuse, before any work, an agent :func:`restart_from_base` cannot restart.

    :param agent: a SelfSFT agent
    :type agent: SelfSFT
    :raises SelfSFTError: under DeepSpeed or sharded weights, with a learning-rate schedule, or for an adapter
        initialised another way than PEFT's default or ``"gaussian"``
    """
    if getattr(agent, "accelerator", None) is not None or is_sharded(agent):
        raise SelfSFTError("restart_from_base is not supported with an accelerator (DeepSpeed) or sharded weights: "
                           "their optimizer keeps its own copy of the weights")
    if getattr(agent, "lr_scheduler", None) is not None:
        raise SelfSFTError("restart_from_base with a learning-rate schedule is not supported: the schedule would "
                           "go on where it was; drop cosine_lr_schedule_config")
    init = unwrapped_actor(agent).peft_config[ADAPTER].init_lora_weights
    if init not in (True, "gaussian"):
        raise SelfSFTError(f"restart_from_base re-initialises LoRA the default way; the actor adapter was "
                           f"initialised with init_lora_weights={init!r}")


def restart_from_base(agent: Any) -> int:
    """Re-initialise the agent's ``actor`` adapter and clear its optimizer state.

    :param agent: a SelfSFT agent
    :type agent: SelfSFT
    :return: the LoRA layers re-initialised
    :rtype: int
    :raises SelfSFTError: as :func:`check_restartable`
    """
    check_restartable(agent)
    actor = unwrapped_actor(agent)
    init = actor.peft_config[ADAPTER].init_lora_weights
    layers = [m for m in actor.modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A]
    for layer in layers:
        layer.reset_lora_parameters(ADAPTER, init)
    agent.optimizer.optimizer.state.clear()  # Adam's moments and step counts: a fresh start
    agent._weights_changed()  # engines that cache merged weights sync again
    return len(layers)
