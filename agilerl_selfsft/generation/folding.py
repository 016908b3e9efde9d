"""LoRA folded into the weights for generation: ``W + B·A`` of every active adapter, computed once per call.

A PEFT LoRA layer runs three matmuls per forward (the base weight, then A and B). Decoding runs the model once
per token, so the decode loop folds each adapter into a copy of its base weight for the call (kept in a
parameter dict and passed with ``torch.func.functional_call``); the vLLM engine is handed the same folded
weights. The model itself, and a base shared by a population, are never written.

The copies cost memory: a copy of every LoRA-targeted base weight for the call, about the whole model again for
an all-linear adapter (some 13 GB for a 7B model in bf16). ``SelfSFT(fold_lora=...)`` chooses: ``True`` always
folds, ``False`` never does (the adapters run as LoRA layers; the same tokens, more compute per step), and
``"auto"`` folds only when the copies need less than :data:`MAX_FOLD_SHARE` of the memory free on their device
(:func:`should_fold`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Literal

import torch


@contextmanager
def merged_lora(model: torch.nn.Module, enabled: bool = True) -> Iterator[Callable[..., object]]:
    """A forward function of ``model`` with its active LoRA adapters folded into copies of the base weights.

    The copies live only in this context; the model's parameters are never written. Plain ``lora.Linear``
    layers without DoRA are folded, in a PEFT model or one wrapped in AgileRL's ``DummyEvolvable``; for any
    other model (no PEFT, other adapter types, already merged, wrapped by an accelerator) the forward is the
    model itself.
    """
    wrapper, model = model, unwrapped(model)
    weights = folded_lora_weights(model) if enabled else None
    if weights is None:
        yield wrapper
        return
    with model.disable_adapter():
        yield lambda **inputs: torch.func.functional_call(model, weights, args=(), kwargs=inputs)


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside AgileRL's ``DummyEvolvable`` wrapper (any other model as it is)."""
    from agilerl.modules.dummy import DummyEvolvable

    return model.module if isinstance(model, DummyEvolvable) else model


def folded_lora_weights(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """``W + B·A`` of every LoRA layer of a PEFT model for its active adapters, by the base weight's parameter
    name (``....base_layer.weight``); None when the model has no LoRA layer or one that cannot be folded so
    (another adapter type, DoRA, already merged, adapters disabled). The model is not written."""
    from peft import PeftModel
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    params = dict(model.named_parameters()) if layers else {}
    foldable = (
        isinstance(model, PeftModel)
        and layers
        and all(type(m) is LoraLinear and not m.merged and not m.disable_adapters for m in layers.values())
        and all(not any(m.use_dora.values()) for m in layers.values())
        and all(f"{name}.base_layer.weight" in params for name in layers)
    )
    if not foldable:
        return None
    weights = {}
    with torch.no_grad():
        for name, m in layers.items():
            adapters = [a for a in m.active_adapters if a in m.lora_A]
            if adapters:
                base = m.get_base_layer().weight
                delta = sum(m.get_delta_weight(a) for a in adapters)
                weights[f"{name}.base_layer.weight"] = base + delta.to(base.dtype)
    return weights


#: the share of a device's free memory the folded copies may take for ``fold_lora="auto"`` to fold: the rest is
#: headroom for the decode loop's KV cache and activations and for one adapter's ``B·A`` while it is folded
MAX_FOLD_SHARE = 0.5

FoldLora = bool | Literal["auto"]


def check_fold_lora(value: object) -> None:
    """Refuse anything but ``True``, ``False`` or ``"auto"``.

    :param value: a ``fold_lora`` setting
    :type value: object
    :raises ValueError: for any other value (``1`` and ``None`` included)
    """
    if not (value is True or value is False or (isinstance(value, str) and value == "auto")):
        raise ValueError(f"fold_lora must be True, False or 'auto', got {value!r}")


def should_fold(model: torch.nn.Module, fold_lora: FoldLora) -> bool:
    """Whether to fold ``model``'s active LoRA adapters for this call (``merge_lora`` of the decode loop).

    :param model: the policy's model (a PEFT model, possibly in AgileRL's ``DummyEvolvable``) with the adapter to
        sample from active
    :type model: torch.nn.Module
    :param fold_lora: ``True``, ``False`` or ``"auto"`` (fold when :func:`fold_fits`)
    :type fold_lora: bool | str
    :return: True to fold
    :rtype: bool
    """
    check_fold_lora(fold_lora)
    if fold_lora == "auto":
        return fold_fits(folded_lora_bytes(model))
    return bool(fold_lora)


def folded_lora_bytes(model: torch.nn.Module) -> dict[torch.device, int]:
    """Bytes of the folded copies, by device: ``numel × element size`` of the base weight of every LoRA layer
    that has an active adapter (one copy per layer, however many adapters it holds).

    :param model: a model, PEFT or not
    :type model: torch.nn.Module
    :return: bytes per device; empty when nothing would be folded
    :rtype: dict[torch.device, int]
    """
    from peft.tuners.lora import LoraLayer

    needed: dict[torch.device, int] = {}
    for module in model.modules():
        if isinstance(module, LoraLayer) and any(a in module.lora_A for a in module.active_adapters):
            weight = getattr(module.get_base_layer(), "weight", None)
            if isinstance(weight, torch.Tensor):
                needed[weight.device] = needed.get(weight.device, 0) + weight.numel() * weight.element_size()
    return needed


def fold_fits(
    needed: Mapping[torch.device, int],
    free_bytes: Callable[[torch.device], int | None] | None = None,
) -> bool:
    """Whether the copies need less than :data:`MAX_FOLD_SHARE` of the free memory on each of their devices.

    :param needed: bytes per device, as :func:`folded_lora_bytes` gives them
    :type needed: Mapping[torch.device, int]
    :param free_bytes: free memory of a device, None where unknown, defaults to None (:func:`free_memory_bytes`)
    :type free_bytes: Callable[[torch.device], int | None], optional
    :return: True when every device has room (also when nothing is needed); False where free memory is unknown
    :rtype: bool
    """
    free_bytes = free_bytes or free_memory_bytes
    for device, n in needed.items():
        free = free_bytes(device)
        if free is None or n >= MAX_FOLD_SHARE * free:
            return False
    return True


def free_memory_bytes(device: torch.device | str) -> int | None:
    """Memory free for new tensors on ``device``.

    CUDA: the driver's free memory plus what PyTorch's caching allocator holds unused
    (``torch.cuda.mem_get_info`` + reserved − allocated). CPU, and MPS (unified memory): the host's available
    memory (``psutil.virtual_memory().available``, without psutil the OS's free pages).

    :param device: the device
    :type device: torch.device | str
    :return: bytes, or None where it cannot be told (another device type, an OS without the page counts)
    :rtype: int | None
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type not in ("cpu", "mps"):
        return None
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # no such counter here (e.g. macOS, Windows)
        return None
