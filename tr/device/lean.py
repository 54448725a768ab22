"""A Llama forward pass of few operators for the CPU's invariant kernels: the same arithmetic as
transformers' modules with `tr.device.kernels` installed, in the same order, so the same bits; without
their Python around each operator.

A one-token pass of a small model is bound by the cost of each call, not by its arithmetic (`python -m
tools.profile`), and transformers' modules spend about as long in Python around their operators as in
them. This forward runs nearly the same operators with little Python around them. What it drops: masks
built per layer, cache objects, keyword plumbing, module hooks, and the copies that lay the keys and
values out for the invariant attention at every layer of every pass: its cache holds them already laid out
(`Cache`), written once per token, in float32 (bf16 widens exactly).

Why the bits are the same: every step is the code transformers runs, called on the same values: the
model's own norm, embedding, rotary, activation and product modules (`tr.device.fused`'s, made invariant
or 4-bit), and `invariant.attend_laid_out`, the arithmetic of `invariant.attend` over its own layout
(a prompt's causal pass runs `invariant.invariant_attention` itself, as transformers does).
`tests/test_lean.py` checks the logits bit for bit against the model's forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaForCausalLM, rotate_half

from ..kv_cache import CacheFullError, in_place, move_kept
from ..passes import OwnCache, argmax_only, seen_among
from . import invariant
from .fused import FusedAttention, FusedMLP
from .quantized import Int4Linear


def supports(model: torch.nn.Module) -> bool:
    """Whether this forward computes `model` as its own forward does: a transformers Llama on the CPU with
    the invariant kernels and fused layers installed (weights in bf16, float32 or int4), and no biases."""
    if type(model) is not LlamaForCausalLM or not invariant.installed(model):
        return False
    if next(model.parameters()).device.type != "cpu":
        return False
    return all(type(layer) is LlamaDecoderLayer and type(layer.self_attn) is FusedAttention
               and type(layer.mlp) is FusedMLP and all(_bias_free_product(linear) for linear in (
                   layer.self_attn.qkv, layer.self_attn.o_proj, layer.mlp.gate_up, layer.mlp.down_proj))
               for layer in model.model.layers)


def _bias_free_product(linear: torch.nn.Module) -> bool:
    return isinstance(linear, (invariant.InvariantLinear, Int4Linear)) and getattr(linear, "bias", None) is None


class Cache:
    """Every layer's keys and values for one request, laid out as `invariant.attend_laid_out` multiplies
    them: keys (layers, kv heads, positions, d) and values transposed over a row of ones (layers, kv heads,
    d + 1, positions), float32. Positions past `length` hold zeros, as attention's padding must."""

    def __init__(self, layers: int, kv_heads: int, dim: int, capacity: int):
        self.capacity, self.dim, self.length = capacity, dim, 0
        positions = invariant.padded_keys(capacity)
        self.keys = torch.zeros(layers, kv_heads, positions, dim)
        self.values_t = torch.zeros(layers, kv_heads, dim + 1, positions)
        self.values_t[:, :, dim] = 1.0

    def write(self, layer: int, start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """A pass's keys and values (n, kv heads, d) at positions start .. start + n."""
        end = start + key.shape[0]
        self.keys[layer, :, start:end] = key.transpose(0, 1)
        self.values_t[layer, :, :self.dim, start:end] = value.permute(1, 2, 0)

    def keep(self, start: int, offsets: Sequence[int]) -> None:
        """After a tree pass written at `start`: keep the entries at the given node offsets (increasing)."""
        end = self.length
        if not in_place(offsets):
            positions = torch.tensor(offsets) + start
            move_kept(self.keys, 2, start, positions)
            move_kept(self.values_t, 3, start, positions)
        self.length = start + len(offsets)
        self._clear(end)

    def truncate(self, length: int) -> None:
        end, self.length = self.length, min(self.length, length)
        self._clear(end)

    def _clear(self, end: int) -> None:
        """Zeros from `length` to `end`, where a pass wrote what is no longer kept."""
        self.keys[:, :, self.length:end] = 0.0
        self.values_t[:, :, :self.dim, self.length:end] = 0.0


class LeanPasses(OwnCache):
    """`tr.passes.Passes` by this module's forward, over a `Cache` (see `supports` for the models it runs)."""

    def __init__(self, model: LlamaForCausalLM, capacity: int):
        config = model.config
        self.model, self.layers = model, model.model.layers
        attention = self.layers[0].self_attn
        self.dim, self.scaling = attention.head_dim, attention.scaling
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.cache = Cache(len(self.layers), self.kv_heads, self.dim, capacity)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, ancestors: torch.Tensor | None = None, *,
                 last_only: bool = False, greedy: bool = False) -> torch.Tensor:
        start, n = self.cache.length, len(ids)
        if start + n > self.cache.capacity:
            raise CacheFullError(f"KV cache holds {self.cache.capacity} positions, {start + n} needed")
        plan = self._plan(start, n, ancestors)
        hidden = self.model.model.embed_tokens(ids)
        cos, sin = self.model.model.rotary_emb(hidden, positions[None])
        rotary = cos[0, :, None], sin[0, :, None]  # (n, 1, d): one row per token, for every head
        for index, layer in enumerate(self.layers):
            hidden = self._layer(index, layer, hidden, rotary, start, plan)
        self.cache.length = start + n
        hidden = self.model.model.norm(hidden[-1:] if last_only else hidden)
        with argmax_only(self.model) if greedy else nullcontext():
            return self.model.lm_head(hidden)

    def _plan(self, start: int, n: int, ancestors: torch.Tensor | None) -> invariant.Plan | None:
        """The attention plan of the pass (None: a prompt's causal pass, which runs torch's fused attention
        as transformers runs it): transformers' own masks, as booleans."""
        if n == 1:
            return invariant.plan_for(None, start + 1, 1)
        ancestors = seen_among(ancestors, start, n)
        if ancestors is None:
            return None
        mask = torch.ones(1, 1, n, start + n, dtype=torch.bool)
        mask[0, 0, :, start:] = ancestors
        return invariant.plan_for(mask, start + n, n)

    def _layer(self, index: int, layer: LlamaDecoderLayer, hidden: torch.Tensor,
               rotary: tuple[torch.Tensor, torch.Tensor], start: int, plan: invariant.Plan | None) -> torch.Tensor:
        attention, mlp, n = layer.self_attn, layer.mlp, hidden.shape[0]
        qkv = attention.qkv(layer.input_layernorm(hidden))
        rotated = self.heads + self.kv_heads
        qk = qkv[:, :rotated * self.dim].view(n, rotated, self.dim)
        cos, sin = rotary
        qk = qk * cos + rotate_half(qk) * sin  # transformers' apply_rotary_pos_emb, queries and keys at once
        query, key = qk[:, :self.heads], qk[:, self.heads:]
        value = qkv[:, rotated * self.dim:].view(n, self.kv_heads, self.dim)
        self.cache.write(index, start, key, value)
        if plan is None:
            out = self._causal(attention, query, key, value)
        else:
            keys = self.cache.keys[index, :, :plan.keys]
            values_t = self.cache.values_t[index, :, :, :plan.keys]
            out = invariant.attend_laid_out(query.transpose(0, 1), keys, values_t, plan, self.scaling)
        hidden = hidden + attention.o_proj(out.reshape(n, -1))
        gate, up = mlp.gate_up(layer.post_attention_layernorm(hidden)).split(mlp.intermediate, dim=-1)
        return hidden + mlp.down_proj(mlp.act_fn(gate) * up)

    def _causal(self, attention: FusedAttention, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor) -> torch.Tensor:
        """A prompt's causal pass over no cache, by `invariant.invariant_attention` as transformers calls it."""
        def heads_first(part: torch.Tensor) -> torch.Tensor:
            return part.transpose(0, 1)[None].contiguous()

        out, _ = invariant.invariant_attention(attention, heads_first(query), heads_first(key), heads_first(value),
                                               None, scaling=self.scaling)
        return out[0]

