"""Training: the self-improvement loop and what it writes.

``loop`` (``finetune_llm_selfsft``: the stages of an iteration, in order), ``evaluation`` (held-out reward,
the fitness), ``checkpoints`` (versioned, verified checkpoints and the run state a resume restores),
``report`` (``metrics.jsonl``, wandb, the results table and plot), ``rundir`` (one trainer per run directory,
and what ``--overwrite`` may delete), ``faults`` (the resume tests' kill hook).
"""

from agilerl_selfsft.training.checkpoints import load_adapters, verify_checkpoint
from agilerl_selfsft.training.evaluation import evaluate
from agilerl_selfsft.training.loop import finetune_llm_selfsft

__all__ = ["evaluate", "finetune_llm_selfsft", "load_adapters", "verify_checkpoint"]
