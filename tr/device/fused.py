"""Fewer products per layer on the CPU: a Llama layer's query, key and value projections as one product, and
its MLP's gate and up projections as one, each over the weights stacked by rows.

Exact by the kernels' own property: `invariant.product` gives an output column the same bits whatever the
columns beside it (`tests/test_kernels.py` checks it on the machine that runs it), so a stacked product's
columns are, bit for bit, the separate products' outputs; the rest of each forward is transformers' own
code, in its order. Fewer calls matter because a one-token pass of a small model is bound by the cost of
each call (padding, copies, Python), not by its arithmetic (`python -m tools.profile`).

Installed by `tr.device.kernels.install_kernels` only where the invariant products are, and only on the
layer classes whose forward this module repeats (transformers' `LlamaAttention` and `LlamaMLP`, which
Llama, SmolLM2 and Mistral-style checkpoints load as); any other layer keeps its own.
"""

from __future__ import annotations

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaMLP,
    apply_rotary_pos_emb,
    eager_attention_forward,
)


def stacked(linears: list[torch.nn.Linear]) -> torch.nn.Linear:
    """One `nn.Linear` whose output is the given linears' outputs side by side (weights stacked by rows)."""
    weight = torch.cat([linear.weight.detach() for linear in linears])
    biases = [linear.bias for linear in linears]
    fused = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=biases[0] is not None,
                            device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([bias.detach() for bias in biases]))
    return fused.requires_grad_(False)


class FusedAttention(torch.nn.Module):
    """`LlamaAttention` with its q, k and v projections as one product (`qkv`); otherwise its forward."""

    def __init__(self, attention: LlamaAttention):
        super().__init__()
        self.config, self.layer_idx, self.head_dim = attention.config, attention.layer_idx, attention.head_dim
        self.num_key_value_groups, self.scaling = attention.num_key_value_groups, attention.scaling
        self.attention_dropout, self.is_causal = attention.attention_dropout, attention.is_causal
        parts = (attention.q_proj, attention.k_proj, attention.v_proj)
        self.sizes = [linear.out_features for linear in parts]
        self.qkv = stacked(list(parts))
        self.o_proj = attention.o_proj

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None = None, past_key_values=None, **kwargs
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query, key, value = (part.view(hidden_shape).transpose(1, 2)
                             for part in self.qkv(hidden_states).split(self.sizes, dim=-1))
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = interface(self, query, key, value, attention_mask,
                                 dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling,
                                 **kwargs)
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


class FusedMLP(torch.nn.Module):
    """`LlamaMLP` with its gate and up projections as one product (`gate_up`); otherwise its forward."""

    def __init__(self, mlp: LlamaMLP):
        super().__init__()
        self.intermediate = mlp.gate_proj.out_features
        self.gate_up = stacked([mlp.gate_proj, mlp.up_proj])
        self.down_proj, self.act_fn = mlp.down_proj, mlp.act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.intermediate, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


FUSED = {LlamaAttention: FusedAttention, LlamaMLP: FusedMLP}  # exact classes: a subclass may forward otherwise


def install_fused(model: torch.nn.Module) -> int:
    """Replace every layer of a class in `FUSED` by its fused form, before the products are made invariant
    (the stacked linears are plain `nn.Linear`s until then); returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) in FUSED:
                setattr(parent, name, FUSED[type(child)](child))
                replaced += 1
    return replaced
