"""Kernel choices: MKL's code branch from the CPU flags, the CPU LM head that must equal nn.Linear, grouped
attention on the CPU, no cuDNN attention on CUDA."""

from __future__ import annotations

import os

import pytest
import torch

from tiny_models import tiny_model
from tr import kernels
from tr.decoding import autoregressive, forward, tree_mask
from tr.kv_cache import PreallocatedCache


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
    kernels.install_kernels(tiny_model("llama", 96, seed=0, dtype=torch.float32).to("meta"))
    assert kernels.GROUPED_ATTENTION not in os.environ  # not a CPU model: left alone
    kernels.install_kernels(tiny_model("llama", 96, seed=0, dtype=torch.float32))
    assert kernels.settings()[kernels.GROUPED_ATTENTION] == "1"
    monkeypatch.setenv(kernels.GROUPED_ATTENTION, "0")
    kernels.install_kernels(tiny_model("llama", 96, seed=0, dtype=torch.float32))
    assert os.environ[kernels.GROUPED_ATTENTION] == "0"


def test_tree_passes_give_the_same_logits_with_and_without_grouped_attention(monkeypatch):
    """The switch changes how grouped heads are fed to the kernel, not what attention computes."""
    model = tiny_model("llama", 96, seed=0, dtype=torch.float64)
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


def test_installed_only_where_it_applies_and_decoding_is_unchanged():
    model = tiny_model("llama", 96, seed=0, dtype=torch.float32)
    expected = [t for s in autoregressive(model, [1, 2, 3], 20) for t in s.tokens]
    assert kernels.install_cpu_lm_head(model)
    assert isinstance(model.get_output_embeddings(), kernels.CpuLmHead)
    assert [t for s in autoregressive(model, [1, 2, 3], 20) for t in s.tokens] == expected
    assert not kernels.install_cpu_lm_head(tiny_model("llama", 96, seed=0, dtype=torch.float64))
