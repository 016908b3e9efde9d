"""The decode loop against transformers' own ``generate``: shared-prefix prefill, K rows per prompt, dropped and
refilled rows, LoRA folded into the weights."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from agilerl_selfsft.data.chat import render_prompt
from agilerl_selfsft.generation.decode import Sampling, draw, sample
from agilerl_selfsft.generation.folding import merged_lora

PROMPTS = ["What is the capital of France?", "Hi", "Name a colour, please, any colour you like.", "What is 2 + 2?"]


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    """A tiny model with large weights: its greedy completions differ from prompt to prompt and token to token
    (the default initialisation just repeats the prompt's last token). Every architecture family is checked
    against ``generate`` in ``test_decode_architectures.py``; this file checks the loop's own bookkeeping."""
    return tiny_model_factory(3, initializer_range=0.5)


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
    assert three.batch_rows == [12] and three.peak_rows == 12


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


@pytest.mark.parametrize(("share", "drop", "refill"), [(False, False, False), (False, True, True), (True, False, False), (True, True, False)])
def test_sharing_dropping_and_refilling_change_the_work_not_the_tokens(model, tokenizer, texts, share, drop, refill):
    free = sample(model, tokenizer, texts, 1, Sampling(max_new_tokens=8, stop_token_ids=[2], greedy=True))
    stops = [2, free.token_ids[1][0][1], free.token_ids[2][0][4]]  # "Hi" ends by step 2, the 3rd prompt by step 5
    sampling = Sampling(max_new_tokens=8, stop_token_ids=stops, greedy=True)
    fast = sample(model, tokenizer, texts, 2, sampling, max_batch_rows=4)
    assert len({len(rows[0]) for rows in fast.token_ids}) > 1 and len(fast.batch_rows) > 2  # rows drop, refill
    plain = sample(model, tokenizer, texts, 2, sampling, max_batch_rows=4, share_prompts=share, drop_finished=drop,
                   refill=refill)
    assert plain.token_ids == fast.token_ids and plain.finished == fast.finished
    assert plain.computed_rows >= fast.computed_rows


@pytest.mark.parametrize("share", [True, False])
def test_greedy_last_decodes_each_prompts_last_row_greedily_among_hot_samples(model, tokenizer, texts, share):
    # evaluation's greedy answers ride in the batch of its samples: the last of each prompt's K rows must be the
    # greedy completion (rows dropping out and refilling around it), the others drawn at the temperature
    free = sample(model, tokenizer, texts, 1, Sampling(max_new_tokens=8, stop_token_ids=[2], greedy=True))
    stops = [2, free.token_ids[1][0][1]]  # "Hi"'s greedy row ends at step 2, before the others
    greedy = sample(model, tokenizer, texts, 1, Sampling(max_new_tokens=8, stop_token_ids=stops, greedy=True))
    torch.manual_seed(0)
    both = sample(model, tokenizer, texts, 4, Sampling(max_new_tokens=8, stop_token_ids=stops, temperature=50.0,
                                                       greedy_last=True), max_batch_rows=8, share_prompts=share)
    assert [rows[-1] for rows in both.token_ids] == [rows[0] for rows in greedy.token_ids]
    assert [rows[-1] for rows in both.finished] == [rows[0] for rows in greedy.finished]
    assert len(both.batch_rows) > 1 and all(len(rows) == 4 for rows in both.token_ids)  # refilled, K rows each
    # the 12 drawn rows, nearly uniform over the vocabulary, are (almost) never the greedy completion
    assert sum(ids != g[0] for rows, g in zip(both.token_ids, greedy.token_ids) for ids in rows[:-1]) >= 10
    with pytest.raises(ValueError, match="greedy_last"):
        Sampling(max_new_tokens=8, stop_token_ids=stops, greedy=True, greedy_last=True)


def test_freed_rows_are_refilled_with_waiting_prompts(model, tokenizer, texts):
    # stop on the 2nd greedy token of "Hi": its rows end early, and a waiting prompt takes them
    free = sample(model, tokenizer, texts, 1, Sampling(max_new_tokens=10, stop_token_ids=[2], greedy=True))
    stops = [2, free.token_ids[1][0][1]]
    sampling = Sampling(max_new_tokens=10, stop_token_ids=stops, greedy=True)
    batches = sample(model, tokenizer, texts, 2, sampling, max_batch_rows=4, refill=False)
    refilled = sample(model, tokenizer, texts, 2, sampling, max_batch_rows=4)
    # the same tokens as transformers, one prompt at a time, whatever row they were decoded in
    for i, text in enumerate(texts):
        assert refilled.token_ids[i] == [hf_greedy(model, tokenizer, text, 10, stops)] * 2
    assert refilled.token_ids == batches.token_ids
    assert len(refilled.token_ids[1][0]) == 2 and len(refilled.token_ids[3][0]) > 2  # "Hi" and "2 + 2" share a batch
    assert refilled.peak_rows == batches.peak_rows == 4
    assert batches.batch_rows == [4, 4]
    assert refilled.batch_rows == [4, 2, 2]  # after "Hi" ended, one prompt at a time into the two free rows
    assert refilled.computed_rows == refilled.num_tokens


@pytest.fixture
def lora_model(make_agent, tiny_model_factory):
    """A PEFT actor whose adapter is far from a no-op (random B), so folding it in is visible."""
    agent = make_agent(model=tiny_model_factory(0, initializer_range=0.5))
    with torch.no_grad():
        for name, p in agent.actor.named_parameters():
            if "lora_B.actor" in name:
                p.normal_(0, 0.5)
    agent.actor.eval()
    return agent.actor


def test_folded_lora_computes_what_the_adapter_computes_and_writes_nothing(lora_model, tokenizer, texts):
    ids = tokenizer(texts[0], return_tensors="pt")["input_ids"]
    before = {n: p.detach().clone() for n, p in lora_model.named_parameters()}
    with torch.no_grad():
        unmerged = lora_model(input_ids=ids).logits
        with lora_model.disable_adapter():
            base = lora_model(input_ids=ids).logits
        with merged_lora(lora_model) as forward:
            assert not isinstance(forward, torch.nn.Module)  # the folded function, not the model
            merged = forward(input_ids=ids).logits
        after = lora_model(input_ids=ids).logits
    assert (unmerged - base).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    assert torch.equal(after, unmerged)  # adapters are active again
    assert all(torch.equal(p, before[n]) for n, p in lora_model.named_parameters())


def test_sampling_with_folded_lora_gives_the_adapter_tokens(lora_model, tokenizer, texts):
    sampling = Sampling(max_new_tokens=8, stop_token_ids=[2], greedy=True)
    folded = sample(lora_model, tokenizer, texts, 2, sampling)
    unfolded = sample(lora_model, tokenizer, texts, 2, sampling, merge_lora=False)
    assert folded.token_ids == unfolded.token_ids
    for i, text in enumerate(texts):
        assert folded.token_ids[i][0] == hf_greedy(lora_model, tokenizer, text, 8, [2])


def test_draw_follows_the_probabilities_and_never_draws_a_zero():
    # rows with zeros inside and at the end (a top-k cut), a vocabulary that is no multiple of the block size
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(3, 1000) * 2, -1)
    probs[:, 700:] = 0
    probs[0, 5] = probs[1, :300].fill_(0)[0]
    probs /= probs.sum(-1, keepdim=True)
    n = 60000
    drawn = draw(probs.repeat(n, 1)).view(n, 3)
    for r in range(3):
        counts = torch.bincount(drawn[:, r], minlength=1000).double()
        assert counts[probs[r] == 0].sum() == 0
        live = probs[r] > 0
        assert chisquare(counts[live].numpy(), (probs[r][live].double() / probs[r][live].double().sum() * n).numpy()).pvalue > 1e-3
    torch.manual_seed(7)
    first = draw(probs)
    torch.manual_seed(7)
    assert torch.equal(draw(probs), first)  # it follows torch's seed
