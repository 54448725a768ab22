"""Batch-invariant products and attention on the CPU: a token's logits are the same bits whether it is
computed alone (plain decoding) or inside a verification pass over a draft tree, so Token Recycling's greedy
output equals plain decoding's by construction, in float32 and bf16 alike.

Everything rests on one matrix product (`product`): oneDNN's kernel, which gives an output the same bits
whatever the other rows and columns of the pass, and sums over the inner dimension one term after another.
BLAS libraries do neither in general (MKL's float32 product changes its order with the row count, and on
AMD processors its strict mode does not fix it); `tests/test_kernels.py` checks each property on the
machine that runs it, and `python -m tools.invariance` the whole model.

- Weight products (`InvariantLinear`): `product` for every row count (bf16 in blocks of `BF16_ROWS` rows).
- Attention scores: q . k over the head dimension, `product` of the queries with the cached keys, in fp32
  (bf16 inputs widen exactly).
- Softmax: one max over the visible scores (exact in any order), exp elementwise.
- Weighted values: keys are cut into chunks of `CHUNK` logical positions; each chunk's sum of weight x
  value (and of weights, via a row of ones below the values) is one `product` over at most a few hundred
  keys, summed one key after another, so masked keys (weight 0) between visible ones change nothing; the
  chunks' sums are then added in order (`cumsum`, a sequential scan).

A tree node's visible keys are the cache, then its ancestors and itself in slot order, i.e. logical
order; so full chunks of the cache are shared by every node, and only the chunks that reach into the
tree (one or two) are computed per chunk with the other chunks' keys weighted 0.

Only one-token passes and passes with an explicit mask (verification) take this attention; a prompt's
causal pass (no mask, several tokens) runs torch's fused attention, the same for every decoder.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "tr_invariant"  # the attention implementation's name in transformers' registry
# Logical positions per chunk. A chunk that reaches into the tree is one product over the chunk's cache
# keys and every tree node (up to CHUNK - 1 + 81), a length tests/test_kernels.py checks is summed in order.
CHUNK = 384
# Keys are padded with zeros to a multiple of this, their scores hidden: oneDNN compiles a kernel for every
# new shape, and unpadded every key count a request reaches for the first time is one (BENCHMARKS.md).
# CHUNK is a multiple of it, so a chunk's padded keys stay within the length checked to be summed in order.
BUCKET = 32
# Query rows per kv head up to which a pass multiplies all heads in one product (`_per_head`'s `together`):
# the calls saved outweigh the wasted arithmetic up to about 20 tokens of a 3:1 grouped model (BENCHMARKS.md).
TOGETHER_ROWS = 64
# bf16 products are made in calls of at most this many rows: on a CPU with AMX (amx_bf16) oneDNN's bf16
# kernel sums a row in another order once a call has more than 32 rows (more than 63 for some shapes), so
# a tree of 33 or more tokens gave other bits than the same tokens alone (BENCHMARKS.md, 2026-12-07).
BF16_ROWS = 32
# Fewer rows than this are padded with zero rows: one row would take oneDNN's vector path (another order),
# and its matrix kernel reads a layer's weights faster for 4 rows than for 2 or 3 (BENCHMARKS.md, 2026-12-07).
MIN_ROWS = 4


def padded_keys(count: int) -> int:
    """`count` keys padded to a multiple of `BUCKET`, as attention multiplies them."""
    return -(-count // BUCKET) * BUCKET


def heads_together(rows: int) -> bool:
    """Whether a pass with `rows` query rows per kv head multiplies all kv heads in one product."""
    return rows <= TOGETHER_ROWS


@dataclass(frozen=True)
class Plan:
    """How one pass's keys fall into chunks; shared by every layer of the pass."""

    start: int  # cached tokens before the pass: its keys are start .. start + rows
    keys: int  # keys of the pass, padded to a multiple of BUCKET
    full: int  # chunks of the cache every query sees whole
    hidden: torch.Tensor | None  # (n, keys) additive -inf where a query must not look (padding included)
    selector: torch.Tensor | None  # (tail chunks, tail keys) 1.0 where a key lies in that chunk; None: one


def _visible(mask: torch.Tensor | None, keys: int, n: int) -> torch.Tensor | None:
    """(n, keys) which keys each query sees, or None for a mask of another kind (a bias)."""
    if mask is None:
        return torch.ones(n, keys, dtype=torch.bool)
    if mask.dtype == torch.bool:
        return mask[0, 0].cpu()
    if (mask[0, 0] == 0).logical_or_(mask[0, 0] <= torch.finfo(mask.dtype).min).all():
        return (mask[0, 0] == 0).cpu()
    return None


