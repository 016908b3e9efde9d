"""DPO pairs from scored samples: the pairing rule, the PreferenceGym format (real gym, real tokenizer), a real
DPO update on them, the JSONL files, and the training loop's hook that writes them."""

from __future__ import annotations

import json
import math

import pytest
import torch
from agilerl.algorithms import DPO

from agilerl_selfsft import SelfSFTGym, Task, finetune_llm_selfsft
from agilerl_selfsft.agilerl_adapter import dataset_env
from agilerl_selfsft.data.chat import render_prompt
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.export.pairs import (
    Pair,
    build_pairs,
    load_pairs_dataset,
    pair_writer,
    pairs_to_dataset,
    read_pairs_jsonl,
    response_text,
    write_pairs_jsonl,
)
from agilerl_selfsft.samples import Scored

from conftest import lora_config


def q(pid):
    return [{"role": "user", "content": f"What is the capital of country {pid}?"}]


def s(pid, completion, reward, finished=True):
    return Scored(pid, [*q(pid), {"role": "assistant", "content": completion}], completion, reward, finished)


def texts(pairs):
    return [(p.prompt_id, p.chosen, p.rejected) for p in pairs]


# ---- the pairing rule ----
def test_best_vs_worst_per_prompt_and_no_pair_without_a_spread():
    samples = [
        s(0, "Rome", 0.0), s(0, "Paris", 1.0), s(0, "Paris, France", 0.5), s(0, "It is Paris", 1.0),
        s(1, "Lima", 1.0), s(1, "Lima.", 1.0),  # all right: no spread
        s(2, "Oslo?", 0.0), s(2, "Bergen", 0.0),  # all wrong: no spread
    ]
    pairs = build_pairs(samples)
    assert texts(pairs) == [(0, "Paris", "Rome")]  # the first best (generation order) vs the worst
    p = pairs[0]
    assert (p.chosen_reward, p.rejected_reward, p.margin) == (1.0, 0.0, 1.0)
    assert p.messages == q(0) and p.chosen_finished and p.rejected_finished


def test_more_pairs_per_prompt_go_outside_in_and_use_each_completion_once():
    samples = [s(0, "Rome", 0.0), s(0, "Paris", 1.0), s(0, "Paris, France", 0.5), s(0, "It is Paris", 1.0)]
    assert texts(build_pairs(samples, pairs_per_prompt=2)) == [(0, "Paris", "Rome"), (0, "It is Paris", "Paris, France")]
    assert len(build_pairs(samples, pairs_per_prompt=5)) == 2  # 4 completions make at most 2 disjoint pairs
    assert texts(build_pairs(samples, pairs_per_prompt=2, min_margin=0.6)) == [(0, "Paris", "Rome")]
    assert build_pairs(samples, min_margin=1.5) == []


def test_ties_keep_generation_order():
    samples = [s(0, "a", 1.0), s(0, "b", 0.0), s(0, "c", 1.0), s(0, "d", 0.0)]
    assert texts(build_pairs(samples, pairs_per_prompt=2)) == [(0, "a", "b"), (0, "c", "d")]
    # [1, 0, 0, 0]: after (a, b) the next best is a 0 like every rejected left: no second pair
    assert texts(build_pairs([s(0, "a", 1.0), s(0, "b", 0.0), s(0, "c", 0.0), s(0, "d", 0.0)], pairs_per_prompt=3)) == [(0, "a", "b")]


def test_duplicates_are_dropped_before_pairing():
    samples = [s(0, "Paris", 1.0), s(0, "  Paris ", 1.0), s(0, "Rome", 0.0), s(0, "Rome\n", 0.0)]
    assert texts(build_pairs(samples, pairs_per_prompt=2)) == [(0, "Paris", "Rome")]
    assert build_pairs([s(0, "Paris", 1.0), s(0, "Paris", 0.0)]) == []  # the same text twice is no pair


def test_a_cut_off_completion_is_rejected_but_not_chosen_unless_asked():
    samples = [s(0, "Paris Paris Paris", 1.0, finished=False), s(0, "Paris", 0.5), s(0, "Rome Rome", 0.0, finished=False)]
    (p,) = build_pairs(samples)
    assert (p.chosen, p.rejected, p.rejected_finished) == ("Paris", "Rome Rome", False)
    (p,) = build_pairs(samples, keep_truncated=True)
    assert (p.chosen, p.chosen_finished) == ("Paris Paris Paris", False)


