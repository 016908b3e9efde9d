"""The reserved KV cache layer against transformers' DynamicLayer: the same keys and values after every operation
the decode loop performs, with the unset room poisoned so that any read of it shows."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from agilerl_selfsft.generation.kv_cache import ReservedLayer, joinable, left_pad


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
    for layer in (plain, reserved):  # the loop's join: keys first, then values, each left-padded
        length = max(layer.keys.shape[-2], other.keys.shape[-2])
        layer.keys = torch.cat([left_pad(layer.keys, length), left_pad(other.keys, length)])
        layer.values = torch.cat([left_pad(layer.values, length), left_pad(other.values, length)])
    _same(reserved, plain)
    new = kv(3, 1)
    plain.update(*new)
    reserved.update(*new)
    _poison(reserved)
    for layer in (plain, reserved):  # the loop's cut of leading padding
        layer.keys, layer.values = layer.keys[:, :, 3:], layer.values[:, :, 3:]
    new = kv(3, 1)
    plain.update(*new)
    reserved.update(*new)
    _same(reserved, plain)
    assert not torch.isnan(reserved.keys).any() and not torch.isnan(reserved.values).any()


def test_a_step_in_the_room_writes_in_place():
    plain = DynamicLayer()
    plain.update(torch.ones(2, 1, 3, 4), torch.ones(2, 1, 3, 4))
    reserved = ReservedLayer.of(plain, room=4)
    buffer = reserved._keys
    keys, _ = reserved.update(torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, 1, 4))
    assert reserved._keys is buffer and keys.data_ptr() == buffer.data_ptr() and keys.shape[-2] == 4
    assert joinable(type("Cache", (), {"layers": [plain, reserved]})())
