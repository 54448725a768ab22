"""Batch-invariant attention on the CPU: a token's attention output is the same bits whether it is computed
alone (plain decoding) or inside a verification pass over a draft tree, so Token Recycling's greedy output
equals plain decoding's by construction wherever the weight products are row-invariant too.

Torch's fused attention reduces over keys in vector lanes and tails that depend on how many keys the pass
holds, where the visible ones sit, and on the masked-out ones. Here every reduction has an order fixed by
the token's logical positions (0 .. its own position) alone:

- scores: q . k over the head dimension, an fp32 matrix product (the bf16 inputs widen exactly), the
  same dot product whatever the row count or column (with at least two rows: one row takes BLAS's
  matrix-vector path, which sums in another order);
- softmax: one max over the visible scores (exact in any order), exp elementwise;
- weighted values: keys are cut into chunks of `CHUNK` logical positions; each chunk's sum of weight x
  value (and of weights, via a column of ones beside the values) is one fp32 matrix product over at most
  a few hundred keys, which BLAS accumulates one key after another, so masked keys (weight 0) between
  visible ones change nothing; the chunks' sums are then added in order (`cumsum`, a sequential scan).

A tree node's visible keys are the cache, then its ancestors and itself in slot order, i.e. logical
order; so full chunks of the cache are shared by every node, and only the chunks that reach into the
tree (one or two) are computed per chunk with the other chunks' keys weighted 0. `tests/test_kernels.py`
checks each BLAS property this relies on, and `python -m tools.invariance` the whole model.

Only one-token passes and passes with an explicit mask (verification) take this path; a prompt's causal
pass (no mask, several tokens) runs torch's fused attention, the same for every decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "tr_invariant"  # the attention implementation's name in transformers' registry
PLAN = "invariant"  # how `tr.device.kernels.layout_plans` names an `InvariantLinear`'s products
# Logical positions per chunk. A chunk that reaches into the tree is one product over the chunk's cache
# keys and every tree node (up to CHUNK - 1 + 81), which must stay within the keys MKL's sgemm sums in one
# sequential run (384 on AVX-512; tests/test_kernels.py checks it).
CHUNK = 128


@dataclass(frozen=True)
class Plan:
    """How one pass's keys fall into chunks; shared by every layer of the pass."""

    start: int  # cached tokens before the pass
    full: int  # chunks of the cache every query sees whole
    tail: int  # chunks from `full * CHUNK` on (reaching into the pass's tokens)
    hidden: torch.Tensor | None  # (n, keys) additive -inf where a query must not look; None: sees all
    selector: torch.Tensor | None  # (tail, tail keys) 1.0 where a key lies in that chunk; None: one chunk


def plan_for(mask: torch.Tensor | None, start: int, n: int) -> Plan | None:
    """The chunk plan of a pass of `n` tokens behind `start` cached ones with this mask (additive, 0 or the
    dtype's lowest, or boolean; None: one token that sees everything). None when the mask is of another
    kind (a bias), which this path does not compute."""
    full = start // CHUNK
    if mask is None:
        return Plan(start, full, 1, None, None)
    visible = mask[0, 0] if mask.dtype == torch.bool else mask[0, 0] == 0
    if mask.dtype != torch.bool and not (visible | (mask[0, 0] <= torch.finfo(mask.dtype).min)).all():
        return None
    # A node's logical position is the cache length plus its depth: how many pass tokens it sees, less one.
    depths = visible[:, start:].sum(1) - 1
    logical = torch.cat([torch.arange(start), start + depths])
    chunks = logical[full * CHUNK:] // CHUNK - full
    tail = int(chunks.max()) + 1
    selector = (chunks == torch.arange(tail)[:, None]).float() if tail > 1 else None
    hidden = None if visible.all() else torch.zeros(visible.shape).masked_fill_(~visible, float("-inf"))
    return Plan(start, full, tail, hidden, selector)


class _PlanCache:
    """The plan of the last mask seen: every layer of a pass gets the same mask object. The mask is held,
    so its identity cannot pass to another tensor while cached."""

    def __init__(self) -> None:
        self.entry: tuple[torch.Tensor, int, Plan | None] | None = None

    def get(self, mask: torch.Tensor, start: int, n: int) -> Plan | None:
        entry = self.entry  # one read: another thread may replace it meanwhile
        if entry is not None and entry[0] is mask and entry[1] == start:
            return entry[2]
        plan = plan_for(mask, start, n)
        self.entry = (mask, start, plan)
        return plan


_plans = _PlanCache()


