"""Chain into AgileRL: a SelfSFT checkpoint as the starting point of another LLM algorithm (DPO, GRPO, SFT, …).

AgileRL 2.10.0's own ``load_checkpoint`` overwrites the downstream agent's ``algo``, ``lr``, ``beta``,
``temperature``, ``batch_size``, metrics and optimizer with the upstream ones, makes the reference the
upstream *reference* rather than its actor, and leaves the reference adapter active. :func:`load_into`
loads adapters only: both the downstream actor and reference become the SelfSFT actor (the policy to
improve, and the anchor for DPO's and GRPO's KL terms), and everything else stays the downstream agent's.
The preference pairs a run collects for DPO are :mod:`agilerl_selfsft.export.pairs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.training.checkpoints import verify_checkpoint


def load_into(agent: Any, checkpoint_path: str | Path) -> dict[str, Any]:
    """Load a SelfSFT checkpoint's actor into any AgileRL LLM agent, as its actor and its reference.

    The agent keeps its own ``algo``, ``beta``, ``lr``, ``temperature``, ``batch_size`` and metrics, gets a
    fresh optimizer, and is left with the actor adapter active, ready for ``learn``. Only safetensors
    adapters are read (nothing is unpickled).

    :param agent: an AgileRL LLM algorithm built on the same base model with the same LoRA shape
    :param checkpoint_path: a SelfSFT checkpoint folder, e.g. ``RUN/checkpoints/latest``
    :return: the checkpoint's manifest
    :raises SelfSFTError: for a damaged checkpoint, another base model or another LoRA shape (naming the
        fields that differ), or an agent without a separate reference adapter
    """
    if "reference" not in getattr(agent, "selected_adapters", ()):
        raise SelfSFTError(
            f"{type(agent).__name__} has no reference adapter to receive the SelfSFT actor; "
            "build it with use_separate_reference_adapter=True"
        )
    manifest = verify_checkpoint(checkpoint_path, agent)
    agent._load_model_checkpoint(str(checkpoint_path), overwrite_reference_adapter=True)
    agent.use_adapter("actor")
    agent.reinit_optimizers()  # moments of another run's objective would only mislead the new one
    return manifest
