"""Training: the self-improvement loop and what it writes.

``loop`` (``finetune_llm_selfsft``: the stages of an iteration, in order), ``evaluation`` (held-out reward,
the fitness), ``checkpoints`` (versioned, verified checkpoints and the run state a resume restores),
``report`` (``metrics.jsonl``, wandb, TensorBoard, the results table and plot), ``sample_log`` (what the model
wrote: ``samples/iteration_NNNN.jsonl``, the best and worst samples in the log), ``rundir`` (one trainer per run
directory, its rules for resume and overwrite, and what ``--overwrite`` may delete), ``faults`` (the resume tests' kill hook), ``self_training_env``
(``SelfTrainingEnv``: the environment AgileRL's own SFT loop drives, refilling itself from the policy).
"""

from agilerl_selfsft.training.checkpoints import load_adapters, verify_checkpoint
from agilerl_selfsft.training.evaluation import evaluate
from agilerl_selfsft.training.loop import finetune_llm_selfsft
from agilerl_selfsft.training.self_training_env import SelfTrainingEnv

__all__ = ["SelfTrainingEnv", "evaluate", "finetune_llm_selfsft", "load_adapters", "verify_checkpoint"]
