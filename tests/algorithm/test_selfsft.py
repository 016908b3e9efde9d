"""SelfSFT on a tiny Llama: batched sampling, response-only loss, KL to the reference, AgileRL compatibility."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from agilerl_selfsft.agilerl_adapter import AGILERL_258, dataset_env, sft_training_loop
from agilerl_selfsft.data.chat import collate, render_prompt

from conftest import MULTI, lora_params  # MULTI: a system/user/assistant/tool/user/assistant chat

PROMPTS = ["What is the capital of France?", "Name a colour.", "Hi", "What is 2 + 2?",
           "Say something nice about cats, please.", "Which is larger, 3 or 5?"]

SINGLE = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help you today?"}],
]


def manual_ce(agent, batch):
    """Mean cross-entropy over the tokens that ``loss_mask`` marks, from a plain forward of the actor adapter."""
    with torch.no_grad(), agent.select_adapter("actor"):
        agent.actor.eval()
        logits = agent.actor(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["input_ids"][:, 1:]
    keep = (batch["loss_mask"] * batch["attention_mask"])[:, 1:].bool()
    return F.cross_entropy(logits[:, :-1][keep].float(), targets[keep]).item(), int(keep.sum())


def train_steps(agent, batch, n):
    for _ in range(n):
        out = agent.learn(batch)
        assert math.isfinite(out["loss"])
    return out


# ---- sampling ----
def test_sample_returns_k_completions_per_prompt_in_order(tiny_agent):
    tiny_agent.num_generations = 3
    gens = tiny_agent.sample(PROMPTS[:4])
    assert len(gens.texts) == len(gens.finished) == 4
    assert all(len(t) == 3 for t in gens.texts) and all(len(f) == 3 for f in gens.finished)
    assert all(isinstance(c, str) for t in gens.texts for c in t)
    assert 0 < gens.num_tokens <= 4 * 3 * tiny_agent.max_new_tokens
    assert gens.seconds > 0
    texts = tiny_agent.generate(PROMPTS[:2], num_generations=5)
    assert [len(t) for t in texts] == [5, 5]


@pytest.fixture
def varied_agent(make_agent, tiny_model_factory):
    """An agent on a tiny model with large weights: each prompt gets its own, varied greedy completion (the
    default initialisation just repeats the prompt's last token, a newline, which decodes to "")."""
    return make_agent(model=tiny_model_factory(0, initializer_range=0.5))


def test_results_follow_prompt_order(varied_agent):
    # prompts of different lengths are batched by length internally; results must come back in input order
    prompts = [PROMPTS[4], PROMPTS[2], PROMPTS[0]]
    alone = [varied_agent.sample([p], greedy=True).token_ids[0] for p in prompts]
    assert len({tuple(ids[0]) for ids in alone}) == 3  # the prompts are told apart by their completions
    together = varied_agent.sample(prompts, greedy=True).token_ids
    assert together == alone
    reordered = varied_agent.sample(prompts[::-1], greedy=True).token_ids
    assert reordered == together[::-1]


def test_greedy_is_one_deterministic_completion(varied_agent):
    torch.manual_seed(1)
    a = varied_agent.sample(PROMPTS[:3], greedy=True)
    torch.manual_seed(2)
    b = varied_agent.sample(PROMPTS[:3], greedy=True)
    assert [len(t) for t in a.token_ids] == [1, 1, 1] and all(t[0] for t in a.token_ids)
    assert a.token_ids == b.token_ids and all(text[0] for text in a.texts)


def test_sampling_follows_the_torch_seed(varied_agent):
    varied_agent.sampling_temperature = 1.0
    torch.manual_seed(5)
    a = varied_agent.sample(PROMPTS[:2]).token_ids
    torch.manual_seed(5)
    b = varied_agent.sample(PROMPTS[:2]).token_ids
    torch.manual_seed(6)
    c = varied_agent.sample(PROMPTS[:2]).token_ids
    assert a == b and a != c


def test_chats_are_accepted_as_prompts(varied_agent):
    # a string is a one-turn user chat; a system turn changes the prompt, so the completion
    as_chat = varied_agent.sample([[{"role": "user", "content": "Hi"}]], greedy=True).token_ids
    assert as_chat == varied_agent.sample(["Hi"], greedy=True).token_ids
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ids = varied_agent.sample([chat, "Hi"], greedy=True).token_ids
    assert ids[1] == as_chat[0] and ids[0] != ids[1]


def test_generation_is_batched_across_prompts(make_agent):
    agent = make_agent(generation_batch_size=12)
    gens = agent.sample(PROMPTS)  # 6 prompts x K=2 = 12 rows: one batch
    assert gens.batch_rows == [12]
    assert [len(t) for t in gens.texts] == [2] * 6

    agent.generation_batch_size = 4  # read at every call: 2 prompts (4 rows) per batch
    gens = agent.sample(PROMPTS)
    assert gens.batch_rows == [4, 4, 4] and gens.peak_rows == 4
    assert [len(t) for t in gens.texts] == [2] * 6


def test_sampling_attributes_take_effect_on_the_next_call(tiny_agent):
    tiny_agent.max_new_tokens = 2
    gens = tiny_agent.sample(PROMPTS[:3])
    assert gens.num_tokens <= 3 * 2 * 2
    tiny_agent.max_new_tokens = 5
    tiny_agent.num_generations = 3
    gens = tiny_agent.sample(PROMPTS[:3])
    assert [len(t) for t in gens.texts] == [3, 3, 3]
    assert 3 * 3 * 2 < gens.num_tokens <= 3 * 3 * 5  # the random tiny model rarely stops early
    # temperature 0 means greedy decoding: all K samples agree
    tiny_agent.sampling_temperature = 0.0
    texts = tiny_agent.generate(PROMPTS[:2], num_generations=3)
    assert all(len(set(t)) == 1 for t in texts)
    # a high temperature gives different samples
    tiny_agent.sampling_temperature = 5.0
    texts = tiny_agent.generate(PROMPTS[:2], num_generations=3)
    assert any(len(set(t)) > 1 for t in texts)


def sampled_token_ranks(agent, prompt):
    """Sample for one prompt and return, for every generated token, its rank under the actor's own logits."""
    gens = agent.sample([prompt])
    prompt_ids = agent._tokenizer(render_prompt(agent._tokenizer, [{"role": "user", "content": prompt}]),
                                 add_special_tokens=False)["input_ids"]
    ranks = []
    for completion in gens.token_ids[0]:
        ids = torch.tensor([prompt_ids + completion])
        with torch.no_grad(), agent.select_adapter("actor"):
            agent.actor.eval()
            logits = agent.actor(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
        chosen = logits.gather(-1, ids[0, len(prompt_ids) :, None])
        ranks.append((logits > chosen).sum(-1))  # 0 = the most likely token
    return torch.cat(ranks)


def test_top_k_zero_means_no_top_k_filter(make_agent):
    # at a very high temperature the distribution is nearly uniform over ~49k tokens: without a top-k
    # filter almost every sampled token lies outside the 50 most likely ones
    agent = make_agent(sampling_temperature=100.0, top_k=0, max_new_tokens=6, num_generations=4)
    torch.manual_seed(0)
    ranks = sampled_token_ranks(agent, "Hi")
    assert ranks.numel() == 24
    assert (ranks >= 50).any(), f"top_k=0 should sample from the whole vocabulary; ranks {ranks.tolist()}"
    # and top_k=5 is honoured
    agent.top_k = 5
    ranks = sampled_token_ranks(agent, "Hi")
    assert (ranks < 5).all()


def test_generation_without_a_tokenizer(make_agent):
    agent = make_agent(tokenizer=None)
    with pytest.raises(ValueError, match="tokenizer"):
        agent.generate(["Hi"])


def test_learned_reply_stops_at_the_end_of_turn(make_agent, tiny_model_factory, tokenizer):
    """After SFT on one fixed reply, greedy decoding reproduces it and stops at <|im_end|> (finished).

    The default tiny model's logits are too flat for LoRA to make any reply likely (frozen tied
    embeddings of std 0.02), so this test uses larger initial weights.
    """
    agent = make_agent(model=tiny_model_factory(initializer_range=0.5), lr=1e-2, max_grad_norm=1.0)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    batch = collate(tokenizer, [conversation])
    out = train_steps(agent, batch, 60)
    assert out["loss"] < 1.5
    agent.max_new_tokens = 6
    gens = agent.sample(["Hi"], greedy=True)
    assert gens.texts == [["Hello"]]
    # "Hello" then <|im_end|>: the row ends at the end-of-turn token and is counted up to it
    assert gens.finished == [[True]]
    assert gens.num_tokens == len(tokenizer("Hello", add_special_tokens=False)["input_ids"]) + 1


# ---- learning ----
def test_learn_trains_the_actor_and_never_the_reference(tiny_agent, tokenizer):
    batch = collate(tokenizer, SINGLE)
    actor_before = lora_params(tiny_agent, "actor", copy=True)
    reference_before = lora_params(tiny_agent, "reference", copy=True)
    assert actor_before and reference_before
    out = tiny_agent.learn(batch)
    assert {k for k in out if not k.startswith("learn_phase_")} == {"loss", "perplexity", "kl", "tokens", "padding"}
    assert math.isfinite(out["loss"]) and out["loss"] > 0
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]), rel=1e-5)
    actor_after = lora_params(tiny_agent, "actor", copy=True)
    assert any(not torch.equal(actor_before[n], actor_after[n]) for n in actor_before)
    reference_after = lora_params(tiny_agent, "reference", copy=True)
    assert all(torch.equal(reference_before[n], reference_after[n]) for n in reference_before)
    # a few more steps lower the loss on the batch
    later = train_steps(tiny_agent, batch, 5)
    assert later["loss"] < out["loss"]


