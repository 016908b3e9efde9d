"""Length buckets: the plan (pure), and learn on buckets equals learn on the whole, untrimmed micro-batch."""

from __future__ import annotations

import math
import random

import pytest
import torch
from agilerl.algorithms.core.base import LLMAlgorithm

from agilerl_selfsft.algorithm.batching import Bucket, padding_fraction, plan_buckets, row_extents
from agilerl_selfsft.data.chat import collate

from conftest import lora_config, lora_params

WORDS = "the capital of France is Paris and it lies on the river Seine in the north of the country".split()


def reply(n_words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_words)).capitalize() + "."


def mixed_chats(n: int = 10, seed: int = 0) -> list[list[dict[str, str]]]:
    """Single-turn chats whose replies run from one word to ~60, with prompts of different lengths."""
    rng = random.Random(seed)
    chats = []
    for i in range(n):
        words = rng.choice([1, 2, 3, 5, 8, 20, 40, 60])
        prompt = "Question " + " ".join(["please"] * rng.randint(0, 6)) + f" number {i}?"
        chats.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": reply(words)}])
    return chats


def mixed_batch(tokenizer, n: int = 10, seed: int = 0) -> dict:
    batch = collate(tokenizer, mixed_chats(n, seed))
    lengths = batch["attention_mask"].sum(1)
    assert lengths.max() > 2 * lengths.min()  # really mixed (the template adds a ~30-token system prompt)
    return batch


def learn_grads(agent, batch, backward_calls: list | None = None) -> tuple[dict, dict]:
    """``agent.learn(batch)`` with the optimizer step left out: (the learn result, the accumulated LoRA grads)."""
    params = lora_params(agent)
    for p in params.values():
        p.grad = None

    def backward_only(loss, **_):
        if backward_calls is not None:
            backward_calls.append(float(loss.detach()))
        loss.backward()

    agent._backward_pass = backward_only
    out = agent.learn(batch)
    del agent._backward_pass
    return out, {n: p.grad.detach().clone() for n, p in params.items()}


def whole_batch_grads(agent, batch) -> tuple[float, float, dict]:
    """The unbucketed reference: one forward of the whole, untrimmed batch; its token-mean CE, KL and the
    gradient of CE + ``kl_coef`` × KL."""
    mask = batch.get("loss_mask")
    if mask is None:
        mask = LLMAlgorithm._create_prompt_masks(batch["prompt_lengths"], max_length=batch["input_ids"].shape[1])
    mask = (mask * batch["attention_mask"])[:, 1:]
    labels = torch.where(mask.bool(), batch["input_ids"][:, 1:], -100)
    params = lora_params(agent)
    for p in params.values():
        p.grad = None
    ce, kl = agent._selfsft_loss(batch["input_ids"], batch["attention_mask"].long(), labels, True)
    (ce + agent.kl_coef * kl).backward()
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    for p in params.values():
        p.grad = None
    return float(ce.detach()), float(kl.detach()), grads


def assert_grads_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    scale = max(float(g.abs().max()) for g in b.values())
    assert scale > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def count_forwards(agent) -> list[tuple[int, int]]:
    """Record the (rows, width) of every forward pass ``learn`` makes."""
    real = agent._selfsft_loss
    shapes = []

    def counting(input_ids, *args, **kwargs):
        shapes.append(tuple(input_ids.shape))
        return real(input_ids, *args, **kwargs)

    agent._selfsft_loss = counting
    return shapes


# ---- the plan ----
def test_row_extents_right_left_and_empty_rows():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    assert row_extents(mask) == [3, 5, 5, 0, 1]


def check_plan(buckets, rows, extents, labelled, max_tokens=None):
    planned = [r for b in buckets for r in b.rows]
    assert sorted(planned) == sorted(r for r in rows if labelled[r])  # every labelled row once, nothing else
    for b in buckets:
        assert b.length == max(extents[r] for r in b.rows)
        if max_tokens is not None and len(b.rows) > 1:
            assert b.computed_tokens <= max_tokens


def test_one_row_is_one_bucket_of_its_length():
    assert plan_buckets([0], [7], [True]) == [Bucket((0,), 7)]


def test_equal_lengths_make_one_bucket_without_padding():
    extents = [12] * 6
    buckets = plan_buckets(range(6), extents, [True] * 6)
    assert buckets == [Bucket(tuple(range(6)), 12)]


