"""Choosing the samples to learn from: dedup, threshold, top_k, top_fraction, the random control, truncation."""

from __future__ import annotations

import numpy as np
import pytest

from agilerl_selfsft.env.selection import dedup, select
from agilerl_selfsft.samples import Scored


def s(pid, completion, reward, finished=True, prompt_text="Q?"):
    return Scored(pid, [{"role": "user", "content": prompt_text}, {"role": "assistant", "content": completion}],
                  completion, reward, finished)


def key(samples):
    return [(x.prompt_id, x.completion) for x in samples]


def test_dedup_drops_whitespace_variants_of_the_same_prompt_only():
    samples = [s(0, "Paris is it", 1.0), s(0, "  Paris   is\nit ", 0.5), s(1, "Paris is it", 1.0), s(0, "Lyon", 0.0)]
    out = dedup(samples)
    assert key(out) == [(0, "Paris is it"), (1, "Paris is it"), (0, "Lyon")]
    assert out[0] is samples[0]  # the first one is kept


def test_select_dedups_before_choosing():
    samples = [s(0, "Paris", 1.0), s(0, "Paris ", 1.0), s(0, "paris", 1.0)]
    # case matters for dedup (only whitespace is normalised)
    assert key(select(samples, "threshold", threshold=1.0)) == [(0, "Paris"), (0, "paris")]


def test_threshold_keeps_everything_at_or_above():
    samples = [s(0, "a", 0.2), s(0, "b", 0.5), s(1, "c", 0.7), s(1, "d", 0.49)]
    assert key(select(samples, "threshold", threshold=0.5)) == [(0, "b"), (1, "c")]
    assert select(samples, "threshold", threshold=2.0) == []


def test_top_k_is_per_prompt_id_not_per_prompt_text():
    # two different prompts that happen to have the same text must be ranked separately
    samples = [
        s(0, "a", 0.5, prompt_text="Same?"), s(0, "b", 0.9, prompt_text="Same?"), s(0, "c", 0.7, prompt_text="Same?"),
        s(1, "d", 0.6, prompt_text="Same?"), s(1, "e", 0.8, prompt_text="Same?"),
        s(2, "f", 0.1, prompt_text="Other?"),
    ]
    out = select(samples, "top_k", threshold=0.3, k=1)
    assert key(out) == [(0, "b"), (1, "e")]  # prompt 2 has nothing above threshold
    out = select(samples, "top_k", threshold=0.3, k=2)
    assert sorted(key(out)) == [(0, "b"), (0, "c"), (1, "d"), (1, "e")]


def test_top_k_ties_keep_generation_order():
    samples = [s(0, "first", 1.0), s(0, "second", 1.0), s(0, "third", 1.0)]
    assert key(select(samples, "top_k", threshold=0.0, k=2)) == [(0, "first"), (0, "second")]


def test_top_fraction_keeps_the_best_share_of_all_samples():
    samples = [s(i % 3, f"c{i}", r) for i, r in enumerate([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4])]
    out = select(samples, "top_fraction", threshold=0.0, fraction=0.25)  # ceil(0.25 * 8) = 2
    assert [x.reward for x in out] == [0.9, 0.8]
    out = select(samples, "top_fraction", threshold=0.0, fraction=0.3)  # ceil(2.4) = 3
    assert [x.reward for x in out] == [0.9, 0.8, 0.7]
    # the threshold still applies
    out = select(samples, "top_fraction", threshold=0.85, fraction=0.5)
    assert [x.reward for x in out] == [0.9]


def test_random_control_keeps_as_many_as_threshold_and_is_reproducible():
    samples = [s(i % 5, f"c{i}", float(i % 4 == 0)) for i in range(40)]
    n_threshold = len(select(samples, "threshold", threshold=1.0))
    assert n_threshold == 10
    a = select(samples, "random", threshold=1.0, rng=np.random.default_rng(7))
    b = select(samples, "random", threshold=1.0, rng=np.random.default_rng(7))
    assert len(a) == n_threshold
    assert key(a) == key(b)
    assert len({id(x) for x in a}) == len(a)  # no sample twice
    # ignores the reward: over a few seeds, low-reward samples get picked
    picked_rewards = [
        x.reward for seed in range(5) for x in select(samples, "random", 1.0, rng=np.random.default_rng(seed))
    ]
    assert 0.0 in picked_rewards
    assert select([s(0, "a", 0.0)], "random", threshold=1.0, rng=np.random.default_rng(0)) == []


def test_truncated_samples_are_dropped_unless_kept():
    samples = [s(0, "done", 1.0, finished=True), s(0, "cut off", 1.0, finished=False)]
    for strategy in ("threshold", "top_k", "top_fraction"):
        assert key(select(samples, strategy, threshold=1.0, k=5, fraction=1.0)) == [(0, "done")]
    kept = select(samples, "threshold", threshold=1.0, keep_truncated=True)
    assert key(kept) == [(0, "done"), (0, "cut off")]
    # random draws from the finished pool only
    out = select(samples, "random", threshold=1.0, rng=np.random.default_rng(0))
    assert key(out) == [(0, "done")]


def test_unknown_strategy():
    with pytest.raises(ValueError, match="best_of"):
        select([s(0, "a", 1.0)], "best_of")


def test_prefer_shorter_breaks_reward_ties_by_length_but_never_beats_a_higher_reward():
    samples = [s(0, "a long right answer", 1.0), s(0, "right", 1.0), s(0, "x" * 200, 2.0),
               s(1, "wrong and long", 0.0), s(1, "wrong", 0.0)]
    plain = select(samples, "top_k", threshold=0.0, k=2)
    assert [x.completion for x in plain] == ["x" * 200, "a long right answer", "wrong and long", "wrong"]
    shorter = select(samples, "top_k", threshold=0.0, k=2, prefer_shorter=True)
    assert [x.completion for x in shorter] == ["x" * 200, "right", "wrong", "wrong and long"]
    top = select(samples, "top_fraction", threshold=0.0, fraction=0.4, prefer_shorter=True)
    assert [x.completion for x in top] == ["x" * 200, "right"]
    # dedup keeps the shortest spelling of a repeated completion
    spaced = select([s(0, "Paris  is  it", 1.0), s(0, "Paris is it", 1.0)], "top_k", prefer_shorter=True)
    assert [x.completion for x in spaced] == ["Paris is it"]