def test_learn_without_training_changes_nothing(tiny_agent, tokenizer):
    batch = collate(tokenizer, SINGLE)
    before = lora_params(tiny_agent, "actor", copy=True)
    a = tiny_agent.learn(batch, training=False)
    b = tiny_agent.learn(batch, training=False)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    after = lora_params(tiny_agent, "actor", copy=True)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_loss_of_a_single_marked_token_is_its_cross_entropy(tiny_agent, tokenizer):
    batch = collate(tokenizer, SINGLE)
    train_steps(tiny_agent, batch, 2)  # move the actor away from the base so the adapter matters
    loss_mask = torch.zeros_like(batch["loss_mask"])
    row, position = 1, 7  # a prompt token: the mask, not the prompt length, decides
    loss_mask[row, position] = 1
    one = {**batch, "loss_mask": loss_mask}
    with torch.no_grad(), tiny_agent.select_adapter("actor"):
        tiny_agent.actor.eval()
        logits = tiny_agent.actor(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = F.cross_entropy(logits[row, position - 1].float()[None], batch["input_ids"][row, position][None]).item()
    got = tiny_agent.learn(one, training=False)["loss"]
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_single_turn_loss_equals_hand_computed_ce_over_reply_tokens(tiny_agent, tokenizer):
    batch = collate(tokenizer, SINGLE)  # two rows, the first right-padded
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]
    train_steps(tiny_agent, batch, 2)
    expected, n = manual_ce(tiny_agent, batch)
    assert n == int(batch["loss_mask"][:, 1:].sum())
    got = tiny_agent.learn(batch, training=False)["loss"]
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)


