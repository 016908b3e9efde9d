"""Shared fixtures: the real SmolLM2 tokenizer and a tiny, locally built Llama wrapped in SelfSFT."""

from __future__ import annotations

import importlib.util
import json
import os

# Before torch loads OpenMP: idle threads sleep instead of spinning. With torch's default (spinning) and 2
# threads on a 2-core machine, any other busy process makes these tiny-model tests ~30x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# dtype: auto probes the CPU and may pick bf16 on one with AMX. The real-model tests' expectations (rewards
# reached, token-exact comparisons) were set in fp32, so the suite decides auto as fp32 on every machine
# (subprocesses inherit it); tests/test_precision.py clears it to test the probe itself.
os.environ.setdefault("SELFSFT_DTYPE", "float32")

import agilerl_selfsft  # noqa: F401  (must come before anything from agilerl: it patches agilerl's flags)

import pytest
import torch
from peft import LoraConfig
from transformers import LlamaConfig, LlamaForCausalLM

from agilerl_selfsft import SelfSFT
from agilerl_selfsft.agilerl_adapter import AGILERL_258
from agilerl_selfsft.models import load_tokenizer

torch.set_num_threads(2)

# The vLLM engine's tests need vLLM, which has a venv of its own (`make test-vllm`); elsewhere they are not collected.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["generation/test_vllm_engine.py"]
# AgileRL's own SFT unit tests, vendored per release, run against SelfSFT on the stack they were written for.
collect_ignore.append("algorithm/test_agilerl_sft_conformance.py" if AGILERL_258
                      else "algorithm/test_agilerl258_sft_conformance.py")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``agilerl210`` / ``agilerl258`` use that release's API only: deselected on the other stack."""
    other = "agilerl210" if AGILERL_258 else "agilerl258"
    keep = [item for item in items if other not in item.keywords]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if other in item.keywords])
        items[:] = keep

TINY_SEED = 0

# A multi-turn chat with every role: loss belongs on the two assistant turns only.
MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "tool", "content": '{"temperature": 21}'},
    {"role": "user", "content": "And of Germany?"},
    {"role": "assistant", "content": "Berlin, of course."},
]


# Two conversations, one with a system prompt: what the data tests read back from every source, and a tiny
# training set elsewhere.
CHATS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Lima."}],
]


def write_jsonl(path, rows):
    """Write rows (mappings as JSON, strings as they are: bad lines on purpose) one per line; returns ``path``."""
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def lora_params(agent_or_model, adapter: str = "actor", copy: bool = False) -> dict[str, torch.Tensor]:
    """The LoRA A/B weights of one adapter of an agent's actor (or of a PEFT model), by parameter name: the
    live parameters, or detached copies with ``copy``."""
    model = getattr(agent_or_model, "actor", agent_or_model)
    params = {n: p for n, p in model.named_parameters() if f"lora_A.{adapter}." in n or f"lora_B.{adapter}." in n}
    return {n: p.detach().clone() for n, p in params.items()} if copy else params


def spans(ids, mask):
    """Consecutive runs of equal mask values: [(mask value, token ids), ...]."""
    out = []
    for token, m in zip(ids, mask, strict=True):
        if not out or out[-1][0] != m:
            out.append((m, []))
        out[-1][1].append(token)
    return out


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (converted once, then cached)."""
    return load_tokenizer("smollm2-135m-instruct")


def _tiny_config(tok, **overrides) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **overrides,
    )


def lora_config() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", lora_dropout=0.0)


@pytest.fixture(scope="session")
def tiny_model_factory(tokenizer):
    """``make(seed=0, **config)``: a fresh fp32 tiny ``LlamaForCausalLM`` with the tokenizer's vocabulary.

    The same seed always gives the same weights; keyword arguments override ``LlamaConfig`` fields.
    """

    def make(seed: int = TINY_SEED, **config) -> LlamaForCausalLM:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(_tiny_config(tokenizer, **config)).to(torch.float32)
        model.eval()
        return model

    return make


@pytest.fixture(scope="session")
def make_agent(tokenizer, tiny_model_factory):
    """``make(seed=0, model=None, **overrides)``: a SelfSFT agent on a fresh tiny model (or ``model``).

    Keyword arguments override the constructor defaults below.
    """

    def make(seed: int = TINY_SEED, model=None, **overrides) -> SelfSFT:
        kwargs = dict(
            pad_token_id=tokenizer.pad_token_id,
            pad_token=tokenizer.pad_token,
            actor_network=model if model is not None else tiny_model_factory(seed),
            tokenizer=tokenizer,
            lora_config=lora_config(),
            batch_size=4,
            lr=1e-3,
            max_new_tokens=8,
            gradient_checkpointing=False,
            num_generations=2,
        )
        kwargs.update(overrides)
        torch.manual_seed(seed)
        return SelfSFT(**kwargs)

    return make


@pytest.fixture
def tiny_agent(make_agent):
    """A fresh SelfSFT agent on the tiny model (function-scoped: tests may train it)."""
    return make_agent()
