"""The lean forward (`tr.device.lean`): the same logits, bit for bit, as the model's own forward with the
invariant kernels, over every kind of pass a decoder makes; and the models it takes."""

from __future__ import annotations

import pytest
import torch

from tiny_models import tiny_model
from tr.device import invariant, kernels, lean
from tr.passes import EagerPasses, Passes, chain

# A tree of 6 nodes: 0 the root, 1 and 2 its children, 3 under 1, 4 under 2, 5 under 3.
PARENTS = (-1, 0, 0, 1, 2, 3)


def tree_ancestors(parents: tuple[int, ...]) -> torch.Tensor:
    sees = torch.eye(len(parents), dtype=torch.bool)
    for node, parent in enumerate(parents):
        if parent >= 0:
            sees[node] |= sees[parent]
    return sees


def every_kind_of_pass(run: Passes, ids: torch.Tensor) -> list[torch.Tensor]:
    """A prompt, one token, a tree whose second branch is kept, one token, a chain given without ancestors,
    a truncation and a tree again (greedy, last row only): the logits of each pass."""
    out = [run(ids[:40], torch.arange(40))]
    out.append(run(ids[40:41], torch.tensor([40])))
    depths = tree_ancestors(PARENTS).sum(1) - 1
    out.append(run(ids[41:47], 41 + depths, tree_ancestors(PARENTS)))
    run.keep(41, [0, 2, 4])
    out.append(run(ids[47:48], torch.tensor([44])))
    out.append(run(ids[48:52], torch.arange(45, 49)))
    run.truncate(46)
    out.append(run(ids[52:55], torch.arange(46, 49), chain(3), last_only=True, greedy=True))
    return out


def kernels_installed(model: torch.nn.Module) -> torch.nn.Module:
    kernels.install_kernels(model)
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [invariant.CHUNK, invariant.BUCKET])
def test_lean_passes_give_the_models_bits(dtype, chunk, monkeypatch):
    """`chunk` = BUCKET: the cache spans several attention chunks, so full chunks and chunk selectors run."""
    if not invariant.supported(dtype):
        pytest.skip(f"no oneDNN product in {dtype} on this CPU")
    monkeypatch.setattr(invariant, "CHUNK", chunk)
    model = kernels_installed(tiny_model("llama", 96, seed=1, dtype=dtype).cpu())
    assert lean.supports(model)
    ids = torch.randint(0, 96, (60,), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        theirs = every_kind_of_pass(EagerPasses(model, 64), ids)
        mine = every_kind_of_pass(lean.LeanPasses(model, 64), ids)
    for step, (a, b) in enumerate(zip(mine, theirs)):
        assert a.shape == b.shape and torch.equal(a, b), f"pass {step}"


@pytest.mark.parametrize("passes", [EagerPasses, lean.LeanPasses])
def test_tokens_after_a_cache_see_it_with_or_without_ancestors(passes):
    model = kernels_installed(tiny_model("llama", 96, seed=1, dtype=torch.float32).cpu())
    ids = torch.randint(0, 96, (49,), generator=torch.Generator().manual_seed(2))
    out = []
    with torch.inference_mode():
        for ancestors in (None, chain(4)):
            run = passes(model, 64)
            run(ids[:45], torch.arange(45))
            out.append(run(ids[45:], torch.arange(45, 49), ancestors))
    assert torch.equal(out[0], out[1])


def test_the_cache_holds_zeros_past_its_length():
    model = kernels_installed(tiny_model("llama", 96, seed=1, dtype=torch.float32).cpu())
    run = lean.LeanPasses(model, 64)
    with torch.inference_mode():
        every_kind_of_pass(run, torch.randint(0, 96, (60,), generator=torch.Generator().manual_seed(2)))
    cache = run.cache
    assert cache.length == 49
    assert not cache.keys[:, :, cache.length:].any() and not cache.values_t[:, :, :-1, cache.length:].any()
    assert (cache.values_t[:, :, -1] == 1).all()


def test_a_full_cache_is_refused():
    model = kernels_installed(tiny_model("llama", 96, seed=1, dtype=torch.float32).cpu())
    run = lean.LeanPasses(model, 8)
    with torch.inference_mode(), pytest.raises(lean.CacheFullError, match="8 positions, 9 needed"):
        run(torch.zeros(9, dtype=torch.long), torch.arange(9))


def test_only_llama_with_the_invariant_kernels_runs_lean():
    assert not lean.supports(tiny_model("llama", 96, dtype=torch.float32).cpu())  # kernels not installed
    assert not lean.supports(kernels_installed(tiny_model("llama", 96, dtype=torch.float64).cpu()))  # none in f64
    for kind in ("gpt2", "qwen2"):
        assert not lean.supports(kernels_installed(tiny_model(kind, 96, dtype=torch.float32).cpu())), kind


def test_a_loaded_model_decodes_lean_where_it_can(tiny_model_dir):
    from tr.device.model import load_model

    assert load_model(str(tiny_model_dir), device="cpu").passes is lean.LeanPasses
    assert load_model(str(tiny_model_dir), device="cpu", dtype="float64").passes is EagerPasses


def test_the_bundled_models_bits(real_lm):
    """The bundled model as loaded (float32): the same logits either way, on a real prompt."""
    ids = torch.tensor(real_lm.encode("Write a haiku about recycling, then explain it in one sentence."))
    ids = torch.cat([ids, ids])[:60]
    with torch.inference_mode():
        theirs = every_kind_of_pass(EagerPasses(real_lm.model, 96), ids)
        mine = every_kind_of_pass(lean.LeanPasses(real_lm.model, 96), ids)
    for step, (a, b) in enumerate(zip(mine, theirs)):
        assert torch.equal(a, b), f"pass {step}"