def assistant_token_mask(tokenizer, input_ids, attention_mask):
    """A mask built by scanning ChatML tokens (independently of ``collate``): 1 from just after each
    ``<|im_start|>assistant\n`` through that turn's ``<|im_end|>`` and the newline after it."""
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    mask = torch.zeros_like(input_ids)
    for r in range(input_ids.shape[0]):
        ids = input_ids[r, : int(attention_mask[r].sum())].tolist()
        inside, t = False, 0
        while t < len(ids):
            if not inside and ids[t : t + len(header)] == header:
                inside, t = True, t + len(header)
                continue
            if inside:
                mask[r, t] = 1
                if ids[t] == im_end:
                    inside = False
                    if ids[t + 1 : t + 1 + len(newline)] == newline:
                        mask[r, t + 1 : t + 1 + len(newline)] = 1
                        t += len(newline)
            t += 1
    return mask


def test_multi_turn_loss_equals_hand_computed_ce_over_assistant_turns(tiny_agent, tokenizer):
    batch = collate(tokenizer, [MULTI, SINGLE[1]])
    train_steps(tiny_agent, batch, 2)
    hand_mask = assistant_token_mask(tokenizer, batch["input_ids"], batch["attention_mask"])
    replies = ["Paris.", "Berlin, of course.", SINGLE[1][1]["content"]]
    n_reply_tokens = sum(len(tokenizer(r + "<|im_end|>\n", add_special_tokens=False)["input_ids"]) for r in replies)
    assert int(hand_mask.sum()) == n_reply_tokens  # both turns of row 0, the one turn of row 1
    expected, n = manual_ce(tiny_agent, {**batch, "loss_mask": hand_mask})
    assert n == n_reply_tokens
    got = tiny_agent.learn(batch, training=False)["loss"]
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_kl_is_zero_at_start_and_grows_with_training(make_agent, tokenizer):
    agent = make_agent(kl_coef=0.5, lr=1e-2)
    batch = collate(tokenizer, SINGLE)
    start = agent.learn(batch, training=False)
    assert abs(start["kl"]) < 1e-6  # LoRA B is zero-initialised: actor == reference == base
    agent.kl_coef = 0.0
    out = train_steps(agent, batch, 4)
    assert out["kl"] == 0.0  # not computed without a KL term
    agent.kl_coef = 0.5
    after = agent.learn(batch, training=False)
    assert after["kl"] > 1e-5
    assert after["loss"] < start["loss"]  # "loss" is the CE alone; the KL is reported separately


