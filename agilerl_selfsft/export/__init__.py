"""Models out and onward: exports of a checkpoint, and the way into AgileRL's DPO and GRPO.

``formats`` (PEFT adapter, merged 16-bit model, GGUF file: ``agilerl-selfsft export``), ``gguf`` (the
Llama-architecture GGUF writer), ``chain`` (``load_into``: a checkpoint's actor into another AgileRL agent),
``pairs`` (on-policy DPO preference pairs from a run's scored samples).
"""

from agilerl_selfsft.export.chain import load_into
from agilerl_selfsft.export.formats import export_adapter, export_checkpoint, export_gguf, export_merged
from agilerl_selfsft.export.pairs import (
    build_pairs,
    load_pairs_dataset,
    pair_writer,
    pairs_to_dataset,
    write_pairs_jsonl,
)

__all__ = [
    "build_pairs",
    "export_adapter",
    "export_checkpoint",
    "export_gguf",
    "export_merged",
    "load_into",
    "load_pairs_dataset",
    "pair_writer",
    "pairs_to_dataset",
    "write_pairs_jsonl",
]
