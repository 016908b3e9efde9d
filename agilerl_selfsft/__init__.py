"""agilerl-selfsft: self-improvement by supervised fine-tuning for AgileRL.

The loop: prompts → generate K completions → score with reward functions → select the best → refill the
SFT environment → learn (response-only cross-entropy) → evaluate on held-out prompts → evolve → repeat.
Each stage has a package: ``data`` (prompts in), ``generation`` (generate and score), ``rewards`` (the
reward functions, by their YAML names), ``env`` (selection, buffer, batches), ``algorithm`` (``SelfSFT``: learn), ``training`` (the loop, evaluation,
checkpoints), ``export`` (models out); ``samples`` holds the records passed between them. ARCHITECTURE.md
has the map.
"""

from agilerl_selfsft import _compat  # noqa: F401  (must run before any agilerl.algorithms import)
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

__all__ = [
    "DifficultySettings",
    "EMBEDDED_NAME",
    "REWARDS",
    "SelfSFT",
    "SelfSFTError",
    "SelfSFTGym",
    "SelfTrainingEnv",
    "Task",
    "build_pairs",
    "evaluate",
    "export_adapter",
    "export_checkpoint",
    "export_gguf",
    "export_merged",
    "finetune_llm_selfsft",
    "load_adapters",
    "load_conversations",
    "load_into",
    "load_model",
    "load_pairs_dataset",
    "load_tasks",
    "make_accelerator",
    "pair_writer",
    "pairs_to_dataset",
    "verify_checkpoint",
    "write_pairs_jsonl",
]
__version__ = "0.1.0"