def test_mixed_lengths_give_few_buckets_with_little_padding():
    rng = random.Random(1)
    extents = [rng.choice([20, 25, 30]) + rng.randint(0, 3) for _ in range(24)]
    extents += [rng.randint(100, 140) for _ in range(8)]
    rows = list(range(len(extents)))
    buckets = plan_buckets(rows, extents, [True] * len(rows))
    check_plan(buckets, rows, extents, [True] * len(rows))
    computed = sum(b.computed_tokens for b in buckets)
    assert padding_fraction(computed, sum(extents)) <= 0.1
    assert padding_fraction(len(rows) * max(extents), sum(extents)) > 0.5  # what one padded batch wastes
    assert len(buckets) <= 4
    assert [b.length for b in buckets] == sorted((b.length for b in buckets), reverse=True)  # longest first


def all_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in all_partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first, *part[i]]] + part[i + 1 :]
        yield [[first], *part]


@pytest.mark.parametrize("seed", range(6))
def test_plan_is_the_fewest_buckets_within_the_padding_bound_and_the_least_padding_among_them(seed):
    """Against brute force over every partition of the rows (not only splits of the sorted order)."""
    rng = random.Random(seed)
    n = 7
    extents = [rng.randint(1, 40) for _ in range(n)]
    max_tokens = rng.choice([None, 60])
    max_padding = rng.choice([0.0, 0.1, 0.3])
    buckets = plan_buckets(range(n), extents, [True] * n, max_tokens=max_tokens, max_padding=max_padding)
    check_plan(buckets, range(n), extents, [True] * n, max_tokens)

    def cost(part):
        computed = sum(len(g) * max(extents[r] for r in g) for g in part)
        ok = all(len(g) == 1 or max_tokens is None or len(g) * max(extents[r] for r in g) <= max_tokens for g in part)
        return ok, padding_fraction(computed, sum(extents)), computed

    feasible = []
    for part in all_partitions(list(range(n))):
        ok, fraction, computed = cost(part)
        if ok and fraction <= max_padding + 1e-12:
            feasible.append((len(part), computed))
    fewest = min(k for k, _ in feasible)
    least = min(c for k, c in feasible if k == fewest)
    assert len(buckets) == fewest
    assert sum(b.computed_tokens for b in buckets) == least


def test_rows_longer_than_the_token_budget_get_a_bucket_each():
    extents = [50, 48, 9, 8, 8, 7]
    buckets = plan_buckets(range(6), extents, [True] * 6, max_tokens=32)
    check_plan(buckets, range(6), extents, [True] * 6, max_tokens=32)
    assert Bucket((0,), 50) in buckets and Bucket((1,), 48) in buckets
    assert all(b.computed_tokens <= 32 for b in buckets if len(b.rows) > 1)


def test_rows_without_labels_are_left_out_and_an_unlabelled_micro_batch_is_one_bucket():
    extents = [10, 30, 12]
    assert plan_buckets(range(3), extents, [True, False, True]) == [Bucket((0, 2), 12)]
    assert plan_buckets([1, 2], extents, [True, False, False]) == [Bucket((1, 2), 30)]


def test_no_split_is_one_trimmed_bucket():
    extents = [10, 30, 12, 0]
    assert plan_buckets(range(4), extents, [True, True, True, False], split=False) == [Bucket((0, 1, 2), 30)]


# ---- learn on buckets == learn on the whole micro-batch ----
def test_bucketed_loss_and_gradient_equal_the_whole_batch(make_agent, tokenizer):
    batch = mixed_batch(tokenizer)
    agent = make_agent(batch_size=10)
    expected_loss, _, expected = whole_batch_grads(agent, batch)
    shapes = count_forwards(agent)
    calls = []
    out, grads = learn_grads(agent, batch, calls)
    assert len(shapes) > 1  # really bucketed
    assert all(width < batch["input_ids"].shape[1] for _, width in shapes[1:])
    assert len(calls) == 1  # one optimizer step for the micro-batch, as before
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(expected_loss), rel=1e-5)
    assert_grads_close(grads, expected)
    assert out["padding"] <= 0.1
    assert out["tokens"] == int(batch["attention_mask"].sum())


@pytest.mark.agilerl210  # DeepSpeed (agilerl 2.10's engine); 2.58 has none
def test_deepspeed_path_makes_one_backward_of_the_summed_buckets(make_agent, tokenizer):
    """Under DeepSpeed the engine must see one backward per micro-batch: the bucket losses go in together."""
    batch = mixed_batch(tokenizer)
    agent = make_agent(batch_size=10)
    expected_loss, _, expected = whole_batch_grads(agent, batch)
    agent._uses_deepspeed = True  # only the backward route changes; _backward_pass is replaced below
    shapes = count_forwards(agent)
    calls = []
    out, grads = learn_grads(agent, batch, calls)
    assert len(shapes) > 1
    assert calls == [pytest.approx(expected_loss, rel=1e-5)]
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert_grads_close(grads, expected)