@pytest.mark.parametrize(
    ("kwargs", "samples", "message"),
    [
        ({"min_margin": 0.0}, [], r"min_margin must be > 0"),
        ({"pairs_per_prompt": 0}, [], r"pairs_per_prompt must be >= 1, got 0"),
        ({}, [s(0, "a", 1.0), s(0, "b", float("nan"))], r"prompt 0 has a non-finite reward \(nan\)"),
        ({}, [Scored(3, q(3), "x", 1.0)], r"a sample of prompt 3 does not end with its assistant completion"),
        ({}, [s(0, "a", 1.0), Scored(0, [*q(9), {"role": "assistant", "content": "b"}], "b", 0.0)],
         r"prompt id 0 is used by two different prompts"),
        ({}, [Scored(4, [*q(4), {"role": "assistant", "content": "c"}], "c", 1.0, learn_turns=[1])],
         r"prompt 4: an agent's multi-turn trajectory cannot be a DPO pair"),
    ],
)
def test_bad_input_is_one_clear_error(kwargs, samples, message):
    with pytest.raises(SelfSFTError, match=message):
        build_pairs(samples, **kwargs)


def test_no_pairs_says_why_and_what_to_do(tokenizer):
    with pytest.raises(SelfSFTError, match=r"no preference pairs to train on: no prompt had two completions whose "
                                            r"rewards differ by at least min_margin; sample more completions"):
        pairs_to_dataset(build_pairs([s(0, "a", 1.0), s(0, "b", 1.0)]), tokenizer)


# ---- the PreferenceGym format ----
PAIRS = [
    Pair(0, q(0), "Paris.", "Rome, I think.", 1.0, 0.0),
    Pair(1, [{"role": "system", "content": "Be brief."}, *q(1)], "Lima", "Quito Quito Quito", 1.0, 0.0, True, False),
]


def test_dataset_holds_the_rendered_prompt_and_the_templated_turn(tokenizer):
    data = pairs_to_dataset(PAIRS, tokenizer)
    assert data.column_names == ["prompt", "chosen", "rejected", "prompt_id", "chosen_reward", "rejected_reward"]
    assert data["prompt"] == [render_prompt(tokenizer, p.messages) for p in PAIRS]
    assert data["prompt"][0].endswith("<|im_start|>user\nWhat is the capital of country 0?<|im_end|>\n<|im_start|>assistant\n")
    # SmolLM2: the turn ends with <|im_end|> and a newline; its eos (<|im_start|>) is left to PreferenceGym
    assert data["chosen"] == ["Paris.<|im_end|>\n", "Lima<|im_end|>\n"]
    assert data["rejected"] == ["Rome, I think.<|im_end|>\n", "Quito Quito Quito"]  # the cut-off one never ended


def test_a_trailing_eos_written_by_the_template_is_left_to_preference_gym(tokenizer):
    class EosIsTurnEnd:  # a Qwen-style tokenizer: eos is the end-of-turn token itself
        eos_token = "<|im_end|>"

        def apply_chat_template(self, *args, **kwargs):
            return tokenizer.apply_chat_template(*args, **kwargs)

    assert response_text(EosIsTurnEnd(), q(0), "Paris.") == "Paris."


