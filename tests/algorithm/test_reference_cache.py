"""The reference adapter's hidden states kept per sample: the same losses and updates as recomputing them, and
nothing stale once the reference changes."""

from __future__ import annotations

import pytest
import torch

from agilerl_selfsft.algorithm.reference_cache import ReferenceCache, row_keys
from agilerl_selfsft.data.chat import collate

from conftest import lora_params

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help you today?"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky."}],
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "user", "content": "Say something nice."}, {"role": "assistant", "content": "You are doing great."}],
]


def test_kept_reference_states_give_the_same_losses_and_updates_as_recomputing(make_agent, tokenizer):
    cached, plain = make_agent(kl_coef=0.5, lr=1e-2), make_agent(kl_coef=0.5, lr=1e-2)
    plain.reference_cache_mb = 0
    # a batch, one that shares two of its rows (in other positions, padded to another width), then the first again
    batches = [collate(tokenizer, CHATS[:3]), collate(tokenizer, [CHATS[3], CHATS[2], CHATS[4], CHATS[0]]),
               collate(tokenizer, CHATS[:3])]
    for batch in batches + batches:
        a, b = cached.learn(batch), plain.learn(batch)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-7)
    assert a["kl"] > 1e-4  # the actor has moved away from the reference: the KL term is live
    cache = cached._reference_cache
    assert (cache.misses, cache.hits, len(cache)) == (5, 3 + 4 + 3 + 3 + 4 + 3 - 5, 5)  # each row computed once
    assert plain._reference_cache is None
    want, got = lora_params(plain, copy=True), lora_params(cached, copy=True)
    assert all(torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-6) for name in want)


def test_a_changed_reference_is_not_served_from_the_cache(make_agent, tokenizer):
    agent = make_agent(kl_coef=0.5, lr=1e-2)
    batch = collate(tokenizer, CHATS[:3])
    for _ in range(3):
        agent.learn(batch)
    assert agent.learn(batch, training=False)["kl"] > 1e-4
    agent.set_reference_policy(agent.reference_update_tracker + 1)  # AgileRL copies the actor into the reference
    assert agent.learn(batch, training=False)["kl"] == pytest.approx(0.0, abs=1e-6)  # actor == reference again
    assert agent._reference_cache.misses == 3 + 3  # computed at the first call, and again after the change


def test_the_cache_is_off_without_a_kl_term(make_agent, tokenizer):
    agent = make_agent(kl_coef=0.0)
    agent.learn(collate(tokenizer, CHATS[:2]))
    assert agent._reference_cache is None


def test_row_keys_name_tokens_and_labels_not_padding(tokenizer):
    short, wide = collate(tokenizer, CHATS[:2]), collate(tokenizer, [CHATS[1], CHATS[0], CHATS[1]])
    assert wide["input_ids"].shape[1] == short["input_ids"].shape[1]  # the same rows, the same width ...
    padded = {name: torch.nn.functional.pad(t, (0, 7))  # ... and the first batch padded wider
              for name, t in short.items() if torch.is_tensor(t) and t.dim() == 2}

    def keys(batch, mask=None):
        labels = batch["loss_mask"] if mask is None else mask
        keep = (labels * batch["attention_mask"])[:, 1:].bool()
        return row_keys(batch["input_ids"], batch["attention_mask"], keep)

    first = keys(short)
    assert first == keys(padded)
    assert keys(wide) == [first[1], first[0], first[1]]
    assert len(set(first)) == 2
    all_labelled = torch.ones_like(short["loss_mask"])
    assert keys(short, all_labelled)[0] != first[0]  # other labelled positions, other key


def test_the_cache_keeps_the_most_recently_used_rows_within_its_budget():
    row = torch.zeros(4, 8)  # 128 bytes
    cache = ReferenceCache(max_bytes=3 * 128)
    for key in (b"a", b"b", b"c"):
        cache.put(key, row)
    cache.get(b"a")  # now the most recent
    cache.put(b"d", row)
    assert (b"a" in cache, b"b" in cache, b"c" in cache, b"d" in cache) == (True, False, True, True)
    assert cache.bytes == 3 * 128
    cache.put(b"huge", torch.zeros(100, 8))  # larger than the whole budget: not kept, nothing dropped for it
    assert b"huge" not in cache and len(cache) == 3
    kept = cache.get(b"d")
    assert kept.device.type == "cpu" and kept.data_ptr() != row.data_ptr()  # a host copy
