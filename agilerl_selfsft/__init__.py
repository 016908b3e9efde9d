"""agilerl-selfsft: self-improvement by supervised fine-tuning for AgileRL.

The loop: prompts → generate K completions → score with reward functions → select the best → refill the
SFT environment → learn (response-only cross-entropy) → evaluate on held-out prompts → evolve → repeat.
Each stage has a package: ``data`` (prompts in), ``generation`` (generate and score), ``rewards`` (the
reward functions, by their YAML names), ``env`` (selection, buffer, batches), ``algorithm`` (``SelfSFT``: learn), ``training`` (the loop, evaluation,
checkpoints), ``export`` (models out); ``samples`` holds the records passed between them. ARCHITECTURE.md
has the map.
"""

import importlib
from typing import TYPE_CHECKING, Any

from agilerl_selfsft import _compat  # noqa: F401  (before any agilerl.algorithms import: it applies the fixes)
from agilerl_selfsft.version import __version__

#: each public name -> the module it comes from, imported on first use (PEP 562): ``import agilerl_selfsft``
#: loads no torch, so the command line's ``--help`` is fast
_EXPORTS = {
    "DifficultySettings": "agilerl_selfsft.env",
    "EMBEDDED_NAME": "agilerl_selfsft.models",
    "REWARDS": "agilerl_selfsft.env",
    "SelfSFT": "agilerl_selfsft.algorithm",
    "SelfSFTError": "agilerl_selfsft.errors",
    "SelfSFTGym": "agilerl_selfsft.env",
    "SelfTrainingEnv": "agilerl_selfsft.training",
    "Task": "agilerl_selfsft.samples",
    "build_pairs": "agilerl_selfsft.export",
    "evaluate": "agilerl_selfsft.training",
    "export_adapter": "agilerl_selfsft.export",
    "export_checkpoint": "agilerl_selfsft.export",
    "export_gguf": "agilerl_selfsft.export",
    "export_merged": "agilerl_selfsft.export",
    "finetune_llm_selfsft": "agilerl_selfsft.training",
    "load_adapters": "agilerl_selfsft.training",
    "load_conversations": "agilerl_selfsft.data",
    "load_into": "agilerl_selfsft.export",
    "load_model": "agilerl_selfsft.models",
    "load_pairs_dataset": "agilerl_selfsft.export",
    "load_tasks": "agilerl_selfsft.data",
    "make_accelerator": "agilerl_selfsft.distributed",
    "pair_writer": "agilerl_selfsft.export",
    "pairs_to_dataset": "agilerl_selfsft.export",
    "verify_checkpoint": "agilerl_selfsft.training",
    "write_pairs_jsonl": "agilerl_selfsft.export",
}

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from agilerl_selfsft.algorithm import SelfSFT
    from agilerl_selfsft.data import load_conversations, load_tasks
    from agilerl_selfsft.distributed import make_accelerator
    from agilerl_selfsft.env import REWARDS, DifficultySettings, SelfSFTGym
    from agilerl_selfsft.errors import SelfSFTError
    from agilerl_selfsft.export import (
        build_pairs,
        export_adapter,
        export_checkpoint,
        export_gguf,
        export_merged,
        load_into,
        load_pairs_dataset,
        pair_writer,
        pairs_to_dataset,
        write_pairs_jsonl,
    )
    from agilerl_selfsft.models import EMBEDDED_NAME, load_model
    from agilerl_selfsft.samples import Task
    from agilerl_selfsft.training import (
        SelfTrainingEnv,
        evaluate,
        finetune_llm_selfsft,
        load_adapters,
        verify_checkpoint,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'agilerl_selfsft' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
