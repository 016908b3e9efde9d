"""The decode loop against transformers' own ``generate``: shared-prefix prefill, K rows per prompt, dropped rows."""

from __future__ import annotations

import pytest
import torch

from agilerl_selfsft.chat import render_prompt
from agilerl_selfsft.generation import Sampling, sample

PROMPTS = ["What is the capital of France?", "Hi", "Name a colour, please, any colour you like.", "What is 2 + 2?"]


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    return tiny_model_factory(3)


@pytest.fixture(scope="module")
def texts(tokenizer):
    # chat-rendered prompts share the template's system turn: the loop prefills it once for all of them
    return [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]


def hf_greedy(model, tokenizer, text, max_new_tokens, stop_ids):
    """transformers' greedy ``generate`` on one unpadded prompt: completion ids up to and including a stop."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                         eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    end = next((j for j, t in enumerate(out) if t in stop_ids), None)
    return out if end is None else out[: end + 1]


def test_greedy_matches_generate_one_prompt_at_a_time(model, tokenizer, texts):
    stops = [2]
    gens = sample(model, tokenizer, texts, 1, Sampling(max_new_tokens=10, stop_token_ids=stops, greedy=True))
    for i, text in enumerate(texts):
        assert gens.token_ids[i][0] == hf_greedy(model, tokenizer, text, 10, stops)
    assert gens.texts == [[tokenizer.decode(ids[0], skip_special_tokens=True).strip()] for ids in gens.token_ids]


def test_rows_that_stop_leave_the_batch_and_the_others_decode_on_unchanged(model, tokenizer, texts):
    free = sample(model, tokenizer, texts, 1, Sampling(max_new_tokens=10, stop_token_ids=[2], greedy=True))
    # make one prompt's 3rd greedy token a stop token: that row must end there, every other row must still
    # produce exactly what transformers produces with the same stop ids
    stop = free.token_ids[0][0][2]
    stops = [2, stop]
    gens = sample(model, tokenizer, texts, 1, Sampling(max_new_tokens=10, stop_token_ids=stops, greedy=True))
    for i, text in enumerate(texts):
        assert gens.token_ids[i][0] == hf_greedy(model, tokenizer, text, 10, stops)
    first = gens.token_ids[0][0]
    assert first[-1] == stop and len(first) <= 3 and gens.finished[0] == [True]
    assert gens.num_tokens == sum(len(ids[0]) for ids in gens.token_ids)
    # a row is computed only while it is live: one row-step per generated token, none after its stop
    assert gens.computed_rows == gens.num_tokens < len(texts) * 10


def test_k_samples_per_prompt_come_from_one_prefill(model, tokenizer, texts):
    # greedy K copies of a prompt are identical; each equals the K=1 result
    one = sample(model, tokenizer, texts, 1, Sampling(max_new_tokens=6, stop_token_ids=[2], greedy=True))
    three = sample(model, tokenizer, texts, 3, Sampling(max_new_tokens=6, stop_token_ids=[2], greedy=True))
    assert three.token_ids == [[ids[0]] * 3 for ids in one.token_ids]
    assert three.batch_rows == [12]


def test_sampled_tokens_follow_the_model_distribution(model, tokenizer):
    # one prompt, a temperature so high that sampling is nearly uniform over the vocabulary: the K rows differ;
    # at a tiny temperature sampling is greedy
    text = render_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
    torch.manual_seed(0)
    hot = sample(model, tokenizer, [text], 4, Sampling(max_new_tokens=5, stop_token_ids=[2], temperature=50.0))
    assert len({tuple(ids) for ids in hot.token_ids[0]}) == 4
    cold = sample(model, tokenizer, [text], 4, Sampling(max_new_tokens=5, stop_token_ids=[2], temperature=1e-4))
    greedy = sample(model, tokenizer, [text], 1, Sampling(max_new_tokens=5, stop_token_ids=[2], greedy=True))
    assert cold.token_ids[0] == greedy.token_ids[0] * 4


def test_top_p_keeps_only_the_nucleus(model, tokenizer):
    # top_p tiny: only the most likely token survives, so sampling equals greedy decoding even when hot
    text = render_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
    nucleus = sample(model, tokenizer, [text], 3, Sampling(max_new_tokens=5, stop_token_ids=[2], temperature=5.0, top_p=1e-6))
    greedy = sample(model, tokenizer, [text], 1, Sampling(max_new_tokens=5, stop_token_ids=[2], greedy=True))
    assert nucleus.token_ids[0] == greedy.token_ids[0] * 3


def test_an_empty_prompt_is_refused(model, tokenizer):
    with pytest.raises(ValueError, match="empty prompt"):
        sample(model, tokenizer, ["Hi", ""], 2, Sampling(max_new_tokens=3, stop_token_ids=[2]))


@pytest.mark.parametrize(("share", "drop"), [(False, False), (False, True), (True, False)])
def test_sharing_and_dropping_change_the_work_not_the_tokens(model, tokenizer, texts, share, drop):
    sampling = Sampling(max_new_tokens=8, stop_token_ids=[2, 30], greedy=True)
    fast = sample(model, tokenizer, texts, 2, sampling)
    plain = sample(model, tokenizer, texts, 2, sampling, share_prompts=share, drop_finished=drop)
    assert plain.token_ids == fast.token_ids and plain.finished == fast.finished
    assert plain.computed_rows >= fast.computed_rows
