"""Training: the self-improvement loop and what it writes.

``loop`` (``finetune_llm_selfsft``: the stages of an iteration, in order), ``evaluation`` (held-out reward,
the fitness), ``checkpoints`` (versioned, verified checkpoints and the run state a resume restores),
``report`` (``metrics.jsonl``, wandb, the results table and plot), ``rundir`` (one trainer per run directory,
and what ``--overwrite`` may delete), ``faults`` (the resume tests' kill hook), ``self_training_env``
(``SelfTrainingEnv``: the environment AgileRL's own SFT loop drives, refilling itself from the policy).
"""

from agilerl_selfsft.training.checkpoints import load_adapters, verify_checkpoint
from agilerl_selfsft.training.evaluation import evaluate
from agilerl_selfsft.training.loop import finetune_llm_selfsft
from agilerl_selfsft.training.self_training_env import SelfTrainingEnv

__all__ = ["SelfTrainingEnv", "evaluate", "finetune_llm_selfsft", "load_adapters", "verify_checkpoint"]
