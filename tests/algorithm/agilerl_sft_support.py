"""Support for ``test_agilerl_sft_conformance.py``: AgileRL 2.10.0's test helpers and fixtures that its SFT tests use.

Vendored from AgileRL (https://github.com/AgileRL/AgileRL), commit cf5a80c4e75bab016236dad26db3a0ee0f6da33a (the
first commit whose ``agilerl/`` sources are, file for file, those of the installed agilerl 2.10.0 wheel; the repository
has no v2.10.0 tag), under the Apache License 2.0 (Copyright 2026 AgileRL; SPDX-License-Identifier: Apache-2.0):

- ``tests/test_algorithms/test_llms/llm_helpers.py``: the DeepSpeed configs, ``DummyConfig``, ``DummyForwardOutput``,
  ``DummyMLPPreTrainedModel``, ``create_module`` and ``_patch_mps_learn_hooks``, unchanged;
- ``tests/test_algorithms/test_llms/conftest.py``: ``set_seed`` (autouse), ``_cuda_bf16_available`` and
  ``generate_model`` / ``model_factory`` (without its value-head branch, which no SFT test uses); its other autouse
  fixture, ``cleanup_after_test`` (GPU memory waits, ``torch._dynamo.reset``), is left out: the SFT tests reset
  AcceleratorState themselves;
- ``tests/conftest.py``: ``dist_env``, ``get_free_port`` and ``deepspeed_env``, unchanged;
- ``tests/test_algorithms/conftest.py``: ``generate_accelerator`` / ``accelerator_factory``, unchanged.

Adaptation (ours): ``TINY_LLM_FIXTURE_PATH``. Upstream it is a tiny Qwen2 checkpoint stored in the repository
(``tests/assets/tiny_llm``, its weights in Git LFS); here the module-scoped fixture :func:`tiny_llm_checkpoint`
writes the suite's own tiny Llama (``tests/conftest.py``) and the SmolLM2 tokenizer there, so nothing is downloaded
at test time. The path is relative (``tiny_llm``), in a fresh directory of this pytest run that the fixture makes
the working directory for the module (upstream's conftest runs every test in a temporary working directory too):
test ids stay the same from run to run, and runs at the same time do not share files.
"""

# ruff: noqa
import gc
import itertools
import os
import random
import socket
from importlib.util import find_spec
from pathlib import Path
from unittest.mock import MagicMock

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DeepSpeedPlugin
from torch import nn
from transformers.configuration_utils import PretrainedConfig
from transformers.generation.utils import GenerationMixin
from transformers.modeling_utils import PreTrainedModel

# ---- adaptation: a local tiny LLM checkpoint in place of AgileRL's tests/assets/tiny_llm ----
TINY_LLM_FIXTURE_PATH = "tiny_llm"


