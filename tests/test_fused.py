"""Fused projections (`tr.device.fused`): a Llama layer's q, k, v products as one and its gate and up products
as one give the same logits, bit for bit, as the separate products, in every dtype the invariant kernels run."""

from __future__ import annotations

import pytest
import torch

from tiny_models import tiny_model
from tr.device import fused, invariant, kernels
from tr.passes import EagerPasses, chain


def passes_logits(model: torch.nn.Module) -> list[torch.Tensor]:
    """A prefill of 40 tokens (more than one block of bf16 rows), one token, then a chain of 5."""
    ids = torch.randint(0, 96, (46,), generator=torch.Generator().manual_seed(0))
    run = EagerPasses(model, 64)
    with torch.inference_mode():
        return [run(ids[:40], torch.arange(40)), run(ids[40:41], torch.arange(40, 41)),
                run(ids[41:46], torch.arange(41, 46), chain(5))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_projections_give_the_separate_products_bits(dtype):
    if not invariant.supported(dtype):
        pytest.skip(f"no oneDNN product in {dtype} on this CPU")
    together, apart = (tiny_model("llama", 96, seed=0, dtype=dtype).cpu() for _ in range(2))
    kernels.install_kernels(together)
    kernels.install_kernels(apart, fuse=False)
    layers = together.config.num_hidden_layers
    assert sum(isinstance(m, (fused.FusedAttention, fused.FusedMLP)) for m in together.modules()) == 2 * layers
    assert not any(isinstance(m, (fused.FusedAttention, fused.FusedMLP)) for m in apart.modules())
    for mine, theirs in zip(passes_logits(together), passes_logits(apart)):
        assert torch.equal(mine, theirs)


def test_only_the_exact_llama_classes_are_fused():
    """A model of another family (GPT-2's attention, Qwen2's own classes) keeps its layers."""
    for kind in ("gpt2", "qwen2"):
        model = tiny_model(kind, 96, seed=0, dtype=torch.float32).cpu()
        kernels.install_kernels(model)
        assert not any(isinstance(m, (fused.FusedAttention, fused.FusedMLP)) for m in model.modules()), kind
