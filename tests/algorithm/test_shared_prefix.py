"""A prompt prefix shared by every row goes through the model once: the same outputs and gradients as the whole
batch, on every architecture family without an attention window, and the same learning in SelfSFT."""

from __future__ import annotations

import copy

import pytest
import torch

from agilerl_selfsft.algorithm.shared_prefix import (
    MIN_SAVED_POSITIONS,
    forward_with_shared_prefix,
    shared_prefix_length,
)
from agilerl_selfsft.data.chat import collate

from architectures import CASES, FAMILIES, build  # noqa: I001  (tests/: the tiny model of each family)
from conftest import lora_params

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "What is the capital of Peru?"}, {"role": "assistant", "content": "Lima, I think."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help you today?"}],
    [{"role": "user", "content": "What is the capital of Chad?"}, {"role": "assistant", "content": "N'Djamena."}],
    [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Seven."}],
]  # five rows: running their ~24 shared tokens once saves ~96 positions (enough, MIN_SAVED_POSITIONS)
UNWINDOWED = [case for case in CASES if FAMILIES[case.split("+")[0]][3] is None]  # no attention window


def keep_of(batch):
    return (batch["loss_mask"] * batch["attention_mask"])[:, 1:].bool()


def test_the_shared_prefix_ends_where_rows_differ_or_a_label_is_read():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 0], [1, 2, 3, 4, 9, 9, 9], [1, 2, 3, 4, 5, 0, 0]])
    mask = (ids != 0).long()
    none = torch.zeros(3, 6, dtype=torch.bool)
    assert shared_prefix_length(ids, mask, none, minimum=1, min_saved=1) == 4  # the rows part after 4 tokens
    read = none.clone()
    read[1, 2] = True  # position 2's hidden state is read (it predicts token 3)
    assert shared_prefix_length(ids, mask, read, minimum=1, min_saved=1) == 2
    same = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    none2 = torch.zeros(2, 3, dtype=torch.bool)
    assert shared_prefix_length(same, torch.ones_like(same), none2, minimum=1, min_saved=1) == 3
    assert shared_prefix_length(ids, mask, none, minimum=5, min_saved=1) == 0  # too short to be worth a pass
    assert shared_prefix_length(ids[:1], mask[:1], none[:1], minimum=1, min_saved=1) == 0  # one row: nothing to share


def test_a_prefix_is_shared_only_where_it_saves_enough_positions():
    # 24 shared tokens (about a system turn): two rows save 24 positions, too few to repay the second pass
    # (measured 0.78-1.12x); four rows save 72 (MIN_SAVED_POSITIONS = 64)
    ids = torch.cat([torch.arange(1, 25).repeat(6, 1), torch.arange(100, 106)[:, None].repeat(1, 5)], dim=1)
    mask, keep = torch.ones_like(ids), torch.zeros(6, ids.shape[1] - 1, dtype=torch.bool)
    keep[:, 24:] = True
    assert MIN_SAVED_POSITIONS == 64
    assert shared_prefix_length(ids[:2], mask[:2], keep[:2]) == 0
    assert shared_prefix_length(ids[:3], mask[:3], keep[:3]) == 0  # 48 saved
    assert shared_prefix_length(ids[:4], mask[:4], keep[:4]) == 24  # 72 saved
    assert shared_prefix_length(ids[:2], mask[:2], keep[:2], min_saved=24) == 24


@pytest.mark.parametrize("case", UNWINDOWED)
def test_the_prefix_run_once_gives_the_whole_batchs_outputs_and_gradients(case, tokenizer):
    model = copy.deepcopy(build(case, len(tokenizer)))  # eval mode: no dropout, gradients on
    batch = collate(tokenizer, CHATS)
    keep = keep_of(batch)
    prefix = shared_prefix_length(batch["input_ids"], batch["attention_mask"], keep)
    assert prefix >= 20  # the chat template's system turn (and the user turn's start) is shared
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    vocab = model.config.get_text_config().vocab_size
    weights = torch.randn(*keep.shape, vocab, generator=torch.Generator().manual_seed(0))

    def loss_and_grads(logits_from):
        model.zero_grad()
        logits = logits_from()[:, :-1][keep]
        loss = (logits * weights[keep]).sum()
        loss.backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole, whole_grads = loss_and_grads(lambda: model(**kwargs).logits)
    shared, shared_grads = loss_and_grads(
        lambda: torch.nn.functional.pad(forward_with_shared_prefix(model, kwargs, prefix), (0, 0, prefix, 0)))
    torch.testing.assert_close(shared, whole, rtol=1e-4, atol=1e-5)
    assert whole_grads.keys() == shared_grads.keys() and whole_grads
    flat = {name: torch.cat([g[n].flatten() for n in sorted(g)]) for name, g in (("shared", shared_grads),
                                                                                ("whole", whole_grads))}
    # one norm for all: some gradients are zero in exact arithmetic (a key bias shifts every score of a query
    # alike), so elementwise they are rounding noise either way
    assert (flat["shared"] - flat["whole"]).norm() <= 1e-5 * flat["whole"].norm()


def test_selfsft_learns_the_same_with_the_prefix_run_once(make_agent, tokenizer):
    shared, whole = make_agent(kl_coef=0.5, lr=1e-2), make_agent(kl_coef=0.5, lr=1e-2)
    whole.share_prompt_prefix = False
    batch = collate(tokenizer, CHATS)
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    assert shared._shared_prefix(kwargs, keep_of(batch)) >= 20 and whole._shared_prefix(kwargs, keep_of(batch)) == 0
    for _ in range(4):
        a, b = shared.learn(batch), whole.learn(batch)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-7)
    assert a["kl"] > 1e-4
    want, got = lora_params(whole, copy=True), lora_params(shared, copy=True)
    assert all(torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-6) for name in want)


def test_no_prefix_is_shared_while_training_with_lora_dropout_or_gradient_checkpointing(make_agent, tokenizer):
    from peft import LoraConfig

    batch = collate(tokenizer, CHATS)
    kwargs, keep = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, keep_of(batch)
    dropout = make_agent(lora_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.1,
                                                task_type="CAUSAL_LM"))
    checkpointed = make_agent(gradient_checkpointing=True)
    for agent in (dropout, checkpointed):
        agent.actor.train()
        assert agent._shared_prefix(kwargs, keep) == 0
        agent.actor.eval()  # the reference pass (no dropout, no backward) still shares it
        assert agent._shared_prefix(kwargs, keep) >= 20
