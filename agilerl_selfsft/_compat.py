"""The one place where agilerl 2.10.0's import-time pitfalls are handled.

Import this module before anything from ``agilerl``; ``agilerl_selfsft/__init__.py`` does so.

Why each switch exists (see the project's notes on agilerl 2.10.0):

1. ``agilerl.HAS_LLM_DEPENDENCIES`` is computed from a list that includes ``vllm``. Without vllm (every
   CPU machine, and any GPU machine where it is not installed) ``SFT(...)`` raises "LLM dependencies are
   not installed" although nothing but generation needs vllm. We set it to ``True`` when the real LLM
   dependencies (transformers, peft) import; vllm stays optional and is only used when ``use_vllm=True``.
2. With ``liger-kernel`` installed, AgileRL patches RMSNorm/RoPE/SwiGLU with Triton kernels on every model
   it wraps, and liger monkeypatches ``LlamaRMSNorm`` globally. Without a CUDA driver that crashes with
   "0 active drivers" (and later clones crash too). So without CUDA we switch AgileRL's liger use off
   before ``agilerl.algorithms`` is imported; on a GPU machine it stays as AgileRL decided.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if "agilerl.algorithms" in sys.modules and "agilerl_selfsft" not in sys.modules:  # pragma: no cover
    # Too late to change what agilerl.algorithms saw at import; say so instead of failing obscurely.
    import warnings

    warnings.warn(
        "agilerl.algorithms was imported before agilerl_selfsft; import agilerl_selfsft first so its "
        "agilerl 2.10.0 fixes (LLM dependency flag, liger on CPU) take effect.",
        stacklevel=2,
    )

import agilerl  # noqa: E402  (cheap: it imports no torch)

if importlib.util.find_spec("transformers") and importlib.util.find_spec("peft"):
    agilerl.HAS_LLM_DEPENDENCIES = True

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _settle_cuda() -> None:
    """What needs to know whether CUDA is there, done once before ``agilerl.algorithms`` or DeepSpeed load (this
    imports torch, which ``import agilerl_selfsft`` alone does not: ``agilerl-selfsft --help`` stays fast)."""
    import torch

    if not torch.cuda.is_available():
        # DeepSpeed (imported by agilerl) otherwise warns "Setting accelerator to CPU" on every start.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        agilerl.HAS_LIGER_KERNEL = False


class _BeforeAgileRLAlgorithms(importlib.abc.MetaPathFinder):
    """An import hook that runs :func:`_settle_cuda` when ``agilerl.algorithms`` or ``deepspeed`` is first
    imported, and then removes itself; it finds nothing itself."""

    TRIGGERS = ("agilerl.algorithms", "deepspeed")

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name in self.TRIGGERS and self in sys.meta_path:
            sys.meta_path.remove(self)
            _settle_cuda()
        return None


if any(name in sys.modules for name in _BeforeAgileRLAlgorithms.TRIGGERS):  # pragma: no cover -- too late to defer
    _settle_cuda()
else:
    sys.meta_path.insert(0, _BeforeAgileRLAlgorithms())
