"""4-bit weights (`tr.device.quantized`, `--dtype int4`): the kernel keeps a row's bits whatever the pass,
a Q4_1 grid comes back exactly, and greedy Token Recycling in int4 equals plain int4 decoding."""

from __future__ import annotations

import pytest
import torch

from tr.device import lean, quantized
from tr.device.model import INT4, ModelLoadError, load_model
from tr.generate import generate
from tr.specs import Method, Start, parse_tree

pytestmark = pytest.mark.skipif(not quantized.supported(), reason="no 4-bit CPU kernel in this torch build")


def test_a_row_gets_the_same_bits_in_every_pass():
    generator = torch.Generator().manual_seed(0)
    layer = quantized.Int4Linear(torch.nn.Linear(576, 960, bias=False))
    rows = torch.randn(40, 576, generator=generator).bfloat16()
    alone = torch.cat([layer(rows[i:i + 1]) for i in range(len(rows))])
    for count in range(2, len(rows) + 1):
        assert torch.equal(layer(rows[:count]), alone[:count]), f"{count} rows"


def test_a_q4_1_grid_comes_back_exactly():
    """Weights made as Q4_1 makes them (a step and a minimum per 32, levels 0 to 15 with both ends used),
    in sixty-fourths, so that bf16 holds the weights, steps and zeros exactly: the layer multiplies by those
    very weights."""
    generator = torch.Generator().manual_seed(1)
    out, width = 64, 128
    levels = torch.randint(0, 16, (out, width // 32, 32), generator=generator)
    levels[..., 0], levels[..., 1] = 0, 15
    step = torch.randint(1, 5, (out, width // 32, 1), generator=generator) / 64
    low = -torch.randint(0, 64, (out, width // 32, 1), generator=generator) / 64
    linear = torch.nn.Linear(width, out, bias=False)
    with torch.no_grad():
        linear.weight.copy_((levels * step + low).view(out, width))
    assert torch.equal(quantized.Int4Linear(linear).dequantized().float(), linear.weight.detach())


def test_int4_decoding_is_lossless(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), device="cpu", dtype=INT4)
    assert quantized.installed(lm.model) and lm.passes is lean.LeanPasses and lm.dtype_note.startswith("int4")
    prompt = "Say the numbers from one to twenty, then back again."
    plain = generate(lm, prompt, Method.AR, max_new_tokens=100)
    recycled = generate(lm, prompt, Method.TR, max_new_tokens=100, tree=parse_tree("paper-80", 8, "tree"))
    assert recycled.token_ids == plain.token_ids
    assert len(recycled.steps) < len(plain.steps)


def test_int4_where_it_cannot_run_says_so(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(quantized, "supported", lambda: False)
    with pytest.raises(ModelLoadError, match="int4 needs a CPU with bf16 products"):
        load_model(str(tiny_model_dir), device="cpu", dtype=INT4)


@pytest.mark.slow
def test_the_bundled_model_in_int4_is_lossless():
    """And its 4-bit weights are the bf16 model's up to rounding: the GGUF's Q4_1 levels found again."""
    lm, bf16 = load_model(dtype=INT4), load_model(dtype="bfloat16")
    for mine, theirs in zip(lm.model.model.layers, bf16.model.model.layers):
        for part, name in (("self_attn", "qkv"), ("self_attn", "o_proj"), ("mlp", "gate_up"), ("mlp", "down_proj")):
            weight = getattr(getattr(theirs, part), name).weight.float()
            gap = (getattr(getattr(mine, part), name).dequantized().float() - weight).abs().max()
            assert gap <= 2**-7 * weight.abs().max(), name
    prompt = "Write a Python function that reverses a string."
    plain = generate(lm, prompt, Method.AR, max_new_tokens=48)
    recycled = generate(lm, prompt, Method.TR, max_new_tokens=48, tree=parse_tree("auto", 8, "tree"),
                        start=Start.PRIMED)
    assert recycled.token_ids == plain.token_ids
    assert len(recycled.steps) < len(plain.steps)
