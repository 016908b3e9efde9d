"""A SelfSFT checkpoint continues into AgileRL 2.10.0's real DPO and GRPO."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from agilerl.algorithms import DPO, GRPO
from agilerl.llm_envs import PreferenceGym, ReasoningGym
from datasets import Dataset
from peft import LoraConfig

from agilerl_selfsft import load_into
from agilerl_selfsft.chat import collate
from agilerl_selfsft.checkpoints import save_iteration
from agilerl_selfsft.errors import SelfSFTError

from conftest import lora_config

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "What is the capital of Peru?"}, {"role": "assistant", "content": "Lima."}],
]


def adapter(agent, name):
    return {n.replace(f".{name}.", "."): p.detach().clone() for n, p in agent.actor.named_parameters() if f".{name}." in n and "lora_" in n}


@pytest.fixture
def checkpoint(tiny_agent, tmp_path):
    batch = collate(tiny_agent.tokenizer, CHATS)
    for _ in range(3):
        tiny_agent.learn(batch)
    return tiny_agent, save_iteration(tiny_agent, tmp_path, 1)


def check_loaded(agent, selfsft):
    ours = adapter(selfsft, "actor")
    for name in ("actor", "reference"):
        theirs = adapter(agent, name)
        assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert agent._peft_model.active_adapter == "actor"


def test_into_dpo_keeps_dpo_settings_and_learns(checkpoint, tokenizer, tiny_model_factory):
    selfsft, path = checkpoint
    dpo = DPO(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=tiny_model_factory(0),
              lora_config=lora_config(), lr=3e-4, beta=0.2, batch_size=2, gradient_checkpointing=False)
    state_before = {k: getattr(dpo, k) for k in ("algo", "beta", "lr", "batch_size")}
    load_into(dpo, path)
    check_loaded(dpo, selfsft)
    assert {k: getattr(dpo, k) for k in state_before} == state_before and dpo.algo == "DPO"
    assert not dpo.optimizer.optimizer.state  # fresh optimizer
    data = Dataset.from_dict({"prompt": ["Capital of France?", "Capital of Peru?"], "chosen": [" Paris.", " Lima."],
                              "rejected": [" Rome.", " Quito."]})
    env = PreferenceGym(data, data, tokenizer, data_batch_size_per_gpu=2)
    metrics = dpo.learn(env.reset())
    assert all(math.isfinite(v) for v in metrics.values()), metrics


def test_into_grpo_keeps_grpo_settings_and_learns(checkpoint, tokenizer, tiny_model_factory):
    selfsft, path = checkpoint
    grpo = GRPO(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=tiny_model_factory(0),
                lora_config=lora_config(), lr=1e-4, beta=0.01, group_size=2, batch_size=2, max_output_tokens=4,
                temperature=0.7, gradient_checkpointing=False)
    state_before = {k: getattr(grpo, k) for k in ("algo", "beta", "lr", "temperature", "batch_size")}
    load_into(grpo, path)
    check_loaded(grpo, selfsft)
    assert {k: getattr(grpo, k) for k in state_before} == state_before and grpo.algo == "GRPO"
    data = Dataset.from_dict({"question": ["France?", "Peru?"], "answer": ["Paris", "Lima"]})
    env = ReasoningGym(data, data, tokenizer, reward_fn=lambda completion, answer, question: float(len(completion) % 2),
                       conversation_template=[{"role": "user", "content": "Capital of {question}"}], data_batch_size_per_gpu=2)
    action = grpo.get_action(env.reset())
    _, rewards = env.step(action.completion_ids)
    metrics = grpo.learn((action.completion_ids, action.action_masks, rewards))
    assert all(math.isfinite(v) for v in metrics.values()), metrics


def test_another_lora_shape_names_the_fields(checkpoint, tokenizer, tiny_model_factory):
    _, path = checkpoint
    dpo = DPO(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=tiny_model_factory(0),
              lora_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
              gradient_checkpointing=False)
    with pytest.raises(SelfSFTError, match=r"another LoRA shape \(r: checkpoint 4 vs config 8; lora_alpha: checkpoint 8 vs config 16\)"):
        load_into(dpo, path)


def _dpo(tokenizer, model):
    return DPO(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model,
               lora_config=lora_config(), lr=3e-4, beta=0.2, batch_size=2, gradient_checkpointing=False)


def test_the_plain_agilerl_recipe_works_and_plain_load_checkpoint_does_not(checkpoint, tokenizer, tiny_model_factory):
    """What README documents for users who stay with AgileRL's own calls (pitfall 7 of agilerl 2.10.0)."""
    selfsft, path = checkpoint
    safe = _dpo(tokenizer, tiny_model_factory(0))
    safe._load_model_checkpoint(str(path), overwrite_reference_adapter=True)
    safe.use_adapter("actor")
    safe.reinit_optimizers()
    check_loaded(safe, selfsft)
    assert (safe.algo, safe.beta, safe.lr) == ("DPO", 0.2, 3e-4)

    unsafe = _dpo(tokenizer, tiny_model_factory(0))
    unsafe.load_checkpoint(str(path))
    # the upstream agent's settings replace DPO's, and the reference adapter is left active
    assert unsafe.algo == "SFT" and unsafe.lr == selfsft.lr and unsafe.temperature == selfsft.temperature
    assert unsafe._peft_model.active_adapter == "reference"


def test_a_checkpoint_of_another_base_model_is_refused_and_nothing_changes(checkpoint, tokenizer, tiny_model_factory):
    _, path = checkpoint
    other = tiny_model_factory(1)
    other.config._name_or_path = other.name_or_path = "/models/other-base"
    dpo = _dpo(tokenizer, other)
    before = adapter(dpo, "actor")
    with pytest.raises(SelfSFTError, match=r"was trained from '.*', not 'other-base'"):
        load_into(dpo, path)
    assert all(torch.equal(adapter(dpo, "actor")[k], before[k]) for k in before)


@pytest.mark.parametrize("damage", ["no_manifest", "truncated_adapter"])
def test_a_half_written_checkpoint_is_refused_and_nothing_changes(checkpoint, tokenizer, tiny_model_factory, tmp_path, damage):
    _, path = checkpoint
    half = tmp_path / ".iteration_0002.tmp"  # what a crash while saving leaves behind
    shutil.copytree(path, half)
    if damage == "no_manifest":
        (half / "selfsft.json").unlink()
        expected = "not a SelfSFT checkpoint: .*selfsft.json is missing"
    else:
        weights = half / "actor" / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
        expected = "is damaged: actor/adapter_model.safetensors does not match its manifest"
    dpo = _dpo(tokenizer, tiny_model_factory(0))
    before = adapter(dpo, "actor")
    with pytest.raises(SelfSFTError, match=expected):
        load_into(dpo, half)
    assert all(torch.equal(adapter(dpo, "actor")[k], before[k]) for k in before)


def test_a_peft_model_as_actor_network_is_rejected_by_agilerl(checkpoint, tokenizer, tiny_model_factory):
    from peft import PeftModel

    _, path = checkpoint
    peft_model = PeftModel.from_pretrained(tiny_model_factory(0), str(path / "actor"))
    with pytest.raises(Exception, match="manages its own LoRA adapters"):
        _dpo(tokenizer, peft_model)
