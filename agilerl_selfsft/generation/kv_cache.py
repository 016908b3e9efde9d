"""The decode loop's KV cache: transformers' ``DynamicLayer`` with room reserved to grow into.

``DynamicLayer.update`` appends a step's keys and values with ``torch.cat``, which copies the layer's whole cache
on every decode step. :class:`ReservedLayer` keeps its keys and values in buffers with spare columns: a step
writes its column in place and attention reads a view of the filled part, so the cache is copied only when
the room runs out (every :data:`RESERVE` steps at most), when rows are joined, or when leading padding is cut.
Admissions copy as little as they can: a prefilled prompt's cache goes into its K rows and its room in one copy
(:func:`reserve`), and a join writes both row sets straight into one buffer with room (:func:`join_layers`, no
padded intermediates). Dropping finished rows moves the last live rows into their places
(:meth:`ReservedLayer.move_rows`): a copy of as many rows as ended, not of every row kept. (Cutting leading
padding as a view instead of a copy kept the old buffer alive for up to :data:`RESERVE` steps; it is a copy.)

Anything that assigns ``layer.keys`` / ``layer.values`` (transformers' own cache methods, the loop's cut of leading
padding) gets a tight buffer of exactly what it assigned: behaviour never depends on the reservation, only speed does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

RESERVE = 8  # columns reserved at a time: 64 (a whole completion's room from the start) bought nothing more at
# 64 prompts x 8 and cost 300 MiB of peak memory; 8 keeps the copies to one every 8 steps at little memory


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of buffers with room for more columns."""

    def __init__(self, room: int = RESERVE) -> None:
        self._keys = self._values = None
        self._length = self._values_length = 0  # filled columns of each buffer (assigned one at a time)
        self.room = room
        super().__init__()

    @classmethod
    def of(cls, layer: DynamicLayer, room: int = RESERVE, repeat: int = 1) -> ReservedLayer:
        """``layer``'s cache with ``room`` columns reserved and each row repeated ``repeat`` times, as
        ``batch_repeat_interleave`` repeats them (one copy)."""
        new = cls(room)
        new.dtype, new.device, new.is_initialized = layer.dtype, layer.device, layer.is_initialized
        new._keys, new._values = _with_room(layer.keys, room, repeat), _with_room(layer.values, room, repeat)
        new._length = new._values_length = layer.keys.shape[-2]
        return new

    @property
    def keys(self) -> torch.Tensor | None:
        k = self._keys
        return k if k is None or k.dim() < 3 else k[:, :, : self._length]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._keys = value
        self._length = 0 if value is None or value.dim() < 3 else value.shape[-2]

    @property
    def values(self) -> torch.Tensor | None:
        v = self._values
        return v if v is None or v.dim() < 3 else v[:, :, : self._values_length]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._values = value
        self._values_length = 0 if value is None or value.dim() < 3 else value.shape[-2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new columns into the room (reserving more first when it is used up); the filled views."""
        if not self.is_initialized or self._keys is None or self._keys.dim() < 3:
            return super().update(key_states, value_states, *args, **kwargs)  # the first tokens: as DynamicLayer
        new = key_states.shape[-2]
        if self._length + new > self._keys.shape[-2]:
            self._keys, self._values = _with_room(self.keys, new + self.room), _with_room(self.values, new + self.room)
        self._keys[:, :, self._length : self._length + new] = key_states
        self._values[:, :, self._length : self._length + new] = value_states
        self._length += new
        self._values_length = self._length
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices``, room and all."""
        if self.get_seq_length() > 0:
            self._keys, self._values = self._keys[indices], self._values[indices]  # the lengths stay

    def move_rows(self, holes: torch.Tensor, movers: torch.Tensor, rows: int) -> None:
        """Keep the first ``rows`` rows, the rows ``movers`` (all at or past ``rows``) copied over the rows ``holes``
        (all before it), filled columns only; the buffers stay where they are (:func:`tail_moves` gives the three)."""
        if self.get_seq_length() > 0:
            if len(holes):
                self._keys[holes, :, : self._length] = self._keys[movers, :, : self._length]
                self._values[holes, :, : self._values_length] = self._values[movers, :, : self._values_length]
            self._keys, self._values = self._keys[:rows], self._values[:rows]


def tail_moves(ended: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """How to drop the rows ``ended`` (a bool per row) by moving rows instead of gathering the rest: ``order``, the
    old index of each row left in its new place, and the ``holes`` (ended rows among the first ``len(order)``) that
    the ``movers`` (live rows after them) fill, in :meth:`ReservedLayer.move_rows`'s terms."""
    left = len(ended) - int(ended.sum())
    holes = ended[:left].nonzero().squeeze(1)
    movers = (~ended[left:]).nonzero().squeeze(1) + left
    order = torch.arange(left, device=ended.device)
    order[holes] = movers
    return order, holes, movers


def _with_room(t: torch.Tensor, room: int, repeat: int = 1) -> torch.Tensor:
    """A copy of ``t`` (rows, heads, seq, dim), each row ``repeat`` times in a row, with ``room`` more (unset)
    sequence columns."""
    rows, heads, seq, dim = t.shape
    out = t.new_empty((rows * repeat, heads, seq + room, dim))
    out.view(rows, repeat, heads, seq + room, dim)[:, :, :, :seq] = t[:, None]
    return out


def _stacked(parts: list[torch.Tensor], length: int, room: int) -> torch.Tensor:
    """The rows of ``parts`` ((rows, heads, seq, dim) each) in one new tensor of ``length + room`` columns, each
    part left-padded with zeros to ``length``: every part is copied once, straight into place."""
    first = parts[0]
    out = first.new_empty((sum(p.shape[0] for p in parts), first.shape[1], length + room, first.shape[-1]))
    row = 0
    for p in parts:
        n, pad = p.shape[0], length - p.shape[-2]
        out[row : row + n, :, :pad] = 0
        out[row : row + n, :, pad:length] = p
        row += n
    return out


def reserve(cache: object, room: int, repeat: int = 1) -> None:
    """Swap every layer of ``cache``, when all are plain growing ones (:func:`joinable`), for a
    :class:`ReservedLayer` with ``room`` columns and each row repeated ``repeat`` times (one copy each)."""
    layers = getattr(cache, "layers", None)
    if layers is not None and joinable(cache):
        layers[:] = [ReservedLayer.of(layer, room, repeat) for layer in layers]


def join_layers(mine: DynamicLayer, theirs: DynamicLayer, length: int) -> None:
    """Append ``theirs``'s rows to ``mine``'s, both left-padded (zeros) to ``length`` columns; a
    :class:`ReservedLayer` gets its room again in the same copy."""
    room = mine.room if isinstance(mine, ReservedLayer) else 0
    keys = _stacked([mine.keys, theirs.keys], length, room)
    values = _stacked([mine.values, theirs.values], length, room)
    if isinstance(mine, ReservedLayer):
        mine._keys, mine._values, mine._length, mine._values_length = keys, values, length, length
    else:
        mine.keys, mine.values = keys, values


def joinable(cache: object) -> bool:
    """Whether every layer of ``cache`` is a plain growing one (``DynamicLayer`` or :class:`ReservedLayer`), which
    joining rows and cutting leading columns assume (a sliding-window layer keeps a window, not the sequence)."""
    return all(type(layer) in (DynamicLayer, ReservedLayer) for layer in getattr(cache, "layers", [None]))


def left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad a (…, seq[, dim]) tensor on the left of its sequence axis to ``length``."""
    missing = length - (t.shape[-2] if t.dim() == 4 else t.shape[-1])
    if missing == 0:
        return t
    return F.pad(t, (0, 0, missing, 0) if t.dim() == 4 else (missing, 0))
