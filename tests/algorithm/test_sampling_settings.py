"""SelfSFT's sampling settings: checked in the constructor and at every call, never silently replaced; and a
SelfSFT built with SFT's arguments has SFT's attributes (our sampling temperature is ``sampling_temperature``)."""

from __future__ import annotations

import gc
import re
import weakref

import pytest
import torch
from agilerl.algorithms.core.base import EvolvableAlgorithm
from agilerl.algorithms.core.registry import HyperparameterConfig, RLParameter
from agilerl.algorithms.sft import SFT
from agilerl.hpo.mutation import Mutations

from agilerl_selfsft import SelfSFT, SelfSFTError, SelfSFTGym, Task, finetune_llm_selfsft
from agilerl_selfsft.data.chat import collate

from conftest import CHATS, lora_config

PROMPTS = ["What is the capital of France?", "Name a colour.", "Hi"]

BAD_SETTINGS = [  # (setting, the whole error message)
    ({"sampling_temperature": -0.5}, "sampling_temperature must be >= 0 (0 = greedy), got -0.5"),
    ({"sampling_temperature": float("nan")}, "sampling_temperature must be >= 0 (0 = greedy), got nan"),
    ({"top_p": 0.0}, "top_p must be in (0, 1] (1 = off), got 0.0"),
    ({"top_p": 1.5}, "top_p must be in (0, 1] (1 = off), got 1.5"),
    ({"top_k": -1}, "top_k must be an integer >= 0 (0 = off), got -1"),
    ({"top_k": 2.5}, "top_k must be an integer >= 0 (0 = off), got 2.5"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1, got 0"),
    ({"generation_batch_size": 0}, "generation_batch_size must be an integer >= 1, got 0"),
    ({"num_generations": 0}, "num_generations must be an integer >= 1, got 0"),
]


# ---- the constructor refuses what sampling would reject (or silently misread) later ----
@pytest.mark.parametrize(("kwargs", "message"), BAD_SETTINGS)
def test_constructor_refuses_bad_sampling_settings(make_agent, kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_agent(**kwargs)


def test_constructor_accepts_the_edges(make_agent):
    agent = make_agent(sampling_temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=1, generation_batch_size=1)
    assert agent.sampling_temperature == 0.0 and agent.top_p == 1.0 and agent.max_new_tokens == 1


# ---- the same rules at every call: for an attribute changed after construction, and for an override ----
@pytest.mark.parametrize(("kwargs", "message"), BAD_SETTINGS)
def test_a_bad_attribute_is_refused_before_sampling_starts(tiny_agent, kwargs, message):
    # top_k=-1 used to fail only inside transformers' warper (and not at all when decoding greedily);
    # max_new_tokens=0 crashed with an IndexError; generation_batch_size=0 was silently raised to K
    (name, value), = kwargs.items()
    setattr(tiny_agent, name, value)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        tiny_agent.sample(PROMPTS[:1], greedy=True)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        tiny_agent.generate(PROMPTS[:1])


@pytest.mark.parametrize("k", [0, -1])
def test_num_generations_override_below_one_is_refused(tiny_agent, k):
    # generate(num_generations=0) used to sample the agent's default K instead
    with pytest.raises(ValueError, match=f"num_generations must be an integer >= 1, got {k}"):
        tiny_agent.generate(PROMPTS[:1], num_generations=k)
    with pytest.raises(ValueError, match=f"num_generations must be an integer >= 1, got {k}"):
        tiny_agent.sample(PROMPTS[:1], num_generations=k)


def test_temperature_override_is_checked_and_zero_is_greedy(tiny_agent):
    with pytest.raises(ValueError, match="^" + re.escape("temperature must be >= 0 (0 = greedy), got -1.0")):
        tiny_agent.sample(PROMPTS[:1], temperature=-1.0)
    tiny_agent.sampling_temperature = 5.0  # nearly uniform: K samples differ
    torch.manual_seed(0)
    hot = tiny_agent.sample(PROMPTS[:2], num_generations=3).token_ids
    assert any(len({tuple(t) for t in group}) > 1 for group in hot)
    cold = tiny_agent.sample(PROMPTS[:2], num_generations=3, temperature=0.0).token_ids
    greedy = tiny_agent.sample(PROMPTS[:2], greedy=True).token_ids
    assert cold == [[g[0]] * 3 for g in greedy]  # temperature 0: every sample is the greedy completion


def test_no_prompts_give_no_completions(tiny_agent):
    # generate([]) used to raise an IndexError
    assert tiny_agent.generate([]) == []
    gens = tiny_agent.sample([])
    assert gens.texts == [] and gens.token_ids == [] and gens.finished == [] and gens.num_tokens == 0


# ---- eval_temperature=0.0 means greedy (it used to be replaced by the agent's temperature) ----
def completion_length(prompts, completions, **kwargs):
    """A reward that tells completions apart: greedy ones repeat, sampled ones from the random model differ."""
    return [float(len(c)) for c in completions]


def test_eval_temperature_zero_evaluates_greedily(make_agent, tokenizer):
    agent = make_agent(sampling_temperature=1.0, max_new_tokens=6)
    tasks = [Task(i, [{"role": "user", "content": f"Say {w}."}], f"Say {w}.", {"answer": w})
             for i, w in enumerate(["one", "two", "three"])]
    env = SelfSFTGym(tasks[:2], tasks, tokenizer, completion_length, data_batch_size_per_gpu=4, keep_truncated=True)
    torch.manual_seed(0)
    _, history = finetune_llm_selfsft([agent], env, iterations=0, eval_samples=3, eval_temperature=0.0,
                                      verbose=False)
    # every held-out sample at temperature 0 is the greedy completion: the sampled reward is the greedy one
    assert history[0]["eval_reward"] == history[0]["eval_reward_greedy"]
    torch.manual_seed(0)
    _, history = finetune_llm_selfsft([agent], env, iterations=0, eval_samples=3, eval_temperature=1.0,
                                      verbose=False)
    assert history[0]["eval_reward"] != history[0]["eval_reward_greedy"]  # the check above can tell


# ---- a drop-in SFT: SFT's attributes keep SFT's values; ours have names of their own ----
def sft_arguments(tokenizer, tiny_model_factory):
    return dict(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=tiny_model_factory(),
                lora_config=lora_config(), gradient_checkpointing=False)


def test_selfsft_with_sfts_arguments_has_sfts_attributes(tokenizer, tiny_model_factory):
    sft = SFT(**sft_arguments(tokenizer, tiny_model_factory))
    agent = SelfSFT(**sft_arguments(tokenizer, tiny_model_factory))
    plain = (int, float, str, bool, type(None), tuple, list, dict)
    theirs = {k: v for k, v in EvolvableAlgorithm.inspect_attributes(sft).items() if isinstance(v, plain)}
    ours = EvolvableAlgorithm.inspect_attributes(agent)
    # documented: SelfSFT keeps a reference adapter by default (SFT does not)
    documented = {"use_separate_reference_adapter", "selected_adapters"}
    differ = {k: (v, ours.get(k, "missing")) for k, v in theirs.items() if k not in documented and ours.get(k) != v}
    assert differ == {}
    assert agent.temperature == 0  # SFT's attribute, as SFT sets it (read by AgileRL's _get_logprobs)
    assert agent.sampling_temperature == 0.8  # ours


def test_sampling_temperature_is_what_sampling_reads(tiny_agent):
    tiny_agent.temperature = 5.0  # SFT's attribute: sampling does not read it
    tiny_agent.sampling_temperature = 0.0
    texts = tiny_agent.generate(PROMPTS[:2], num_generations=3)
    assert all(len(set(t)) == 1 for t in texts)


def test_sampling_temperature_is_mutable_by_name(make_agent):
    hp = HyperparameterConfig(sampling_temperature=RLParameter(min=0.1, max=2.0))
    agent = make_agent(sampling_temperature=0.5, hp_config=hp)
    mutations = Mutations(no_mutation=0, architecture=0, new_layer_prob=0, parameters=0, activation=0, rl_hp=1,
                          rand_seed=0)
    mutated = mutations.rl_hyperparam_mutation(agent)
    assert mutated.mut == "sampling_temperature"
    assert mutated.sampling_temperature in (pytest.approx(0.4), pytest.approx(0.6))
    assert mutated.temperature == 0


def test_hp_config_naming_sfts_temperature_is_refused(make_agent):
    hp = HyperparameterConfig(temperature=RLParameter(min=0.1, max=2.0))
    with pytest.raises(SelfSFTError, match="hp_config mutates temperature.*sampling_temperature"):
        make_agent(hp_config=hp)


def test_learn_clears_the_device_caches_as_sft_does(tiny_agent, tokenizer, monkeypatch):
    # SFT.learn starts with gc.collect() and torch.cuda.empty_cache(): an unreachable reference cycle (as a
    # released model or batch leaves behind) is freed by learn itself, with the automatic collector off
    calls = []
    real_empty_cache = torch.cuda.empty_cache
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("cuda") or real_empty_cache())

    class Node:
        pass

    gc.collect()
    gc.disable()
    try:
        node = Node()
        node.self = node
        alive = weakref.ref(node)
        del node
        assert alive() is not None
        tiny_agent.learn(collate(tokenizer, CHATS))
        assert alive() is None
    finally:
        gc.enable()
    assert calls


def test_a_checkpoint_from_before_the_rename_keeps_its_sampling_temperature(make_agent, tmp_path):
    # checkpoints written before sampling_temperature existed stored the sampling temperature as `temperature`
    agent = make_agent()
    agent.save_checkpoint(str(tmp_path))
    attributes = torch.load(tmp_path / "attributes.pt", weights_only=False)
    attributes.pop("sampling_temperature")
    attributes["temperature"] = 0.9
    torch.save(attributes, tmp_path / "attributes.pt")
    fresh = make_agent(sampling_temperature=0.5)
    fresh.load_checkpoint(str(tmp_path))
    assert fresh.sampling_temperature == 0.9 and fresh.temperature == 0
