"""Support for ``test_agilerl258_sft_conformance.py``: the AgileRL test helpers and fixtures its SFT tests use.

Vendored from AgileRL (https://github.com/AgileRL/AgileRL) under the Apache License 2.0 (Copyright 2026 AgileRL;
SPDX-License-Identifier: Apache-2.0), each part from the nearest stored version (no commit matches the 2.58.0 wheel
file for file; see the test module's header):

- ``tests/test_algorithms/test_llms/llm_helpers.py`` at commit 17ff8a6235eadf7ef026bb45a700016a9afa10f5 (that of the
  vendored ``test_sft.py``): the dummy model, ``create_module``, ``scale_losses``, ``trainable_weights``,
  ``optimizer_state``, ``record_outputs``, unchanged (the value-head model and ``record_calls``, unused, left out);
- at commit a47184a1fd523982068f02ae017a814a0be59af9 (the newest stored versions): ``tests/conftest.py`` (blob
  7c30a44): ``dist_env``, ``get_free_port``, ``distributed_env``, unchanged; ``tests/test_algorithms/conftest.py``
  (blob 82c3ae5): ``generate_distributed_mode`` / ``dist_mode_factory``, two adaptations marked below;
  ``tests/test_algorithms/test_llms/conftest.py`` (blob b7c64f5): ``set_seed`` (autouse), ``_cuda_bf16_available``,
  ``generate_model`` / ``model_factory`` (less its unused value-head branch). Its autouse ``cleanup_after_test`` (GPU
  memory waits, vLLM teardown, ``torch._dynamo.reset``) is left out, as for the 2.10 suite: nothing here starts vLLM,
  and ``dist_mode_factory`` destroys the process group it starts.

Adaptation (ours): ``TINY_LLM_FIXTURE_PATH``, as in ``agilerl_sft_support.py``: in place of upstream's tiny Qwen2
checkpoint (``tests/assets/tiny_llm``, weights in Git LFS), :func:`tiny_llm_checkpoint` writes the suite's own tiny
Llama and the SmolLM2 tokenizer (``tests/conftest.py``) to the relative path ``tiny_llm`` in a fresh directory that
it makes the module's working directory (upstream runs every test in a temporary one too): no download.
"""

# ruff: noqa
import gc
import itertools
import os
import random
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from transformers.configuration_utils import PretrainedConfig
from transformers.generation.utils import GenerationMixin
from transformers.modeling_utils import PreTrainedModel

from agilerl.algorithms.core.optimizer_wrapper import OptimizerWrapper

# adaptation: upstream's stored conftest imports these from agilerl.utils.distributed, which agilerl 2.58 moved
# to agilerl.distributed (the vendored test_sft.py imports FSDPConfig and resolve_device from there too)
from agilerl.distributed import init_distributed, is_distributed

# ---- adaptation: a local tiny LLM checkpoint in place of AgileRL's tests/assets/tiny_llm ----
TINY_LLM_FIXTURE_PATH = "tiny_llm"