def test_kl_term_changes_the_update(make_agent, tokenizer):
    """With kl_coef > 0 the gradient includes the KL: two agents that differ only in kl_coef diverge."""
    batch = collate(tokenizer, SINGLE)
    plain, anchored = make_agent(), make_agent(kl_coef=10.0)
    for agent in (plain, anchored):
        train_steps(agent, batch, 3)
    a, b = lora_params(plain, "actor", copy=True), lora_params(anchored, "actor", copy=True)
    assert any(not torch.allclose(a[n], b[n]) for n in a)
    # the anchored agent stays closer to the reference
    plain.kl_coef = anchored.kl_coef = 1.0
    assert anchored.learn(batch, training=False)["kl"] < plain.learn(batch, training=False)["kl"]


def test_learn_reports_tokens_and_padding_as_agilerl_metrics(tiny_agent, tokenizer):
    batch = collate(tokenizer, [SINGLE[0], SINGLE[1], SINGLE[0]])  # two lengths, close
    mask = batch["attention_mask"]
    padded = 1 - mask.sum().item() / mask.numel()
    assert 0 < padded <= 0.1
    out = tiny_agent.learn(batch)  # padding within bucket_max_padding (0.1): one bucket, as AgileRL pads it
    assert out["tokens"] == mask.sum().item()
    assert out["padding"] == pytest.approx(padded)
    tiny_agent.bucket_max_padding = 0.0  # now a bucket per length: no padding
    out = tiny_agent.learn(batch)
    assert out["padding"] == 0.0
    ours = [m for m in tiny_agent.metrics.additional_metrics if not m.startswith("learn_phase_")]
    assert ours == ["loss", "perplexity", "kl", "tokens", "padding"]
    if AGILERL_258:  # and 2.58's own learn timings, as its SFT.learn reports them
        phases = {m for m in tiny_agent.metrics.additional_metrics if m.startswith("learn_phase_")}
        assert phases and phases <= set(out) and tiny_agent.metrics.get_mean("learn_phase_forward_s") > 0
    assert tiny_agent.metrics.get_mean("tokens") == mask.sum().item()
    assert tiny_agent.metrics.get_mean("padding") == pytest.approx(padded / 2)
    tiny_agent.learn(batch, training=False)  # evaluation logs nothing
    assert len(tiny_agent.metrics._additional_metrics["tokens"]) == 2


def test_micro_batch_tokens_is_kept_by_clone_and_checked(make_agent):
    agent = make_agent(micro_batch_tokens=256)
    assert agent.clone().micro_batch_tokens == 256
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        make_agent(micro_batch_tokens=0)


