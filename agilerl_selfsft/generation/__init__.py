"""Generate and score: K completions (or agent conversations) per prompt, scored.

``engine`` (the seam: ``hf`` or ``vllm``, chosen by name), ``decode`` (our batched decode loop, the ``hf``
engine), ``vllm_engine`` (one vLLM engine per population, merged weights synced once per change), ``agents``
(multi-turn agent rollouts, every turn of all live conversations in one generate call), ``collect``
(``sample_scored``: generation and scoring for a set of tasks, sharded over the processes of a launch)."""

from agilerl_selfsft.generation.agents import rollout
from agilerl_selfsft.generation.collect import sample_scored
from agilerl_selfsft.generation.decode import Sampling, sample

__all__ = ["Sampling", "rollout", "sample", "sample_scored"]