def test_preference_gym_batch_is_the_chat_template_token_for_token(tokenizer):
    data = pairs_to_dataset(PAIRS, tokenizer)
    env = dataset_env(data, data, tokenizer, "preference", data_batch_size_per_gpu=len(PAIRS))
    batch = env.reset()
    assert sorted(batch["prompt"]) == sorted(data["prompt"])
    by_prompt = {render_prompt(tokenizer, p.messages): p for p in PAIRS}
    for row, prompt in enumerate(batch["prompt"]):
        pair = by_prompt[prompt]
        n = batch["prompt_lengths"][row]
        for side, text, finished in (("chosen", pair.chosen, True), ("rejected", pair.rejected, pair.rejected_finished)):
            ids = batch[f"{side}_input_ids"][row][batch[f"{side}_attention_mask"][row].bool()].tolist()
            assert tokenizer.decode(ids[:n]) == prompt  # everything before prompt_lengths is the prompt
            if finished:
                # exactly the tokens of the whole rendered conversation, then the eos PreferenceGym appends
                conversation = tokenizer.apply_chat_template([*pair.messages, {"role": "assistant", "content": text}], tokenize=False)
                assert ids == tokenizer(conversation, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                assert tokenizer.decode(ids[n:]) == f"{text}<|im_end|>\n<|im_start|>"
            else:
                assert tokenizer.decode(ids[n:]) == f"{text}<|im_start|>"


def test_dpo_learns_from_the_pairs_with_a_finite_loss(tokenizer, tiny_model_factory):
    data = pairs_to_dataset(PAIRS, tokenizer)
    env = dataset_env(data, data, tokenizer, "preference", data_batch_size_per_gpu=len(PAIRS))
    dpo = DPO(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=tiny_model_factory(0),
              lora_config=lora_config(), lr=1e-2, beta=0.1, batch_size=len(PAIRS), gradient_checkpointing=False)
    before = {n: p.detach().clone() for n, p in dpo.actor.named_parameters() if ".actor." in n and "lora_" in n}
    batch = env.reset()
    metrics = [dpo.learn(batch) for _ in range(3)]
    assert all(math.isfinite(v) for m in metrics for v in m.values()), metrics
    after = dict(dpo.actor.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the actor adapter moved
    # chosen rises against rejected on the batch it was trained on
    assert metrics[-1]["chosen_reward"] - metrics[-1]["rejected_reward"] > metrics[0]["chosen_reward"] - metrics[0]["rejected_reward"]


# ---- files ----
def test_jsonl_round_trip_is_atomic_and_loads_into_a_dataset(tmp_path, tokenizer):
    path = write_pairs_jsonl(tmp_path / "pairs" / "iteration_0001.jsonl", PAIRS)
    assert read_pairs_jsonl(path) == PAIRS
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    assert json.loads(path.read_text().splitlines()[1])["rejected_finished"] is False
    write_pairs_jsonl(path, PAIRS[:1])  # replaces the file whole
    assert read_pairs_jsonl(path) == PAIRS[:1]
    write_pairs_jsonl(tmp_path / "pairs" / "iteration_0002.jsonl", PAIRS[1:])
    from_folder = load_pairs_dataset(tmp_path / "pairs", tokenizer)
    assert from_folder.to_dict() == pairs_to_dataset(PAIRS, tokenizer).to_dict()  # files in name order
    assert load_pairs_dataset([path], tokenizer)["chosen"] == ["Paris.<|im_end|>\n"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = write_pairs_jsonl(tmp_path / "p.jsonl", PAIRS)
    with pytest.raises(ValueError):
        write_pairs_jsonl(path, [PAIRS[0], Pair(2, q(2), "a", "b", float("nan"), 0.0)])  # NaN is not JSON
    assert read_pairs_jsonl(path) == PAIRS and [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]


def test_bad_files_name_the_line(tmp_path, tokenizer):
    with pytest.raises(SelfSFTError, match=r"pairs file not found: .*missing.jsonl"):
        read_pairs_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(SelfSFTError, match=r"bad.jsonl:1: a pair needs chosen, chosen_reward, messages, prompt_id, "
                                            r"rejected, rejected_reward; found \['chosen', 'prompt', 'rejected'\]"):
        read_pairs_jsonl(bad)
    bad.write_text("\n{oops\n")
    with pytest.raises(SelfSFTError, match=r"bad.jsonl:2: not valid JSON"):
        read_pairs_jsonl(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SelfSFTError, match=r"no pairs files \(\*\.jsonl\) in .*empty$"):
        load_pairs_dataset(empty, tokenizer)
    (empty / "iteration_0001.jsonl").write_text("")
    with pytest.raises(SelfSFTError, match=r"no preference pairs to train on"):
        load_pairs_dataset(empty, tokenizer)


# ---- the training loop's hook ----
def even_length(prompts, completions, **kwargs):
    return [float(len(c) % 2 == 0) for c in completions]


def test_pair_writer_keeps_each_iterations_pairs_from_the_loop(tiny_agent, tokenizer, tmp_path):
    train = [Task(i, [{"role": "user", "content": f"Say {w}."}], f"Say {w}.", {}) for i, w in enumerate(["one", "two", "three", "four"])]
    held_out = [Task(0, [{"role": "user", "content": "Say six."}], "Say six.", {})]
    env = SelfSFTGym(train, held_out, tokenizer, even_length, data_batch_size_per_gpu=4, keep_truncated=True)
    seen = []

    def spy(iteration, agent, scored):
        seen.append((iteration, agent.index, list(scored)))

    writer = pair_writer(tmp_path, keep_truncated=True)  # the random tiny model never ends a turn
    finetune_llm_selfsft([tiny_agent], env, iterations=2, prompts_per_iteration=4, sft_epochs=1, eval_samples=1,
                         eval_greedy=False, checkpoint_path=tmp_path, verbose=False,
                         on_scored=lambda *a: (spy(*a), writer(*a)))
    assert [(i, a, len(sc)) for i, a, sc in seen] == [(1, 0, 8), (2, 0, 8)]  # 4 prompts x K=2, train only
    assert sorted(p.name for p in (tmp_path / "pairs").iterdir()) == ["iteration_0001.jsonl", "iteration_0002.jsonl"]
    total = 0
    for iteration, _, scored in seen:
        written = read_pairs_jsonl(tmp_path / "pairs" / f"iteration_{iteration:04d}.jsonl")
        assert written == build_pairs(scored, keep_truncated=True)
        assert all(p.chosen_reward == 1.0 and p.rejected_reward == 0.0 for p in written)
        total += len(written)
    assert total > 0


def test_pair_writer_checks_its_options_at_once(tmp_path):
    with pytest.raises(SelfSFTError, match=r"pairs_per_prompt must be >= 1"):
        pair_writer(tmp_path, pairs_per_prompt=0)