def test_tight_token_budget_and_kl_term_keep_the_gradient(make_agent, tokenizer):
    batch = mixed_batch(tokenizer, seed=3)
    agent = make_agent(batch_size=10, kl_coef=0.5, micro_batch_tokens=8)
    torch.manual_seed(1)
    with torch.no_grad():  # move the actor off the reference, so the KL and its gradient are not zero
        for name, p in lora_params(agent).items():
            if "lora_B" in name:
                p.normal_(std=0.05)
    expected_ce, expected_kl, expected = whole_batch_grads(agent, batch)
    assert expected_kl > 1e-6
    shapes = count_forwards(agent)
    out, grads = learn_grads(agent, batch)
    assert len(shapes) == batch["input_ids"].shape[0]  # every row is longer than 8 tokens: one bucket each
    assert out["padding"] == 0.0
    assert out["loss"] == pytest.approx(expected_ce, rel=1e-5)
    assert out["kl"] == pytest.approx(expected_kl, rel=1e-4)
    assert_grads_close(grads, expected)


def test_one_row_and_equal_lengths(make_agent, tokenizer):
    agent = make_agent(batch_size=3)
    one = collate(tokenizer, mixed_chats(1))
    expected_loss, _, expected = whole_batch_grads(agent, one)
    out, grads = learn_grads(agent, one)
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-5) and out["padding"] == 0.0
    assert_grads_close(grads, expected)

    chat = mixed_chats(1)[0]
    same = collate(tokenizer, [chat, chat, chat])
    expected_loss, _, expected = whole_batch_grads(agent, same)
    shapes = count_forwards(agent)
    out, grads = learn_grads(agent, same)
    assert shapes == [tuple(same["input_ids"].shape)] and out["padding"] == 0.0
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert_grads_close(grads, expected)


def test_micro_batches_keep_their_rows_and_steps(make_agent, tokenizer):
    """micro_batch_size_per_gpu=5 on 10 rows: two micro-batches (two backward passes), each its own token mean."""
    batch = mixed_batch(tokenizer)
    agent = make_agent(batch_size=10, micro_batch_size_per_gpu=5)
    expected = []
    for rows in (slice(0, 5), slice(5, 10)):
        part = {k: v[rows] for k, v in batch.items()}
        expected.append(whole_batch_grads(agent, part)[0])
    shapes = count_forwards(agent)
    calls = []
    out, _ = learn_grads(agent, batch, calls)
    assert len(calls) == 2
    assert out["loss"] == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert sum(rows for rows, _ in shapes) == 10


@pytest.mark.agilerl210  # DeepSpeed (agilerl 2.10's engine); 2.58 has none
def test_micro_batches_under_deepspeed_each_make_one_backward(make_agent, tokenizer):
    """micro_batch_size_per_gpu=4 on 10 rows: under DeepSpeed each of the three backward passes gets its
    micro-batch's whole token-mean loss."""
    batch = mixed_batch(tokenizer)
    agent = make_agent(batch_size=10, micro_batch_size_per_gpu=4)
    expected = [whole_batch_grads(agent, {k: v[rows] for k, v in batch.items()})[0]
                for rows in (slice(0, 4), slice(4, 8), slice(8, 10))]
    agent._uses_deepspeed = True
    calls = []
    learn_grads(agent, batch, calls)
    assert calls == pytest.approx(expected, rel=1e-5)


def test_rows_without_reply_tokens_are_skipped_and_an_empty_batch_still_steps(make_agent, tokenizer):
    batch = mixed_batch(tokenizer)
    batch["loss_mask"][[1, 4]] = 0
    agent = make_agent(batch_size=10)
    expected_loss, _, expected = whole_batch_grads(agent, batch)
    shapes = count_forwards(agent)
    out, grads = learn_grads(agent, batch)
    assert sum(rows for rows, _ in shapes) == 8
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert_grads_close(grads, expected)
    # nothing to learn: loss 0, zero (not missing) gradients, and the optimizer step is still taken
    calls = []
    out, grads = learn_grads(agent, {**batch, "loss_mask": torch.zeros_like(batch["loss_mask"])}, calls)
    assert out["loss"] == 0.0 and len(calls) == 1
    assert all(float(g.abs().max()) == 0.0 for g in grads.values())