def plan_for(mask: torch.Tensor | None, keys: int, n: int) -> Plan | None:
    """The chunk plan of a pass of `n` tokens over `keys` keys with this mask (additive, 0 or the dtype's
    lowest, or boolean; None: one token that sees everything). The pass's own keys are the `n` that end at
    the last key any query sees (a static cache has unused keys after them), and `start` the keys before.
    None when the mask is of another kind (a bias) or the pass's keys are not so placed (each query seeing
    its own): this path does not compute those."""
    seen = _visible(mask, keys, n)
    if seen is None:
        return None
    end = int(seen.any(0).nonzero().max()) + 1 if seen.any() else 0
    start = end - n
    if start < 0 or not seen[:, start:end].diagonal().all():
        return None
    full, keys = start // CHUNK, padded_keys(end)
    visible = torch.zeros(n, keys, dtype=torch.bool)
    visible[:, :end] = seen[:, :end]
    # A node's logical position is the cache length plus its depth: how many pass tokens it sees, less one.
    depths = visible[:, start:].sum(1) - 1
    logical = torch.cat([torch.arange(start), start + depths, torch.full((keys - start - n,), start)])
    chunks = logical[full * CHUNK:] // CHUNK - full
    tail = int(chunks.max()) + 1
    selector = (chunks == torch.arange(tail)[:, None]).float() if tail > 1 else None
    hidden = None if visible.all() else torch.zeros(visible.shape).masked_fill_(~visible, float("-inf"))
    return Plan(start, keys, full, hidden, selector)


class _PlanCache:
    """The plan of the last pass seen: every layer of a pass gets the same mask object (None for a
    one-token pass, told apart by its key count), and every pass a new one (a static buffer is handed over
    as a new view per pass). The mask is held, so its identity cannot pass to another tensor while cached."""

    def __init__(self) -> None:
        self.entry: tuple[torch.Tensor | None, int, Plan | None] | None = None

    def get(self, mask: torch.Tensor | None, keys: int, n: int) -> Plan | None:
        entry = self.entry  # one read: another thread may replace it meanwhile
        if entry is not None and entry[0] is mask and entry[1] == keys:
            return entry[2]
        plan = plan_for(mask, keys, n)
        self.entry = (mask, keys, plan)
        return plan


_plans = _PlanCache()


def product(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """rows @ weight.T ((m, k) and (n, k), fp32 or bf16; the weight as it is or `packed`), always by oneDNN's
    matrix kernel, which gives each output the same bits whatever the other rows and columns, and sums over
    k one term after another (so zeros anywhere in a row change nothing). One row or one column would take
    its vector path, which sums in another order: rows of zeros make up `MIN_ROWS`, a column of zeros a
    second column (both dropped). bf16 rows go in blocks of `BF16_ROWS`, a count every such kernel keeps a
    row's bits at."""
    m, n = rows.shape[0], weight.shape[0]
    if m > BF16_ROWS and rows.dtype == torch.bfloat16:
        return torch.cat([product(rows[i:i + BF16_ROWS], weight) for i in range(0, m, BF16_ROWS)])
    if m < MIN_ROWS:
        rows = torch.cat([rows, rows.new_zeros(MIN_ROWS - m, rows.shape[1])])
    if weight.layout == torch.strided:  # a packed weight is oneDNN's own (and has many rows)
        # A view with gaps between its rows takes a slow kernel that sums in another order: copy it.
        weight = torch.cat([weight, weight.new_zeros(1, weight.shape[1])]) if n < 2 else weight.contiguous()
    out = torch.ops.mkldnn._linear_pointwise(rows.contiguous(), weight, None, "none", [], "")
    return out[:m, :n]


def packed(weight: torch.Tensor) -> torch.Tensor:
    """A copy of `weight` in oneDNN's blocked layout, so that `product` does not reorder it at every call
    (faster: BENCHMARKS.md); the same bits as the weight as it is."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 2)


def _per_head(rows: torch.Tensor, weights: torch.Tensor, together: bool) -> torch.Tensor:
    """`product` of each kv head's rows (kv, r, k) with its weights (kv, c, k): (kv, r, c). `together`: one
    product of every head's rows with every head's weights, the pairs across heads dropped: one oneDNN call
    instead of one per head, for kv-fold the arithmetic (worth it while the rows are few: `TOGETHER_ROWS`).
    The same bits either way: an output's bits depend on its own row and column only."""
    kv, r, c = rows.shape[0], rows.shape[1], weights.shape[1]
    if not together:
        return torch.stack([product(rows[h], weights[h]) for h in range(kv)])
    every = product(rows.reshape(kv * r, -1), weights.reshape(kv * c, -1)).view(kv, r, kv, c)
    return every.diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def _weighted_values(weights: torch.Tensor, values_t: torch.Tensor, plan: Plan, together: bool) -> torch.Tensor:
    """Per row, the sum of weight x [value, 1] over its keys: chunk by chunk, then chunks in order.
    weights (kv, rows, keys), values_t (kv, d + 1, keys), both fp32; returns (kv, rows, d + 1)."""
    base = plan.full * CHUNK
    parts = [_per_head(weights[..., c * CHUNK:(c + 1) * CHUNK], values_t[..., c * CHUNK:(c + 1) * CHUNK], together)
             for c in range(plan.full)]
    tail_weights, tail_values = weights[..., base:], values_t[..., base:]
    if plan.selector is None:
        parts.append(_per_head(tail_weights, tail_values, together))
    else:
        parts += [_per_head(tail_weights * chunk, tail_values, together) for chunk in plan.selector]
    if len(parts) == 1:
        return parts[0]
    # In order, in double, rounded once (as torch's CPU cumsum adds float32): the same in every pass.
    return functools.reduce(torch.add, parts[1:], parts[0].double()).float()


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: Plan, scaling: float) -> torch.Tensor:
    """Attention of query (1, heads, n, d) over key and value (1, kv heads, keys, d) by `plan`, in fp32;
    returns (1, n, heads, d) in the query's dtype."""
    kv_heads, keys, dim = key.shape[1:]
    padded = key.new_zeros(kv_heads, plan.keys, dim, dtype=torch.float32)
    padded[:, :keys] = key[0]
    values_t = key.new_zeros(kv_heads, dim + 1, plan.keys, dtype=torch.float32)
    values_t[:, :dim, :keys] = value[0].transpose(1, 2)
    values_t[:, dim] = 1.0
    return attend_laid_out(query[0], padded, values_t, plan, scaling)[None]