@pytest.fixture(scope="module", autouse=True)
def tiny_llm_checkpoint(tokenizer, tiny_model_factory, tmp_path_factory):
    """Work in a fresh directory for the module's tests, with the tiny Llama and its tokenizer in
    ``TINY_LLM_FIXTURE_PATH`` there; the working directory is restored after."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("agilerl_sft_conformance"))
    try:
        tiny_model_factory().save_pretrained(TINY_LLM_FIXTURE_PATH)
        tokenizer.save_pretrained(TINY_LLM_FIXTURE_PATH)
        yield Path(TINY_LLM_FIXTURE_PATH).resolve()
    finally:
        os.chdir(before)


# ---- from AgileRL's tests/test_algorithms/test_llms/llm_helpers.py ----
deepspeed_base_config = {
    "bf16": {
        "enabled": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    },
    "auto_cast": True,
    "gradient_clipping": 0.5,
    "gradient_accumulation_steps": 1,
}

deepspeed_config_stage_1 = deepspeed_base_config | {
    "zero_optimization": {
        "stage": 1,
    },
}

deepspeed_config_stage_2 = deepspeed_base_config | {
    "zero_optimization": {
        "stage": 2,
    },
}

deepspeed_config_stage_3 = deepspeed_base_config | {
    "zero_optimization": {
        "stage": 3,
    },
}

deepspeed_config_stage_1_with_scheduler = deepspeed_base_config | {
    "zero_optimization": {
        "stage": 1,
    },
    "scheduler": {
        "params": {
            "warmup_max_lr": 0.001,
            "num_epochs": 10,
            "warmup_proportion": 0.05,
        },
    },
}


class DummyConfig(PretrainedConfig):
    def __init__(
        self,
        input_size=16,
        max_tokens=8,
        vocab_size=100,
        intermediate_size=128,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.max_tokens = max_tokens
        self.vocab_size = vocab_size


class DummyForwardOutput:
    def __init__(self, logits):
        self.logits = logits


class DummyMLPPreTrainedModel(PreTrainedModel, GenerationMixin):
    config_class = DummyConfig
    base_model_prefix = "dummy_mlp"

    def __init__(self, config: DummyConfig, device="cpu"):
        super().__init__(config)
        self.input_size = config.input_size
        self.max_tokens = config.max_tokens
        self.vocab_size = config.vocab_size
        self.gradient_checkpointing_enabled = False
        self.datatype = (
            torch.bfloat16
            if deepspeed_base_config.get("bf16", {}).get("enabled", False)
            else (
                torch.float16
                if deepspeed_base_config.get("fp16", {}).get("enabled", False)
                else torch.float32
            )
        )
        hidden_size = 32
        # Standard causal-LM shape (embed -> body -> lm_head) so the
        # (now unconditional) fused-linear-logprob path can identity-patch
        # ``lm_head`` and read the hidden state. ``linear_1`` stays the LoRA
        # target the fixtures expect.
        self.embed = nn.Embedding(
            self.vocab_size, hidden_size, device=device, dtype=self.datatype
        )
        self.linear_1 = nn.Linear(
            hidden_size,
            hidden_size,
            device=device,
            dtype=self.datatype,
        )
        self.lm_head = nn.Linear(
            hidden_size,
            self.vocab_size,
            bias=False,
            device=device,
            dtype=self.datatype,
        )

    @property
    def model(self):
        return self

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> DummyForwardOutput:
        # ``lm_head`` may be identity-patched by the fused-linear-logprob path,
        # in which case this returns the hidden state instead of logits.
        hidden = self.linear_1(self.embed(input_ids.long()))
        return DummyForwardOutput(logits=self.lm_head(hidden))

    def generate(self, *args, **kwargs):
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            msg = "`input_ids` must be provided for generation."
            raise ValueError(msg)
        input_shape = input_ids.shape
        group_size = input_shape[0]
        prompt_size = input_shape[1]
        # Simple generation: just return random tokens based on vocab size and desired length
        return torch.randint(
            0,
            self.vocab_size,
            (group_size, prompt_size + self.config.max_tokens),
        )

    def gradient_checkpointing_enable(self, *args, **kwargs):
        self.gradient_checkpointing_enabled = True

    def prepare_inputs_for_generation(self, *args, **kwargs):
        return


def create_module(input_size, max_tokens, vocab_size, device):
    return DummyMLPPreTrainedModel(
        config=DummyConfig(
            input_size=input_size,
            max_tokens=max_tokens,
            vocab_size=vocab_size,
        ),
        device=device,
    )


def _patch_mps_learn_hooks(monkeypatch: pytest.MonkeyPatch, module: str) -> MagicMock:
    """Make ``learn`` think MPS is available and record ``torch.mps.empty_cache`` calls."""
    mock_empty = MagicMock()
    monkeypatch.setattr(f"{module}.torch.backends.mps.is_available", lambda: True)
    monkeypatch.setattr(f"{module}.torch.mps.empty_cache", mock_empty)
    return mock_empty


# ---- from AgileRL's tests/test_algorithms/test_llms/conftest.py ----
@pytest.fixture(autouse=True)
def set_seed():
    """Set random seeds for reproducibility."""
    SEED = 42
    torch.manual_seed(SEED)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(SEED)
        torch.cuda.manual_seed_all(SEED)
    np.random.seed(SEED)
    random.seed(SEED)


def _cuda_bf16_available() -> bool:
    """True only when a usable CUDA device supports bf16.

    ``torch.cuda.is_bf16_supported()`` calls ``current_device()`` internally,
    which raises ``RuntimeError`` when the CUDA driver is loaded but no device
    is visible (e.g. ``CUDA_VISIBLE_DEVICES=`` on the CPU CI runner, where
    ``is_available()`` can still report True). Guard against that so model
    construction falls back to fp32 instead of crashing.
    """
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return False
    try:
        return torch.cuda.is_bf16_supported()
    except RuntimeError:
        return False


def generate_model(pretrained_model_name_or_path, add_value_head=False):
    """Build a dense base model for ``actor_network``.

    AgileRL attaches and manages its own LoRA adapters (PeftModel inputs are
    rejected), so the factory returns the unwrapped base model.
    """
    pytest.importorskip("peft", reason="LLM tests require peft.")
    pytest.importorskip("transformers", reason="LLM tests require transformers.")
    from transformers import AutoModelForCausalLM

    # (the add_value_head branch is left out: no SFT test uses it)
    model = AutoModelForCausalLM.from_pretrained(
        pretrained_model_name_or_path=pretrained_model_name_or_path,
        dtype=torch.bfloat16 if _cuda_bf16_available() else torch.float32,
        attn_implementation="sdpa",
    )
    model.gradient_checkpointing_enable()
    return model


@pytest.fixture
def model_factory():
    return generate_model


# ---- from AgileRL's tests/conftest.py ----
dist_env = {
    "ACCELERATE_USE_DEEPSPEED": "true",
    "MASTER_ADDR": "localhost",
    "MASTER_PORT": "10999",
    "RANK": "0",
    "LOCAL_RANK": "0",
    "WORLD_SIZE": "1",
    "CUDA_VISIBLE_DEVICES": "0",
}


_port_counter = itertools.count()


def get_free_port():
    """Pick a MASTER_PORT that won't collide across xdist workers.

    The classic bind-to-port-0 / close / reuse dance is TOCTOU-racy: two
    workers can be handed the same ephemeral port and the loser dies with
    EADDRINUSE inside ``init_process_group``. Carve a disjoint 300-port range
    per xdist worker and walk it with a per-process counter, probing each
    candidate; fall back to an OS-assigned port only if the whole range is
    somehow occupied.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    try:
        worker_num = int(worker.lstrip("gw"))
    except ValueError:
        worker_num = 0
    base = 20000 + (worker_num % 100) * 300
    for _ in range(300):
        port = base + next(_port_counter) % 300
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def deepspeed_env():

    dynamic_dist_env = dist_env.copy()
    dynamic_dist_env["MASTER_PORT"] = str(get_free_port())
    # On a CPU-only / hidden-GPU runner the GPU is masked via
    # ``CUDA_VISIBLE_DEVICES=`` (so ``is_available()`` is False at collection).
    # Don't re-expose it here: forcing ``CUDA_VISIBLE_DEVICES=0`` makes
    # ``is_available()`` flip True for CPU-runnable tests (config=None) that use
    # this fixture, and they then crash trying to ``.to("cuda")`` on a device
    # the driver can't actually serve. Keep the GPU masked unless it's usable.
    if not torch.cuda.is_available():
        dynamic_dist_env.pop("CUDA_VISIBLE_DEVICES", None)
    existing_vars = {}
    for key, value in dynamic_dist_env.items():
        key = key.upper()
        if key in os.environ:
            existing_vars[key] = os.environ[key]
        os.environ[key] = str(value)

    try:
        yield
    finally:
        for key in dynamic_dist_env:
            key = key.upper()
            if key in existing_vars:
                # restore previous value
                os.environ[key] = existing_vars[key]
            else:
                os.environ.pop(key, None)


# ---- from AgileRL's tests/test_algorithms/conftest.py ----
def generate_accelerator(use_deepspeed_optimizer, config):
    if config is not None and not torch.cuda.is_available():
        pytest.skip("DeepSpeed-configured LLM tests require CUDA support.")
    if config is not None and find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed-configured LLM tests require deepspeed.")

    gc.collect()
    torch.cuda.empty_cache()
    AcceleratorState._reset_state(True)
    if use_deepspeed_optimizer and (config is not None):
        config["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": 1e-4,  # Smaller learning rate
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": 0.01,
            },
        }
    return (
        Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config))
        if config is not None
        else None
    )


@pytest.fixture
def accelerator_factory():
    return generate_accelerator