def test_micro_batches_give_the_same_loss(make_agent, tokenizer):
    batch = collate(tokenizer, [SINGLE[0], SINGLE[0]])
    whole = make_agent().learn(batch, training=False)["loss"]
    split = make_agent(micro_batch_size_per_gpu=1).learn(batch, training=False)["loss"]
    assert split == pytest.approx(whole, rel=1e-5)


# ---- AgileRL compatibility ----
def _sft_gym(tokenizer):
    rows = {"prompt": ["What is the capital of France?", "Hi", "Name a colour.", "What is 2 + 2?"],
            "response": ["Paris.", "Hello!", "Blue.", "4"]}
    return dataset_env(Dataset.from_dict(rows), Dataset.from_dict(rows), tokenizer, data_batch_size_per_gpu=2,
                       response_column="response")


def test_learn_accepts_a_plain_sftgym_batch(tiny_agent, tokenizer):
    assert tokenizer.padding_side == "right"
    env = _sft_gym(tokenizer)
    batch = env.reset()
    assert "loss_mask" not in batch
    out = tiny_agent.learn(batch)
    assert math.isfinite(out["loss"]) and out["loss"] > 0
    # masked by prompt_lengths: equals the hand CE over the response (+eos) tokens
    mask = torch.zeros_like(batch["attention_mask"])
    for r, n in enumerate(batch["prompt_lengths"]):
        mask[r, n:] = 1
    expected, _ = manual_ce(tiny_agent, {**batch, "loss_mask": mask})
    assert tiny_agent.learn(batch, training=False)["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_agilerl_sft_loop_runs_a_selfsft_agent(tiny_agent, tokenizer):
    env = _sft_gym(tokenizer)  # finetune_llm_sft on SFTGym (2.10), train_llm_dataset on DatasetEnv (2.58)
    before = lora_params(tiny_agent, "actor", copy=True)
    pop, fitnesses = sft_training_loop()(pop=[tiny_agent], env=env, max_steps=4, evaluation_interval=1, verbose=False)
    assert len(pop) == 1 and pop[0] is tiny_agent
    after = lora_params(tiny_agent, "actor", copy=True)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert tiny_agent.fitness and all(math.isfinite(f) for f in tiny_agent.fitness)


# ---- clone and constructor ----
def test_clone_keeps_tokenizer_sampling_attributes_and_weights(make_agent, tokenizer):
    agent = make_agent(num_generations=3, sampling_temperature=0.6, max_new_tokens=5, kl_coef=0.2, top_p=0.9, top_k=7)
    train_steps(agent, collate(tokenizer, SINGLE), 2)
    clone = agent.clone(index=4)
    assert clone.tokenizer is agent.tokenizer
    assert clone.index == 4
    for name in ("num_generations", "sampling_temperature", "max_new_tokens", "kl_coef", "top_p", "top_k",
                 "generation_batch_size", "lr"):
        assert getattr(clone, name) == getattr(agent, name), name
    a, b = lora_params(agent, "actor", copy=True), lora_params(clone, "actor", copy=True)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[n], b[n].to(a[n].device)) for n in a)
    torch.manual_seed(0)
    greedy = agent.sample(PROMPTS[:2], greedy=True).texts
    assert clone.sample(PROMPTS[:2], greedy=True).texts == greedy
    texts = clone.generate(PROMPTS[:2])
    assert [len(t) for t in texts] == [3, 3]


@pytest.mark.parametrize(("kwargs", "match"), [({"num_generations": 0}, "num_generations"),
                                                ({"kl_coef": -0.1}, "kl_coef")])
def test_constructor_errors(make_agent, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_agent(**kwargs)


def test_defaults(tiny_agent):
    assert tiny_agent.use_separate_reference_adapter is True
    assert tiny_agent.kl_coef == 0.0 and tiny_agent.num_generations == 2 and tiny_agent.max_new_tokens == 8
    assert tiny_agent.max_output_tokens == 8  # AgileRL's name for it follows
    tiny_agent.max_new_tokens = 3
    assert tiny_agent.max_output_tokens == 3
