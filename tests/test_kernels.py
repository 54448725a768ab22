"""Kernel choices: the batch-invariant products (float32 and bf16: a row's bits whatever the rows beside it)
and attention (a tree node's bits equal its one-token pass's), the screened LM head that keeps the fp32
argmax, and no cuDNN attention on CUDA."""

from __future__ import annotations

import pytest
import torch

from tiny_models import tiny_model
from tr.device import invariant, kernels
from tr.decoding import autoregressive, tree_buffers
from tr.passes import tree_mask
from tr.sampling import Sampling
from tr.trees import ancestor_mask


def cpu_model(dtype: torch.dtype) -> torch.nn.Module:
    """A tiny model on the CPU even when the suite runs on $TR_TEST_DEVICE: these kernels are the CPU's."""
    return tiny_model("llama", 96, seed=0, dtype=dtype).cpu()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cudnn_attention_is_switched_off_for_cuda_models():
    torch.backends.cuda.enable_cudnn_sdp(True)
    kernels.install_kernels(tiny_model("llama", 96, seed=0, dtype=torch.float32).to("cuda"))
    assert not torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.parametrize("rows", [1, 3, 17])
def test_invariant_linear_and_screened_head_compute_the_linear_product(rows):
    generator = torch.Generator().manual_seed(rows)
    hidden = torch.randn(2, rows, 64, generator=generator)
    for bias in (False, True):
        linear = torch.nn.Linear(64, 500, bias=bias)
        layer = invariant.InvariantLinear(linear)
        assert layer.weight is linear.weight and layer(hidden).is_contiguous()  # what argmax and top-k read fast
        assert torch.allclose(layer(hidden), linear(hidden), rtol=1e-5, atol=1e-4)
    head = kernels.ScreenedHead(linear)
    assert torch.allclose(head(hidden), linear(hidden), rtol=1e-5, atol=1e-4)


def test_installed_only_where_it_applies_and_decoding_is_unchanged():
    model = cpu_model(torch.float32)
    expected = [t for s in autoregressive(model, [1, 2, 3], 20) for t in s.tokens]
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    kernels.install_kernels(model)
    assert isinstance(model.get_output_embeddings(), kernels.ScreenedHead)
    # A Llama layer's q, k, v projections run as one product, its gate and up projections as another.
    fused_away = 3 * model.config.num_hidden_layers
    assert sum(isinstance(m, invariant.InvariantLinear) for m in model.modules()) == linears - fused_away
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert [t for s in autoregressive(model, [1, 2, 3], 20) for t in s.tokens] == expected
    double = cpu_model(torch.float64)
    kernels.install_kernels(double)  # no oneDNN product in float64: left as it is
    assert not any(isinstance(m, invariant.InvariantLinear) for m in double.modules())


