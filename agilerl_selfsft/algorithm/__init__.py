"""The algorithm: :class:`SelfSFT`, AgileRL's ``SFT`` that samples from itself and learns its best samples.

``selfsft`` (the class, its knobs and their validation, sampling), ``learning`` (response-only cross-entropy
and KL in length buckets: its ``learn``), ``batching`` (planning those buckets), ``population`` (members that
share one frozen base: its ``population`` and ``clone``), ``restart`` (fresh adapters from the base, ReST-EM).
"""

from agilerl_selfsft.algorithm.selfsft import SelfSFT

__all__ = ["SelfSFT"]
