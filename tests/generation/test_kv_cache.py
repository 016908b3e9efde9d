"""The reserved KV cache layer against transformers' DynamicLayer: the same keys and values after every operation
the decode loop performs, with the unset room poisoned so that any read of it shows."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from agilerl_selfsft.generation.kv_cache import ReservedLayer, join_layers, joinable, left_pad, tail_moves


def _poison(layer: ReservedLayer) -> None:
    """NaN into every column past the filled ones: unset memory may hold anything."""
    layer._keys[:, :, layer._length :] = float("nan")
    layer._values[:, :, layer._values_length :] = float("nan")


def _same(reserved: ReservedLayer, plain: DynamicLayer) -> None:
    assert reserved.get_seq_length() == plain.get_seq_length()
    torch.testing.assert_close(reserved.keys, plain.keys, rtol=0, atol=0)
    torch.testing.assert_close(reserved.values, plain.values, rtol=0, atol=0)


def test_steps_selects_joins_and_cuts_give_what_dynamic_layer_gives():
    torch.manual_seed(0)
    kv = lambda rows, n: (torch.randn(rows, 2, n, 4), torch.randn(rows, 2, n, 4))  # noqa: E731
    plain = DynamicLayer()
    plain.update(*kv(3, 5))
    reserved = ReservedLayer.of(plain, room=2)
    _poison(reserved)
    for step in range(4):  # 2 steps in the room, then it grows (and is poisoned again)
        new = kv(3, 1)
        plain.update(*new)
        reserved.update(*new)
        _poison(reserved)
        _same(reserved, plain)
    keep = torch.tensor([0, 2])
    plain.batch_select_indices(keep)
    reserved.batch_select_indices(keep)
    _same(reserved, plain)
    other = DynamicLayer()
    other.update(*kv(1, 12))
    length = max(plain.keys.shape[-2], other.keys.shape[-2])  # the join as it was: left-pad both, then cat
    plain.keys = torch.cat([left_pad(plain.keys, length), left_pad(other.keys, length)])
    plain.values = torch.cat([left_pad(plain.values, length), left_pad(other.values, length)])
    join_layers(reserved, other, length)  # the loop's join: straight into a buffer with room
    assert reserved._keys.shape[-2] == length + 2
    _poison(reserved)
    _same(reserved, plain)
    new = kv(3, 1)
    plain.update(*new)
    reserved.update(*new)  # in the room the join left
    _poison(reserved)
    _same(reserved, plain)
    for layer in (plain, reserved):  # the loop's cut of leading padding
        layer.keys, layer.values = layer.keys[:, :, 3:], layer.values[:, :, 3:]
    _poison(reserved)
    for _ in range(3):  # the room left after the cut, then growing
        new = kv(3, 1)
        plain.update(*new)
        reserved.update(*new)
        _poison(reserved)
        _same(reserved, plain)
    assert not torch.isnan(reserved.keys).any() and not torch.isnan(reserved.values).any()


def test_a_prefill_goes_into_its_k_rows_as_batch_repeat_interleave_puts_it():
    torch.manual_seed(0)
    plain = DynamicLayer()
    plain.update(torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4))
    reserved = ReservedLayer.of(plain, room=3, repeat=4)
    _poison(reserved)
    plain.batch_repeat_interleave(4)
    _same(reserved, plain)
    assert reserved._keys.shape == (8, 3, 8, 4)
    new = torch.randn(8, 3, 1, 4), torch.randn(8, 3, 1, 4)
    plain.update(*new)
    reserved.update(*new)
    _same(reserved, plain)


def test_a_join_into_a_plain_layer_equals_padding_and_concatenating():
    torch.manual_seed(0)
    mine, theirs = DynamicLayer(), DynamicLayer()
    mine.update(torch.randn(3, 2, 7, 4), torch.randn(3, 2, 7, 4))
    theirs.update(torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4))
    keys = torch.cat([mine.keys, left_pad(theirs.keys, 7)])
    values = torch.cat([mine.values, left_pad(theirs.values, 7)])
    join_layers(mine, theirs, 7)
    assert torch.equal(mine.keys, keys) and torch.equal(mine.values, values)


def test_a_step_in_the_room_writes_in_place():
    plain = DynamicLayer()
    plain.update(torch.ones(2, 1, 3, 4), torch.ones(2, 1, 3, 4))
    reserved = ReservedLayer.of(plain, room=4)
    buffer = reserved._keys
    keys, _ = reserved.update(torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, 1, 4))
    assert reserved._keys is buffer and keys.data_ptr() == buffer.data_ptr() and keys.shape[-2] == 4
    assert joinable(type("Cache", (), {"layers": [plain, reserved]})())


def test_dropping_rows_by_moving_the_last_ones_equals_selecting_the_rows_left_in_that_order():
    torch.manual_seed(0)
    for ended in ([0, 1, 0, 0, 1, 0, 1], [0, 0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0, 1]):
        ended = torch.tensor(ended, dtype=torch.bool)
        plain = DynamicLayer()
        plain.update(torch.randn(7, 2, 5, 4), torch.randn(7, 2, 5, 4))
        reserved = ReservedLayer.of(plain, room=3)
        _poison(reserved)
        buffer = reserved._keys
        order, holes, movers = tail_moves(ended)
        assert sorted(order.tolist()) == (~ended).nonzero().squeeze(1).tolist()  # every row left, once
        stay = ~ended[: len(order)]
        assert torch.equal(order[stay], stay.nonzero().squeeze(1))  # rows before the cut that did not end stay put
        reserved.move_rows(holes, movers, len(order))
        plain.batch_select_indices(order)
        _same(reserved, plain)
        assert reserved._keys.data_ptr() == buffer.data_ptr()  # no new buffer: only the moved rows were copied
        for _ in range(4):  # then steps in the room and past it, as before
            new = torch.randn(len(order), 2, 1, 4), torch.randn(len(order), 2, 1, 4)
            plain.update(*new)
            reserved.update(*new)
            _poison(reserved)
            _same(reserved, plain)