def near_tie_head(vocab: int = 400, hidden: int = 64, seed: int = 0) -> torch.nn.Linear:
    """A head whose rows come in pairs closer together than half precision can tell apart."""
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    weight = torch.randn(vocab // 2, hidden, generator=generator)
    twin = weight + 1e-3 * torch.randn(vocab // 2, hidden, generator=generator)
    head.weight.data = torch.cat([weight, twin])
    return head


def test_the_screened_head_keeps_the_fp32_argmax_even_where_half_precision_cannot_tell():
    linear = near_tie_head()
    head = kernels.ScreenedHead(linear)
    if head.screen.packed is None:
        pytest.skip("this torch build has no fbgemm fp16 kernels")
    generator = torch.Generator().manual_seed(1)
    # Hidden rows pointing at a row of the head: its twin is the only rival, a near tie every time.
    picks = torch.randint(0, 400, (300,), generator=generator)
    hidden = 3 * linear.weight.detach()[picks] + 0.1 * torch.randn(300, 64, generator=generator)
    truth = hidden.double() @ linear.weight.detach().double().t()
    top2 = truth.topk(2, dim=1).values
    clear = top2[:, 0] - top2[:, 1] > 1e-3  # ties closer than that are float32 rounding's to break
    half_only = torch.ops.quantized.linear_dynamic_fp16(hidden, head.screen.packed)
    assert (half_only.argmax(1) != truth.argmax(1))[clear].sum() > 20  # the screen alone gets these wrong
    head.argmax_only = True
    with torch.inference_mode():
        for rows in (1, 6, 7, 300):  # below, at and above fbgemm's six-row block
            screened = head(hidden[:rows])
            assert torch.equal(screened.argmax(1)[clear[:rows]], truth[:rows].argmax(1)[clear[:rows]])
            margin = head.screen.bound * hidden[:rows].norm(dim=1, keepdim=True)
            assert ((screened - truth[:rows]).abs() <= margin).all()  # the rest: within the proven bound


def test_argmax_only_is_scoped_to_greedy_decoding_and_sampling_reads_exact_logits():
    model = cpu_model(torch.float32)
    kernels.install_kernels(model)
    head, seen = model.get_output_embeddings(), []
    head.register_forward_pre_hook(lambda module, args: seen.append(module.argmax_only))
    list(autoregressive(model, [1, 2, 3], 5))
    assert seen and all(seen) and not head.argmax_only  # on while decoding, off afterwards
    seen.clear()
    list(autoregressive(model, [1, 2, 3], 5, Sampling(temperature=1.0, seed=0)))
    assert seen and not any(seen)


def test_cpu_models_get_the_invariant_products_and_attention_in_both_dtypes():
    assert invariant.supported(torch.float32)  # oneDNN multiplies float32 on every CPU torch builds it for
    for dtype in filter(invariant.supported, (torch.float32, torch.bfloat16)):
        model = cpu_model(dtype)
        kernels.install_kernels(model)
        assert invariant.installed(model) and not any(type(m) is torch.nn.Linear for m in model.modules())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_products_are_the_same_bits_whatever_the_rows_and_columns_beside(dtype):
    """What Token Recycling's exactness relies on: a row's product is the same bits alone and among 2 to
    96 rows, with the weight as it is or packed, for the shapes of the bundled model (inner sizes 576 and
    1536), and an output column the same whatever the columns beside it, before or after it (attention's
    scores: one column per key, the kv heads side by side in a one-token pass)."""
    if not invariant.supported(dtype):
        pytest.skip(f"no oneDNN product in {dtype} on this CPU")
    generator = torch.Generator().manual_seed(0)
    for out_features, in_features in ((576, 576), (192, 576), (960, 576), (576, 1536), (3072, 576)):
        weight = (torch.randn(out_features, in_features, generator=generator) * 0.05).to(dtype)
        rows = torch.randn(96, in_features, generator=generator).to(dtype)
        alone = torch.cat([invariant.product(rows[i:i + 1], weight) for i in range(len(rows))])
        for form in (weight, invariant.packed(weight)):
            # Every row, not only the first: on AMX CPUs bf16 kernels changed the later rows' sums from 33 rows.
            for n in (2, 3, 4, 8, 16, 17, 32, 33, 48, 64, 65, 81, 96):
                assert torch.equal(invariant.product(rows[:n], form), alone[:n]), (out_features, in_features, n)
        every_column = invariant.product(rows, weight)
        for first, last in ((0, 1), (0, 2), (0, 7), (0, 100), (5, 6), (33, 140), (100, out_features)):
            assert torch.equal(invariant.product(rows, weight[first:last]), every_column[:, first:last])


def test_products_sum_in_order_as_the_invariant_attention_assumes():
    """What `tr.device.invariant`'s attention relies on, on this machine: its fp32 product gives each row
    the same bits whatever the other rows, and sums one key after another, so keys of weight 0 anywhere
    (as many as a chunk reaching into an 81-node tree holds, padded) change nothing."""
    generator = torch.Generator().manual_seed(0)
    longest = invariant.padded_keys(invariant.CHUNK + 80)
    values_t = torch.randn(65, longest, generator=generator)  # (value dims + 1, keys)
    weights = torch.rand(40, longest, generator=generator)
    for keys in (1, 2, 7, 64, invariant.CHUNK, invariant.CHUNK + 80, longest):
        kept = torch.randperm(longest, generator=generator)[:keys].sort().values
        sparse = torch.zeros_like(weights)
        sparse[:, kept] = weights[:, kept]
        dense = invariant.product(weights[:, kept], values_t[:, kept])
        assert torch.equal(invariant.product(sparse, values_t), dense)
        for rows in (1, 2, 3, 17):
            assert torch.equal(invariant.product(weights[:rows, kept], values_t[:, kept]), dense[:rows])
    scores = torch.randn(5000, generator=generator) * 20
    assert torch.equal(torch.stack([s.exp() for s in scores[:200]]), scores.exp()[:200])


def tree_attention_matches_one_token_attention(heads: int, kv_heads: int, start: int, parents: list[int]) -> None:
    generator = torch.Generator().manual_seed(start)
    n, dim = len(parents), 64
    query = torch.randn(1, heads, n, dim, generator=generator).bfloat16()
    key, value = (torch.randn(1, kv_heads, start + n, dim, generator=generator).bfloat16() for _ in range(2))
    ancestors = ancestor_mask(parents, max(tree_buffers(tuple(parents)).depths.tolist()))
    mask = tree_mask(ancestors, start, torch.bfloat16, torch.device("cpu"))
    together = invariant.attend(query, key, value, invariant.plan_for(mask, start + n, n), dim**-0.5)
    for node in range(n):
        seen = list(range(start)) + [start + int(i) for i in ancestors[node].nonzero()]
        alone = invariant.attend(query[:, :, node : node + 1], key[:, :, seen], value[:, :, seen],
                                 invariant.plan_for(None, len(seen), 1), dim**-0.5)
        assert torch.equal(alone[0, 0], together[0, node]), (heads, kv_heads, start, node)


@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (4, 4)])
def test_attention_of_a_tree_node_equals_its_attention_alone_bit_for_bit(heads, kv_heads):
    """Chains and random trees, behind caches that end inside, at and across chunk boundaries."""
    generator = torch.Generator().manual_seed(heads)
    for start in (0, 2, invariant.CHUNK - 1, invariant.CHUNK, 2 * invariant.CHUNK + 5):
        for n in (2, 9, 33):
            chain = [-1, *range(n - 1)]
            tree = [-1] + [int(torch.randint(i, (1,), generator=generator)) for i in range(1, n)]
            for parents in (chain, tree):
                tree_attention_matches_one_token_attention(heads, kv_heads, start, parents)


