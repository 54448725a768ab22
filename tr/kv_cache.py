"""A preallocated KV cache, written in place, that keeps only the accepted part of a draft tree.

`transformers.DynamicCache` concatenates (copies the whole cache) at every step; `StaticCache` hands
the full buffer to attention every step. This cache preallocates `capacity` positions per layer,
writes each forward pass's keys and values behind the committed ones, attends over the filled prefix
only, and after verification moves just the accepted entries into place (`keep`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class CacheFullError(RuntimeError):
    """The prompt plus the requested new tokens do not fit in the cache."""


def in_place(offsets: Sequence[int]) -> bool:
    """Whether a tree pass's kept node offsets are its first nodes (often: the first children): nothing moves."""
    return list(offsets) == list(range(len(offsets)))


def move_kept(buffer: torch.Tensor, dim: int, start: int, positions: torch.Tensor) -> None:
    """Move `buffer`'s entries at `positions` along `dim` to start, start + 1, ... . The positions increase and
    the i-th is at least start + i, so gathering first and writing after never reads an overwritten slot."""
    buffer.narrow(dim, start, len(positions)).copy_(buffer.index_select(dim, positions))


class _PreallocatedLayer(CacheLayerMixin):
    is_sliding = False

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, _ = key_states.shape
        self.keys = key_states.new_zeros(batch, heads, self.capacity, key_states.shape[-1])
        self.values = value_states.new_zeros(batch, heads, self.capacity, value_states.shape[-1])
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise CacheFullError(f"KV cache holds {self.capacity} positions, {end} needed")
        self.keys[:, :, self.length : end].copy_(key_states)
        self.values[:, :, self.length : end].copy_(value_states)
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def reset(self) -> None:
        self.length = 0

    def keep(self, start: int, offsets: torch.Tensor) -> None:
        """Keep positions `start + offsets` (increasing) as `start, start + 1, ...`; drop the rest."""
        kept = offsets.numel()
        if self.is_initialized and kept:
            positions = offsets + start
            move_kept(self.keys, 2, start, positions)
            move_kept(self.values, 2, start, positions)
        self.length = start + kept


class PreallocatedCache(Cache):
    """One `_PreallocatedLayer` per model layer, created lazily on the first forward pass."""

    def __init__(self, capacity: int):
        super().__init__(layer_class_to_replicate=partial(_PreallocatedLayer, capacity))
        self.capacity = capacity

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def keep(self, start: int, offsets: Sequence[int]) -> None:
        """After a tree pass written at `start`: keep the entries at the given node offsets (increasing)."""
        if in_place(offsets):
            self.truncate(start + len(offsets))
            return
        positions = torch.tensor(offsets, device=self.layers[0].keys.device)
        for layer in self.layers:
            layer.keep(start, positions)

    def truncate(self, length: int) -> None:
        for layer in self.layers:
            layer.length = min(layer.length, length)
