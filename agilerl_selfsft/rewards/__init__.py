"""Reward functions, each importable by its YAML name, and the machinery that resolves and calls them.

Every built-in has the TRL signature ``fn(prompts, completions, **columns) -> list[float]`` with its options
as keyword arguments (defaults given), so ``reward: {name: majority_vote, extract: boxed}`` in YAML and
``functools.partial(majority_vote, extract="boxed")`` in Python are the same reward:

- against an answer column: ``exact_match``, ``contains``, ``first_number``; ``format`` checks the shape;
  ``length_penalty`` is a term that prefers concise replies;
- without gold labels: ``majority_vote`` (agreement among the K samples of a prompt, :mod:`.vote`);
- without a checker: ``judge`` (a local model, or the policy's own frozen reference, scores by a rubric,
  :mod:`.judge`);
- for code: ``python_tests`` (runs the completion's code against the row's ``tests`` in a sandbox,
  :mod:`.code`).
"""

from agilerl_selfsft.rewards.checks import contains, exact_match, first_number, format, length_penalty  # noqa: A004
from agilerl_selfsft.rewards.code import python_tests
from agilerl_selfsft.rewards.judge import judge
from agilerl_selfsft.rewards.registry import BUILTINS, resolve_reward
from agilerl_selfsft.rewards.scoring import (
    DEFAULT_TIMEOUT,
    RewardFn,
    RewardValues,
    WeightedReward,
    import_function,
    score,
)
from agilerl_selfsft.rewards.vote import majority_vote

__all__ = [
    "BUILTINS", "DEFAULT_TIMEOUT", "RewardFn", "RewardValues", "WeightedReward", "contains", "exact_match",
    "first_number", "format", "import_function", "judge", "length_penalty", "majority_vote", "python_tests", "resolve_reward", "score",
]
