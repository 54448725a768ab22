"""Kernel choices: MKL's code branch from the CPU flags, in strict mode (float32 products row-invariant), the
CPU LM head that must equal nn.Linear (and keep the fp32 argmax when it screens in half precision), grouped
attention on the CPU, no cuDNN attention on CUDA, and the batch-invariant attention (a tree node's bits equal
its one-token pass's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_models import tiny_model
from tr.device import invariant, kernels
from tr.decoding import autoregressive, forward, tree_buffers, tree_mask
from tr.kv_cache import PreallocatedCache
from tr.sampling import Sampling
from tr.trees import ancestor_mask

ROOT = Path(__file__).resolve().parents[1]


def cpu_model(dtype: torch.dtype) -> torch.nn.Module:
    """A tiny model on the CPU even when the suite runs on $TR_TEST_DEVICE: these kernels are the CPU's."""
    return tiny_model("llama", 96, seed=0, dtype=dtype).cpu()


def test_mkl_branch_is_the_widest_the_cpu_has():
    assert kernels.best_mkl_branch({"avx", "avx2", "avx512f"}) == "AVX512"
    assert kernels.best_mkl_branch({"avx", "avx2", "fma"}) == "AVX2"
    assert kernels.best_mkl_branch({"sse4_2"}) is None
    # Importing tr applied it (unless the environment already said otherwise), and the bench reports it.
    assert kernels.settings()["MKL_CBWR"] == os.environ.get("MKL_CBWR", "")


