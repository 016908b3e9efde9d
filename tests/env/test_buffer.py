"""The replay buffer of past winners."""

from __future__ import annotations

import numpy as np
import pytest

from agilerl_selfsft.env.buffer import ReplayBuffer
from agilerl_selfsft.samples import Scored


def s(pid, completion):
    return Scored(pid, [{"role": "user", "content": "q"}, {"role": "assistant", "content": completion}], completion, 1.0)


def test_capacity_bounds_the_buffer_and_the_oldest_leave():
    buf = ReplayBuffer(3)
    buf.add([s(0, "a"), s(1, "b")])
    buf.add([s(2, "c"), s(3, "d"), s(4, "e")])
    assert len(buf) == 3
    assert [x.completion for x in buf.samples] == ["c", "d", "e"]
    drawn = buf.draw(10, exclude=[], rng=np.random.default_rng(0))
    assert sorted(x.completion for x in drawn) == ["c", "d", "e"]


def test_draw_excludes_given_samples_and_respects_n():
    buf = ReplayBuffer(10)
    items = [s(i % 2, f"c{i}") for i in range(6)]
    buf.add(items)
    # exclusion is by (prompt id, completion), not identity
    exclude = [s(0, "c0"), s(1, "c3")]
    for seed in range(5):
        drawn = buf.draw(10, exclude=exclude, rng=np.random.default_rng(seed))
        assert sorted(x.completion for x in drawn) == ["c1", "c2", "c4", "c5"]
    drawn = buf.draw(2, exclude=exclude, rng=np.random.default_rng(0))
    assert len(drawn) == 2 and not {x.completion for x in drawn} & {"c0", "c3"}
    # same completion text but another prompt id is not excluded
    drawn = buf.draw(10, exclude=[s(1, "c0")], rng=np.random.default_rng(0))
    assert "c0" in {x.completion for x in drawn}


def test_draw_is_reproducible_with_a_seeded_rng():
    buf = ReplayBuffer(20)
    buf.add([s(i, f"c{i}") for i in range(20)])
    a = buf.draw(5, [], np.random.default_rng(3))
    b = buf.draw(5, [], np.random.default_rng(3))
    assert [x.completion for x in a] == [x.completion for x in b]


def test_capacity_zero_remembers_and_draws_nothing():
    buf = ReplayBuffer(0)
    buf.add([s(0, "a"), s(1, "b")])
    assert len(buf) == 0
    assert buf.draw(5, exclude=[], rng=np.random.default_rng(0)) == []


def test_draw_nothing_when_n_is_zero_or_everything_is_excluded():
    buf = ReplayBuffer(4)
    buf.add([s(0, "a")])
    assert buf.draw(0, [], np.random.default_rng(0)) == []
    assert buf.draw(3, [s(0, "a")], np.random.default_rng(0)) == []


def test_negative_capacity():
    with pytest.raises(ValueError):
        ReplayBuffer(-1)