def test_invariant_attention_computes_attention():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 6, 3, 64, generator=generator)
    key, value = (torch.randn(1, 2, 2 * invariant.CHUNK + 3, 64, generator=generator) for _ in range(2))
    ancestors = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    mask = tree_mask(ancestors, 2 * invariant.CHUNK, torch.float32, torch.device("cpu"))
    out = invariant.attend(query, key, value, invariant.plan_for(mask, 2 * invariant.CHUNK + 3, 3), 0.125)
    expected = torch.nn.functional.scaled_dot_product_attention(query.double(), key.double(), value.double(),
                                                                mask.double(), enable_gqa=True)
    assert torch.allclose(out.double(), expected.transpose(1, 2), atol=1e-5)
    assert invariant.plan_for(mask + 1.0, 2 * invariant.CHUNK + 3, 3) is None  # a bias: not this path's


def test_a_static_caches_unused_keys_leave_the_plan_as_it_is_without_them():
    """A static cache hands attention every slot, the pass's own keys in the middle and unused ones after:
    the plan finds the pass where its queries see themselves and matches the plan of the keys in use."""
    ancestors = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    start, unused = invariant.CHUNK - 1, 100  # the children fall in the next chunk: a selector
    used = tree_mask(ancestors, start, torch.float32, torch.device("cpu"))
    static = torch.cat([used, torch.full((1, 1, 3, unused), torch.finfo(torch.float32).min)], dim=-1)
    plans = invariant.plan_for(used, start + 3, 3), invariant.plan_for(static, start + 3 + unused, 3)
    assert plans[1].start == plans[0].start == start and plans[1].keys == plans[0].keys
    assert torch.equal(plans[1].hidden, plans[0].hidden) and torch.equal(plans[1].selector, plans[0].selector)
    hidden_self = static.clone()
    hidden_self[0, 0, 1, start + 1] = torch.finfo(torch.float32).min  # a query that does not see itself
    assert invariant.plan_for(hidden_self, start + 3 + unused, 3) is None