def test_configure_leaves_a_user_setting_alone(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    kernels.configure()
    assert kernels.settings()["MKL_CBWR"] == "COMPATIBLE"


def test_grouped_attention_is_switched_on_for_cpu_models_only_and_keeps_a_user_setting(monkeypatch):
    monkeypatch.delenv(kernels.GROUPED_ATTENTION, raising=False)
    kernels.install_kernels(cpu_model(torch.float32).to("meta"))
    assert kernels.GROUPED_ATTENTION not in os.environ  # not a CPU model: left alone
    kernels.install_kernels(cpu_model(torch.float32))
    assert kernels.settings()[kernels.GROUPED_ATTENTION] == "1"
    monkeypatch.setenv(kernels.GROUPED_ATTENTION, "0")
    kernels.install_kernels(cpu_model(torch.float32))
    assert os.environ[kernels.GROUPED_ATTENTION] == "0"


def test_tree_passes_give_the_same_logits_with_and_without_grouped_attention(monkeypatch):
    """The switch changes how grouped heads are fed to the kernel, not what attention computes."""
    model = cpu_model(torch.float64)
    prompt, tree = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7])
    ancestors = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)  # a root with two children
    logits = {}
    for switch in ("0", "1"):
        monkeypatch.setenv(kernels.GROUPED_ATTENTION, switch)
        cache = PreallocatedCache(16)
        with torch.inference_mode():
            forward(model, cache, prompt, torch.arange(4))
            mask = tree_mask(ancestors, 4, torch.float64, torch.device("cpu"))
            logits[switch] = forward(model, cache, tree, torch.tensor([4, 5, 5]), mask)
    assert torch.allclose(logits["0"], logits["1"], rtol=0, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cudnn_attention_is_switched_off_for_cuda_models():
    torch.backends.cuda.enable_cudnn_sdp(True)
    kernels.install_kernels(tiny_model("llama", 96, seed=0, dtype=torch.float32).to("cuda"))
    assert not torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.parametrize("rows", [1, 3, 17])
def test_cpu_lm_head_equals_the_linear_head(rows):
    generator = torch.Generator().manual_seed(rows)
    linear = torch.nn.Linear(64, 500, bias=False)
    linear.weight.data = torch.randn(500, 64, generator=generator)
    hidden = torch.randn(2, rows, 64, generator=generator)
    head = kernels.CpuLmHead(linear)
    assert head.weight is linear.weight
    assert head(hidden).is_contiguous()  # what argmax and top-k read fast
    assert torch.allclose(head(hidden), linear(hidden), rtol=1e-5, atol=1e-4)
    assert torch.allclose(head(hidden[:, -1:]), linear(hidden[:, -1:]), rtol=1e-5, atol=1e-4)
    assert head.double().weight_t.dtype == torch.float64  # the copy moves with the module


def test_installed_only_where_it_applies_and_decoding_is_unchanged(tmp_path):
    model = cpu_model(torch.float32)
    expected = [t for s in autoregressive(model, [1, 2, 3], 20) for t in s.tokens]
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    kernels.install_cpu_linears(model, tmp_path / "plans.json")
    assert isinstance(model.get_output_embeddings(), kernels.CpuLmHead)
    assert sum(isinstance(m, kernels.CpuLinear) for m in model.modules()) == linears
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert [t for s in autoregressive(model, [1, 2, 3], 20) for t in s.tokens] == expected
    plans = kernels.layout_plans(model)
    assert all(len(plan) == kernels.TUNED_ROWS and set(plan) <= set(kernels.LAYOUTS) for plan in plans.values())
    double = cpu_model(torch.float64)
    kernels.install_cpu_linears(double)
    assert kernels.layout_plans(double) == {}


def test_tuned_plans_are_saved_and_read_back_instead_of_tuning_again(tmp_path, monkeypatch):
    file = tmp_path / "plans.json"
    kernels.install_cpu_linears(cpu_model(torch.float32), file)
    saved = json.loads(file.read_text())

    def no_tuning(*args, **kwargs):
        raise AssertionError("tuned although the plans were saved")

    monkeypatch.setattr(kernels, "tune", no_tuning)
    model = cpu_model(torch.float32)
    kernels.install_cpu_linears(model, file)
    assert kernels.layout_plans(model) == saved


def test_no_transposed_copies_beyond_the_budget(monkeypatch):
    monkeypatch.setattr(kernels, "COPY_BUDGET", 0)
    model = cpu_model(torch.float32)
    kernels.install_cpu_linears(model)
    assert all("T" not in plan for plan in kernels.layout_plans(model).values())
    assert all(m.weight_t is None for m in model.modules() if isinstance(m, kernels.CpuLinear))


@pytest.mark.parametrize("bias", [False, True])
def test_every_layout_computes_the_linear_product(bias):
    generator = torch.Generator().manual_seed(int(bias))
    linear = torch.nn.Linear(48, 80, bias=bias)
    hidden = torch.randn(3, 10, 48, generator=generator)
    for letter in kernels.LAYOUTS:
        layer = kernels.CpuLinear(linear, letter * 4)
        for rows in (1, 2, 5, 10):  # within the plan and beyond it (the last letter's layout)
            out = layer(hidden[:, :rows])
            assert out.shape == (3, rows, 80) and out.is_contiguous()
            assert torch.allclose(out, linear(hidden[:, :rows]), rtol=1e-5, atol=1e-5), (letter, rows)
    assert (kernels.CpuLinear(linear, "LW").weight_t is None) and kernels.CpuLinear(linear, "TL").weight_t is not None
    with pytest.raises(ValueError, match="layout plan"):
        kernels.CpuLinear(linear, "LX")


def test_tune_picks_the_fastest_layout_per_row_count_and_the_simpler_one_on_a_draw(monkeypatch):
    """Fake layouts whose cost is known: W is slow for one row, T for several, L slow everywhere but
    at three rows, where all three cost the same."""
    fast, slow = 5e-3, 15e-3
    cost = {"L": lambda n: fast if n == 3 else slow, "W": lambda n: slow if n == 1 else fast,
            "T": lambda n: fast if n in (1, 3) else slow}
    clock = [0.0]  # a fake timer: each layout call advances it by that layout's cost

    def fake(letter):
        def layout(rows, weight, weight_t):
            clock[0] += cost[letter](rows.shape[0])
        return layout

    monkeypatch.setattr(kernels, "LAYOUTS", {letter: fake(letter) for letter in cost})
    assert kernels.tune([torch.zeros(4, 4)] * 2, max_rows=4, repeats=2, timer=lambda: clock[0]) == "TWLW"


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
    head = kernels.CpuLmHead(linear)
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
    kernels.install_cpu_linears(model)
    head, seen = model.get_output_embeddings(), []
    head.register_forward_pre_hook(lambda module, args: seen.append(module.argmax_only))
    list(autoregressive(model, [1, 2, 3], 5))
    assert seen and all(seen) and not head.argmax_only  # on while decoding, off afterwards
    seen.clear()
    list(autoregressive(model, [1, 2, 3], 5, Sampling(temperature=1.0, seed=0)))
    assert seen and not any(seen)


def test_cpu_models_get_the_invariant_attention_and_bf16_ones_the_invariant_products():
    bf16, fp32 = cpu_model(torch.bfloat16), cpu_model(torch.float32)
    kernels.install_kernels(bf16)
    kernels.install_kernels(fp32)
    assert invariant.installed(bf16) and invariant.installed(fp32)
    assert not any(type(m) is torch.nn.Linear for m in bf16.modules())
    assert set(kernels.layout_plans(bf16).values()) == {invariant.PLAN}
    assert invariant.PLAN not in kernels.layout_plans(fp32).values()  # tuned layouts, invariant in strict mode


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch is built without MKL here")
def test_float32_products_are_the_same_bits_whatever_the_rows_and_the_layout():
    """What Token Recycling's float32 exactness relies on, in the mode `configure` sets (conftest sets it
    before the suite's first product): a row's product is the same bits alone, among 2 to 81 rows, and in
    every layout the tuner may pick, for the shapes of the bundled model (inner sizes 576 and 1536)."""
    assert kernels.strict_products()
    generator = torch.Generator().manual_seed(0)
    for out_features, in_features in ((576, 576), (192, 576), (576, 1536), (1536, 576)):
        weight = torch.randn(out_features, in_features, generator=generator) * 0.05
        rows = torch.randn(81, in_features, generator=generator)
        alone = kernels.LAYOUTS["L"](rows[:1], weight, None)[0]
        for letter in kernels.LAYOUTS:
            for n in (1, 2, 3, 4, 8, 16, 17, 33, 64, 81):
                product = kernels.LAYOUTS[letter](rows[:n], weight, weight.t().contiguous())
                assert torch.equal(product[0], alone), (out_features, in_features, letter, n)


def test_strict_products_reads_the_mode_mkl_runs_in():
    """Not strict where the user pinned a plain branch (configure leaves it alone), in a fresh process."""
    script = ("from tr.device import kernels; import torch; kernels.configure(); torch.ones(2, 2) @ torch.ones(2, 2); "
              "print(kernels.strict_products())")
    env = dict(os.environ, MKL_CBWR="COMPATIBLE")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_blas_sums_as_the_invariant_attention_assumes():
    """What `tr.device.invariant` relies on, on this machine: an fp32 matrix product of two rows or more
    gives each row the same bits whatever the other rows, and sums one key after another, so keys of
    weight 0 anywhere (as many as a chunk reaching into an 81-node tree holds) change nothing."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(invariant.CHUNK + 81, 65, generator=generator)
    weights = torch.rand(40, invariant.CHUNK + 81, generator=generator)
    for keys in (1, 2, 7, 64, invariant.CHUNK, invariant.CHUNK + 80):
        kept = torch.randperm(invariant.CHUNK + 81, generator=generator)[:keys].sort().values
        sparse = torch.zeros_like(weights)
        sparse[:, kept] = weights[:, kept]
        dense = invariant._product(weights[:, kept], values[kept])
        assert torch.equal(invariant._product(sparse, values), dense)
        for rows in (1, 2, 3, 17):
            assert torch.equal(invariant._product(weights[:rows, kept], values[kept]), dense[:rows])
            batched = invariant._product(weights[:rows, kept].expand(3, -1, -1), values[kept].expand(3, -1, -1))
            assert torch.equal(batched, dense[:rows].expand(3, -1, -1))
    scores = torch.randn(5000, generator=generator) * 20
    assert torch.equal(torch.stack([s.exp() for s in scores[:200]]), scores.exp()[:200])


def tree_attention_matches_one_token_attention(heads: int, kv_heads: int, start: int, parents: list[int]) -> None:
    generator = torch.Generator().manual_seed(start)
    n, dim = len(parents), 64
    query = torch.randn(1, heads, n, dim, generator=generator).bfloat16()
    key, value = (torch.randn(1, kv_heads, start + n, dim, generator=generator).bfloat16() for _ in range(2))
    ancestors = ancestor_mask(parents, max(tree_buffers(tuple(parents)).depths.tolist()))
    mask = tree_mask(ancestors, start, torch.bfloat16, torch.device("cpu"))
    together = invariant.attend(query, key, value, invariant.plan_for(mask, start, n), dim**-0.5)
    for node in range(n):
        seen = list(range(start)) + [start + int(i) for i in ancestors[node].nonzero()]
        alone = invariant.attend(query[:, :, node : node + 1], key[:, :, seen], value[:, :, seen],
                                 invariant.plan_for(None, len(seen) - 1, 1), dim**-0.5)
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
    out = invariant.attend(query, key, value, invariant.plan_for(mask, 2 * invariant.CHUNK, 3), 0.125)
    expected = torch.nn.functional.scaled_dot_product_attention(query.double(), key.double(), value.double(),
                                                                mask.double(), enable_gqa=True)
    assert torch.allclose(out.double(), expected.transpose(1, 2), atol=1e-5)
    assert invariant.plan_for(mask + 1.0, 2 * invariant.CHUNK, 3) is None  # a bias: not this path's