def attend_laid_out(query: torch.Tensor, keys: torch.Tensor, values_t: torch.Tensor, plan: Plan,
                    scaling: float) -> torch.Tensor:
    """`attend` over keys and values already laid out as it multiplies them, in fp32: query (heads, n, d),
    keys (kv heads, plan.keys, d) zero past the pass's last key, values_t (kv heads, d + 1, plan.keys) the
    values transposed over a row of ones. Returns (n, heads, d) in the query's dtype."""
    heads, n, dim = query.shape
    kv_heads = keys.shape[0]
    rows = heads // kv_heads * n
    together = heads_together(rows)
    q = query.reshape(kv_heads, rows, dim).float()
    scores = (_per_head(q, keys, together) * scaling).view(kv_heads, -1, n, plan.keys)
    if plan.hidden is not None:
        scores += plan.hidden
    weights = (scores - scores.amax(-1, keepdim=True)).exp_().view(kv_heads, rows, plan.keys)
    total = _weighted_values(weights, values_t, plan, together)
    out = (total[..., :dim] / total[..., dim:]).view(heads, n, dim)
    return out.transpose(0, 1).to(query.dtype)


def invariant_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: `attend` for one-token and masked passes of one sequence, torch's
    fused attention (as `sdpa`) for the rest."""
    n = query.shape[2]
    plan = None
    if query.shape[0] == 1 and (attention_mask is not None or n == 1) and query.device.type == "cpu":
        plan = _plans.get(attention_mask, key.shape[2], n)
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    end, scaling = plan.start + n, query.shape[-1] ** -0.5 if scaling is None else scaling
    return attend(query, key[:, :, :end], value[:, :, :end], plan, scaling), None


class InvariantLinear(torch.nn.Module):
    """A drop-in for a CPU float32 or bf16 `nn.Linear` whose product is `product`'s, the same for a row
    whatever the pass's row count. Shares the original weight and bias (a tied head stays tied) and
    multiplies by a `packed` copy of the weight, made once: the module stays on the CPU. The bias is added
    after the product, in every pass alike."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.packed = packed(linear.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = product(hidden.reshape(-1, hidden.shape[-1]), self.packed)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*hidden.shape[:-1], -1)


def install_attention(model: torch.nn.Module) -> None:
    """Make every attention layer of `model` run `invariant_attention` (registered under `NAME`)."""
    AttentionInterface.register(NAME, invariant_attention)
    model.set_attn_implementation(NAME)


@functools.cache
def supported(dtype: torch.dtype) -> bool:
    """Whether `product` runs in this dtype here (oneDNN has no bf16 kernel where the CPU lacks bf16 and
    AVX-512; torch builds without oneDNN have none at all)."""
    try:
        product(torch.ones(2, 2, dtype=dtype), packed(torch.ones(2, 2, dtype=dtype)))
    except (RuntimeError, AttributeError):
        return False
    return True


def install_linears(model: torch.nn.Module) -> None:
    """Make every CPU `nn.Linear` of `model` whose dtype `product` supports an `InvariantLinear`."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is torch.nn.Linear and child.weight.device.type == "cpu" and supported(child.weight.dtype):
                setattr(parent, name, InvariantLinear(child))


def installed(model: torch.nn.Module) -> bool:
    return getattr(model.config, "_attn_implementation", None) == NAME
