"""Populations that fit in one model's memory: members share the frozen base, own their adapters.

AgileRL 2.10.0 gives every population member a full copy of the model (its ``clone`` rebuilds the network
from a state dict) and hands a clone its parent's optimizer tensors as they are. :class:`SharedBasePopulation`,
mixed into :class:`~agilerl_selfsft.algorithm.selfsft.SelfSFT`, changes exactly that: a clone is a copy of the PEFT
model whose frozen base weights *are* the parent's tensors, with its own LoRA adapters and its own copy of
the optimizer state. AgileRL's ``TournamentSelection`` and ``Mutations`` work on it unchanged.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from agilerl_selfsft.agilerl_adapter import is_sharded, unwrapped_actor
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.manifest import verify_checkpoint
from agilerl_selfsft.models import resolve_device

if TYPE_CHECKING:
    from accelerate import Accelerator


class SharedBasePopulation:
    """Mixin for an AgileRL ``LLMAlgorithm``: ``population`` and ``clone`` that share the frozen base.

    It relies on ``LLMAlgorithm``'s own attributes (``index``, ``accelerator``, ``optimizer``,
    ``lr_scheduler``, ``zero_stage``, ``quantization_config``) and on the two below.
    """

    #: private attributes a clone takes from its parent as they are: AgileRL's clone rebuilds an agent from
    #: its constructor arguments and public attributes only (the algorithm names its own, e.g. the tokenizer)
    _clone_keeps: tuple[str, ...] = ()
    #: on a clone, the index of the agent it was cloned from (lineage: whose replay memory it inherits)
    _cloned_from: int | None = None

    @classmethod
    def population(  # type: ignore[override]
        cls,
        size: int,
        accelerator: Accelerator | None = None,
        device: str | torch.device | None = "auto",
        resume_from_checkpoint: str | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """``size`` agents that share one frozen base model; each owns its LoRA adapters and optimizer.

        Agent 0 is built from ``kwargs`` (as the constructor takes them); agents 1.. are its clones, so all
        start from the same adapters and differ by their hyperparameters (mutations) and their samples.
        (AgileRL 2.10.0's ``LLMAlgorithm.population`` copies the whole model per agent and rejects the
        copies it passes to the constructor.)

        :param size: number of agents, at least 1
        :type size: int
        :param accelerator: accelerate ``Accelerator`` (DeepSpeed) of agent 0, defaults to None
        :type accelerator: Accelerator, optional
        :param device: ``auto`` (CUDA when there is a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``
            (ignored with an accelerator: each process uses its own), defaults to ``"auto"``
        :type device: str, optional
        :param resume_from_checkpoint: a SelfSFT checkpoint (one with ``selfsft.json``) loaded into agent 0
            before cloning, adapters and optimizer; it is verified against its manifest (files, base model,
            LoRA shape) before AgileRL unpickles its ``attributes.pt``, defaults to None
        :type resume_from_checkpoint: str, optional
        :return: the agents, with indices 0..size-1
        :rtype: list[SelfSFT]
        :raises SelfSFTError: for a size below 1, or a checkpoint that does not pass :func:`verify_checkpoint`
        """
        if not isinstance(size, int) or size < 1:
            raise SelfSFTError(f"a population needs at least 1 agent, got {size!r}")
        device = str(resolve_device(device))
        first = cls(index=0, accelerator=accelerator, device=device, **kwargs)
        if resume_from_checkpoint is not None:
            verify_checkpoint(resume_from_checkpoint, first)  # before attributes.pt is unpickled
            first.load_checkpoint(str(resume_from_checkpoint), load_optimizer=True)
            first.use_adapter("actor")
            first.index = 0
        return [first] + [first.clone(index=i) for i in range(1, size)]

    def clone(self, index: int | None = None, wrap: bool = True) -> Any:
        """AgileRL's clone (adapters, optimizer state, hyperparameters), sharing this agent's frozen base.

        The attributes :attr:`_clone_keeps` names are re-attached (they are not part of the copied state);
        :attr:`_cloned_from` records the parent.
        """
        clone = super().clone(index=index, wrap=wrap)
        for name in self._clone_keeps:
            setattr(clone, name, getattr(self, name))
        clone._cloned_from = self.index
        return clone

    def _clone_actor_network(self) -> Any:
        """The actor for a clone: a copy of the PEFT model whose frozen base weights *are* this agent's.

        Only the LoRA tensors (names containing ``lora_``, and any ``modules_to_save``) are copied.
        ZeRO-3 (partitioned weights), quantised bases and value heads fall back to AgileRL's full copy.
        """
        zero3, quantised = is_sharded(self), self.quantization_config is not None
        if zero3 or quantised or getattr(self, "use_value_head", False):
            return super()._clone_actor_network()
        actor = unwrapped_actor(self)
        shared = {id(p): p for name, p in actor.named_parameters() if _is_base_weight(name)}
        return copy.deepcopy(actor, memo=shared)

    def _restore_clone_optimizer_and_scheduler(self, clone: Any) -> None:
        """Give the clone a *copy* of this agent's optimizer state.

        AgileRL hands the parent's ``state_dict()`` to the clone's ``load_state_dict``, which keeps same-device
        tensors as they are: parent and clone (and every clone of one winner) would then step the same Adam
        moments and step counters. A deep copy makes each member's optimizer its own.
        """
        if self.accelerator is not None:
            return super()._restore_clone_optimizer_and_scheduler(clone)
        clone.optimizer.optimizer.load_state_dict(copy.deepcopy(self.optimizer.optimizer.state_dict()))
        if self.lr_scheduler is not None and clone.lr_scheduler is not None:
            clone.lr_scheduler.load_state_dict(copy.deepcopy(self.lr_scheduler.state_dict()))


def _is_base_weight(name: str) -> bool:
    """Whether a PEFT model's parameter belongs to the frozen base (not to a LoRA adapter or a trained copy)."""
    return "lora_" not in name and "modules_to_save" not in name


def check_population(pop: list[Any], tournament: Any, mutation: Any) -> None:
    """Reject, before any work, a population or evolution setup that AgileRL would fail on later."""
    if not pop:
        raise SelfSFTError("the population is empty: pass at least one SelfSFT agent")
    if len({a.index for a in pop}) != len(pop):
        raise SelfSFTError(f"agents must have distinct indices, got {[a.index for a in pop]}")
    if (tournament is None) != (mutation is None):
        raise SelfSFTError("evolution needs both tournament and mutation (or neither)")
    if tournament is None:
        return
    if not tournament.elitism:
        raise SelfSFTError("TournamentSelection(elitism=False) is not supported for LLM populations: use elitism=True")
    if tournament.population_size != len(pop):
        raise SelfSFTError(f"TournamentSelection has population_size={tournament.population_size} but the population "
                           f"has {len(pop)} agents")
    probabilities = {"architecture": mutation.architecture_mut, "parameters": mutation.parameters_mut,
                     "activation": mutation.activation_mut}
    bad = {name: p for name, p in probabilities.items() if p}
    if bad:
        settings = ", ".join(f"{k}=0 (got {v})" for k, v in bad.items())
        raise SelfSFTError(f"LLM agents only take rl_hp mutations: set {settings} in Mutations")
    if mutation.rl_hp_mut and not any(a.registry.hp_config for a in pop):
        raise SelfSFTError(
            "Mutations(rl_hp>0) needs an hp_config on the agents naming what to mutate (e.g. lr, sampling_temperature)"
        )
