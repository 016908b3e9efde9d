"""The environment: :class:`SelfSFTGym`, an ``SFTGym`` whose training data is the policy's own best samples.

``gym`` (prompts, scoring, the training buffer and its batches, the run state it owns), ``rewards`` (reward
functions, the built-ins, strict checks of what they return), ``selection`` (which scored samples are
learned), ``buffer`` (replay of past winners).
"""

from agilerl_selfsft.env.gym import SelfSFTGym
from agilerl_selfsft.env.rewards import BUILTINS as REWARDS
from agilerl_selfsft.env.selection import STRATEGIES, select

__all__ = ["REWARDS", "STRATEGIES", "SelfSFTGym", "select"]
