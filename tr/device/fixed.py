"""Batch invariance by fixed shapes, for devices without the CPU's invariant kernels (a GPU).

Libraries pick a kernel, and how it splits its sums, by the shapes of a call: that is why a token's
logits inside a verification pass of n rows differ in the last bits from the same token in a one-token
pass. So the steps of `tr.device.resident` can give every pass the same shapes instead: `FIXED_ROWS` rows
(a tree padded with rows that see only themselves), keys over the whole static cache, and attention
(`fixed_attention`) with:

- each query's keys gathered into their logical order (a tree node's ancestors lie apart in the cache,
  plain decoding's keys side by side), so a token's keys are the same numbers at the same places in both;
- scores, softmax and weighted values as products batched per query (a query is a batch index, never one
  row among others), the weighted values summed in chunks of `CHUNK` logical positions, then chunk by chunk.

The keys are the workspace's whole capacity, so both decoders of a request reserve alike
(`tr.device.resident.reserved_positions`). Then a token's logits are computed by the same calls on the
same numbers in plain decoding and in verification, on one assumption about the device's kernels: a call
of a given shape computes an output alike wherever its row lies (weight products) or its batch item lies
(attention). On this project's CPUs one product of many queries did not: a query's output changed with
its row (a head dimension plus one of columns), hence the batching. `tests/test_fixed.py` checks the
whole on a CPU with torch's stock kernels; `tools/gpu_check.sh` on a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface

NAME = "tr_fixed"  # the attention implementation's name in transformers' registry
FIXED_ROWS = 96  # rows of every pass: the largest template (81 nodes) fits, as in `tr.device.graphs.BUCKETS`
CHUNK = 128  # logical positions per chunk of the weighted sum; a static cache's capacity is a multiple


def logical_order(visible: torch.Tensor) -> torch.Tensor:
    """(rows, keys): for each query, the slot of the key at each logical position (its visible keys in
    slot order), then the spare slot `keys` past its last."""
    rows, keys = visible.shape
    logical = visible.long().cumsum(-1) - 1  # a visible key's logical position: visible keys before it
    order = torch.full((rows, keys + 1), keys, dtype=torch.long, device=visible.device)
    slots = torch.arange(keys, device=visible.device).expand(rows, keys)
    order.scatter_(1, torch.where(visible, logical, keys), slots)  # hidden keys land in the last column
    return order[:, :keys]


def fixed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor, dropout: float = 0.0, scaling: float | None = None,
                    **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention interface for one sequence over a static cache with an additive mask (0 or
    the dtype's lowest): query (1, heads, rows, d), key and value (1, kv heads, keys, d), keys a multiple
    of `CHUNK`. Returns (1, rows, heads, d) in the query's dtype."""
    _, heads, rows, dim = query.shape
    kv, keys = key.shape[1], key.shape[2]
    group, chunks = heads // kv, keys // CHUNK
    scaling = dim**-0.5 if scaling is None else scaling
    wide = torch.promote_types(query.dtype, torch.float32)  # bf16 and fp16 widen exactly
    order = logical_order(attention_mask[0, 0] == 0)
    present = order < keys  # (rows, keys): a key holds this logical position

    def in_order(states: torch.Tensor) -> torch.Tensor:  # (kv, keys, w) -> (kv, rows, keys, w), spare slot 0
        return torch.cat([states, states.new_zeros(kv, 1, states.shape[-1])], 1)[:, order]

    keys_in_order = in_order(key[0].to(wide))
    values_in_order = in_order(torch.cat([value[0].to(wide), value.new_ones(kv, keys, 1, dtype=wide)], -1))
    q = query[0].view(kv, group, rows, dim).transpose(1, 2).to(wide)  # (kv, rows, group, d)
    # Every product below is batched per (kv head, query): a query's row is a batch index, never a row
    # among others, and its operands are the same numbers in plain decoding and in a tree pass.
    scores = torch.matmul(q, keys_in_order.transpose(-1, -2)) * scaling  # (kv, rows, group, keys)
    scores = scores.masked_fill(~present[None, :, None, :], float("-inf"))
    weights = (scores - scores.amax(-1, keepdim=True)).exp()
    parts = torch.matmul(weights.view(kv, rows, group, chunks, CHUNK).transpose(2, 3),
                         values_in_order.view(kv, rows, chunks, CHUNK, dim + 1))  # (kv, rows, chunks, group, d+1)
    total = parts.sum(2)  # chunk sums in chunk order
    out = total[..., :dim] / total[..., dim:]  # (kv, rows, group, d)
    return out.permute(1, 0, 2, 3).reshape(1, rows, heads, dim).to(query.dtype), None


@contextmanager
def fixed_shapes(model: torch.nn.Module) -> Iterator[None]:
    """Within: the model's attention is `fixed_attention` (its layers look the implementation up per call).
    It is the model's setting, not the thread's: no other thread may run a pass of the model meanwhile (the
    app runs one decoding at a time: its model events share one concurrency slot)."""
    AttentionInterface.register(NAME, fixed_attention)
    config = model.config
    before, config._attn_implementation = config._attn_implementation, NAME
    try:
        yield
    finally:
        config._attn_implementation = before