def test_a_non_finite_bucket_raises_and_leaves_no_gradient(make_agent, tokenizer):
    batch = mixed_batch(tokenizer)
    agent = make_agent(batch_size=10)
    real = agent._selfsft_loss
    calls = []

    def nan_in_second(*args, **kwargs):
        ce, kl = real(*args, **kwargs)
        calls.append(1)
        return (ce * float("nan"), kl) if len(calls) == 2 else (ce, kl)

    agent._selfsft_loss = nan_in_second
    before = {n: p.detach().clone() for n, p in lora_params(agent).items()}
    with pytest.raises(ValueError, match="not finite"):
        agent.learn(batch)
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in lora_params(agent).values())
    assert all(torch.equal(before[n], p) for n, p in lora_params(agent).items())


# ---- the same optimisation as AgileRL's SFT.learn ----
def test_selfsft_learn_equals_agilerl_sft_learn(make_agent, tiny_model_factory, tokenizer):
    """Same weights, same adapters, same batch (masked by prompt_lengths): same loss and the same update."""
    from agilerl.algorithms.sft import SFT

    batch = mixed_batch(tokenizer)
    batch.pop("loss_mask")  # both mask by prompt_lengths, as AgileRL's SFTGym batches do
    ours = make_agent(batch_size=10, micro_batch_size_per_gpu=5, lr=1e-3, max_grad_norm=1.0)
    torch.manual_seed(0)
    sft = SFT(
        pad_token_id=tokenizer.pad_token_id,
        pad_token=tokenizer.pad_token,
        actor_network=tiny_model_factory(),
        lora_config=lora_config(),
        batch_size=10,
        micro_batch_size_per_gpu=5,
        lr=1e-3,
        max_grad_norm=1.0,
        gradient_checkpointing=False,
    )
    theirs = lora_params(sft)
    with torch.no_grad():
        for name, p in lora_params(ours).items():
            theirs[name].copy_(p)
    shapes = count_forwards(ours)
    for _ in range(2):
        a, b = ours.learn(batch), sft.learn(batch)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert len(shapes) > 4  # bucketed: more forward passes than SFT's 2 per call
    for name, p in lora_params(ours).items():
        torch.testing.assert_close(p, theirs[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in lora_params(ours).items() if "lora_B" in n)


# ---- the head and the losses on the picked hidden states ----
def test_token_losses_are_the_cross_entropy_and_kl_of_the_full_softmax():
    from agilerl_selfsft.algorithm.learning import token_losses

    torch.manual_seed(0)
    hidden, ref_hidden = torch.randn(7, 5), torch.randn(7, 5)
    weight = torch.randn(11, 5, requires_grad=True)  # a trainable lm_head: the anchor must not move it
    targets = torch.randint(0, 11, (7,))
    ce, kl = token_losses(hidden, weight, None, targets, ref_hidden)
    logp, ref_logp = (torch.log_softmax(h @ weight.detach().T, -1) for h in (hidden, ref_hidden))
    assert float(ce.detach()) == pytest.approx(float(-logp[torch.arange(7), targets].mean()), rel=1e-6)
    assert float(kl.detach()) == pytest.approx(float((logp.exp() * (logp - ref_logp)).sum(-1).mean()), rel=1e-5)
    kl.backward()
    only_actor = torch.autograd.grad(
        (torch.log_softmax(hidden @ weight.T, -1).exp() * (torch.log_softmax(hidden @ weight.T, -1) - ref_logp))
        .sum(-1).mean(), weight)[0]
    torch.testing.assert_close(weight.grad, only_actor)  # no gradient through the reference's logits
    empty_ce, empty_kl = token_losses(hidden[:0], weight, None, targets[:0])
    assert float(empty_ce.detach()) == 0.0 and float(empty_kl) == 0.0 and empty_ce.requires_grad


def test_learn_goes_through_the_agents_token_losses(make_agent, tokenizer):
    """``agent.token_losses`` is the hook a compiled copy goes in: learn must call it, with the same result."""
    from agilerl_selfsft.algorithm.learning import token_losses

    batch = mixed_batch(tokenizer)
    agent = make_agent(batch_size=10, kl_coef=0.1)
    expected = agent.learn(batch, training=False)
    seen = []

    def recording(hidden, weight, bias, targets, ref_hidden=None):
        seen.append((hidden.shape[0], ref_hidden is not None))
        return token_losses(hidden, weight, bias, targets, ref_hidden)

    agent.token_losses = recording
    out = agent.learn(batch, training=False)
    assert seen and all(kl for _, kl in seen)
    assert sum(n for n, _ in seen) == int((batch["loss_mask"] * batch["attention_mask"])[:, 1:].sum())
    assert out["loss"] == pytest.approx(expected["loss"], rel=1e-6) and out["kl"] == pytest.approx(expected["kl"], abs=1e-7)