# Torch multiplies batched matrices smaller than this (rows x inner x columns) in its own loop, which
# rounds each product before adding it, where BLAS fuses them.
TORCH_LOOP_BELOW = 400


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b, always computed by one code path of BLAS's matrix product: both operands row-major (a
    transposed operand takes other kernels, whose sums differ between two rows and more), and rows of
    zeros added to `a` (dropped from the result) where one row would take the matrix-vector path or the
    size torch's own loop."""
    rows, inner, columns = a.shape[-2], a.shape[-1], b.shape[-1]
    needed = max(2, -(-TORCH_LOOP_BELOW // (inner * columns)))
    if rows >= needed:
        return a.contiguous() @ b.contiguous()
    padded = torch.cat([a, a.new_zeros(*a.shape[:-2], needed - rows, inner)], -2)
    return (padded @ b.contiguous())[..., :rows, :]


def _weighted_values(weights: torch.Tensor, values: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Per row, the sum of weight x [value, 1] over its keys: chunk by chunk, then chunks in order.
    weights (kv, rows, keys), values (kv, keys, d + 1), both fp32; returns (kv, rows, d + 1)."""
    base = plan.full * CHUNK
    parts = []
    if plan.full:
        chunked = weights[..., :base].unflatten(-1, (plan.full, CHUNK)).transpose(1, 2)
        parts.append(_product(chunked, values[:, :base].unflatten(1, (plan.full, CHUNK))))
    tail_weights, tail_values = weights[..., base:], values[:, base:]
    if plan.selector is None:
        parts.append(_product(tail_weights, tail_values)[:, None])
    else:
        parts.append(_product(tail_weights[:, None] * plan.selector[:, None], tail_values[:, None]))
    return torch.cat(parts, 1).cumsum(1)[:, -1]


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: Plan, scaling: float) -> torch.Tensor:
    """Attention of query (1, heads, n, d) over key and value (1, kv heads, keys, d) by `plan`, in fp32;
    returns (1, n, heads, d) in the query's dtype."""
    _, heads, n, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    rows = heads // kv_heads * n
    q = query[0].reshape(kv_heads, rows, dim).float()
    keys_t = torch.empty(kv_heads, dim, keys).copy_(key[0].transpose(1, 2))
    scores = _product(q, keys_t).mul_(scaling).view(kv_heads, -1, n, keys)
    if plan.hidden is not None:
        scores += plan.hidden
    weights = (scores - scores.amax(-1, keepdim=True)).exp_().view(kv_heads, rows, keys)
    values = torch.empty(kv_heads, keys, dim + 1)
    values[..., :dim] = value[0]
    values[..., dim] = 1.0
    total = _weighted_values(weights, values, plan)
    out = (total[..., :dim] / total[..., dim:]).view(heads, n, dim)
    return out.transpose(0, 1)[None].to(query.dtype)


def invariant_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: `attend` for one-token and masked passes of one sequence, torch's
    fused attention (as `sdpa`) for the rest."""
    n = query.shape[2]
    start = key.shape[2] - n
    plan = None
    if query.shape[0] == 1 and (attention_mask is not None or n == 1) and query.device.type == "cpu":
        plan = plan_for(None, start, n) if attention_mask is None else _plans.get(attention_mask, start, n)
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return attend(query, key, value, plan, query.shape[-1] ** -0.5 if scaling is None else scaling), None


# torch hands bf16 products larger than this (rows x inner x columns) to oneDNN, smaller ones elsewhere.
ONEDNN_ABOVE = 16 * 16 * 16


class InvariantLinear(torch.nn.Module):
    """A drop-in for a bf16 `nn.Linear` whose product always takes oneDNN's matrix path: one row would
    take its matrix-vector path, which sums in another order than the product every pass of several rows
    shares, and a small product another library; rows are repeated up to what avoids both (and dropped
    from the result). Shares the original weight and bias (a tied head stays tied); the bias is added
    after the product, in every pass alike."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.rows = max(2, ONEDNN_ABOVE // self.weight.numel() + 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        if rows.shape[0] < self.rows:  # one cat: `repeat` costs several dispatches per call
            out = torch.nn.functional.linear(torch.cat([rows] * -(-self.rows // rows.shape[0])), self.weight)
            out = out[: rows.shape[0]]
        else:
            out = torch.nn.functional.linear(rows, self.weight)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*hidden.shape[:-1], -1)


def install_attention(model: torch.nn.Module) -> None:
    """Make every attention layer of `model` run `invariant_attention` (registered under `NAME`)."""
    AttentionInterface.register(NAME, invariant_attention)
    model.set_attn_implementation(NAME)


def install_linears(model: torch.nn.Module) -> None:
    """Make every bf16 `nn.Linear` of `model` an `InvariantLinear`."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is torch.nn.Linear and child.weight.dtype == torch.bfloat16:
                setattr(parent, name, InvariantLinear(child))


def installed(model: torch.nn.Module) -> bool:
    return getattr(model.config, "_attn_implementation", None) == NAME