@pytest.fixture(scope="module", autouse=True)
def tiny_llm_checkpoint(tokenizer, tiny_model_factory, tmp_path_factory):
    """Work in a fresh directory for the module's tests, with the tiny Llama and its tokenizer in
    ``TINY_LLM_FIXTURE_PATH`` there; the working directory is restored after."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("agilerl258_sft_conformance"))
    try:
        tiny_model_factory().save_pretrained(TINY_LLM_FIXTURE_PATH)
        tokenizer.save_pretrained(TINY_LLM_FIXTURE_PATH)
        yield Path(TINY_LLM_FIXTURE_PATH).resolve()
    finally:
        os.chdir(before)


# ---- from AgileRL's tests/test_algorithms/test_llms/llm_helpers.py ----
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
    supports_gradient_checkpointing = True

    def __init__(self, config: DummyConfig, device="cpu"):
        super().__init__(config)
        self.input_size = config.input_size
        self.max_tokens = config.max_tokens
        self.vocab_size = config.vocab_size
        self.gradient_checkpointing_enabled = False
        self.datatype = (
            torch.bfloat16
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            else torch.float32
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

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

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


def scale_losses(
    loss_fn: Callable[..., Any], scales: Iterator[float]
) -> Callable[..., Any]:
    """``loss_fn`` whose loss, the first output of a tuple, carries the next scale."""

    def scaled(*args: Any, **kwargs: Any) -> Any:
        out = loss_fn(*args, **kwargs)
        if isinstance(out, tuple):
            return (out[0] * next(scales), *out[1:])
        return out * next(scales)

    return scaled


def trainable_weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def optimizer_state(optimizer: OptimizerWrapper) -> list[torch.Tensor]:
    """Copy of every tensor of the optimizer's per-parameter state, in a fixed order."""
    state = optimizer.state_dict()["state"]
    return [
        value.detach().clone()
        for _, param_state in sorted(state.items())
        for _, value in sorted(param_state.items())
        if isinstance(value, torch.Tensor)
    ]


def record_outputs(fn: Callable[..., Any]) -> tuple[Callable[..., Any], list[Any]]:
    """``fn`` that also appends each output to the returned list."""
    outputs: list[Any] = []

    def recorded(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        outputs.append(out)
        return out

    return recorded, outputs


# ---- from AgileRL's tests/test_algorithms/test_llms/conftest.py ----
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
def distributed_env():
    """Single-process torch.distributed environment for distributed LLM tests."""
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
def generate_distributed_mode(mode):
    """Initialise ``torch.distributed`` for LLM algorithm tests.

    :param mode: ``None`` (single device, no process group), ``"dist"``
        (single-process ``torch.distributed`` rendezvous via the
        ``distributed_env`` fixture's env vars; gloo on CPU, nccl on CUDA)
        or ``"fsdp2"`` (same process group at world size 1; tests
        additionally pass ``FSDPConfig()`` to the algorithm).

    Distributed modes need CUDA. Setting ``AGILERL_TEST_CPU_DISTRIBUTED=1``
    lets the ``"dist"`` mode run on a CPU-only machine (gloo backend) for
    local debugging; ``"fsdp2"`` always requires CUDA.

    :return: ``True`` when a process group is active.
    """
    if mode is not None and not torch.cuda.is_available():
        cpu_dist_ok = (
            mode == "dist" and os.environ.get("AGILERL_TEST_CPU_DISTRIBUTED") == "1"
        )
        if not cpu_dist_ok:
            pytest.skip("Distributed LLM tests require CUDA support.")

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    if mode is None:
        return False

    # The ``distributed_env`` fixture probes a free port for MASTER_PORT,
    # but another xdist worker can grab it before init_process_group binds
    # its TCPStore (EADDRINUSE race) — re-probe and retry.
    for attempt in range(5):
        try:
            initialised = init_distributed()
            break
        except RuntimeError as err:
            if "address already in use" not in str(err).lower() or attempt == 4:
                raise
            # adaptation: get_free_port is defined above (upstream: from tests.conftest import get_free_port)
            os.environ["MASTER_PORT"] = str(get_free_port())
    assert initialised, (
        "Distributed mode requires the `distributed_env` fixture to set the "
        "rendezvous env vars (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT)."
    )
    return True


@pytest.fixture
def dist_mode_factory(request):
    """Factory fixture wrapping :func:`generate_distributed_mode`.

    Distributed modes lazily pull in the ``distributed_env`` fixture so the
    rendezvous env vars are only set (and restored) when a process group is
    actually wanted — single-device (``None``) variants must not see them,
    otherwise the algorithm's own ``init_distributed()`` call would create a
    process group. Destroys the process group on teardown when this
    fixture's factory call initialised it, so distributed state never leaks
    to the next test.
    """
    pre_existing = is_distributed()

    def _factory(mode):
        if mode is not None:
            request.getfixturevalue("distributed_env")
        return generate_distributed_mode(mode)

    yield _factory

    if not pre_existing and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
