"""The environment: :class:`SelfSFTGym`, an ``SFTGym`` whose training data is the policy's own best samples.

``gym`` (prompts, scoring by :mod:`agilerl_selfsft.rewards`, the training buffer and its batches, the run
state it owns), ``selection`` (which scored samples are learned), ``buffer`` (replay of past winners),
``curriculum`` (difficulty-aware sampling: which prompts an iteration draws, by their solve-rate history).
"""

from agilerl_selfsft.env.curriculum import DifficultySettings
from agilerl_selfsft.env.gym import SelfSFTGym
from agilerl_selfsft.env.selection import STRATEGIES, select
from agilerl_selfsft.rewards import BUILTINS as REWARDS

__all__ = ["REWARDS", "STRATEGIES", "DifficultySettings", "SelfSFTGym", "select"]
