"""4-bit weights on the CPU (`--dtype int4`, opt-in): each decoder layer's weight products read 4-bit
weights in groups of 32 along the input, a step and a minimum per group, with bf16 activations; the
embedding, the norms and the LM head stay bf16.

Why: a one-token pass of a small model reads every weight once, so its products are bound by the bytes
they read; 4-bit weights are about a quarter of bf16's. The bundled model is a Q4_1 GGUF, whose layers
are stored exactly so (a step and a minimum in fp16 per 32 weights), which is what llama.cpp runs: its
dequantized weights take each group's minimum as `q = 0` and its maximum as `q = 15`, so quantizing
them again by each group's minimum and maximum finds the same 16 levels (up to the bf16 rounding of the
step and minimum, the form torch's kernel takes them in). Another model is simply quantized so.

Why exact: torch's kernel (`_weight_int4pack_mm_for_cpu`) gives a row the same bits whatever the pass's
row count (`tests/test_quantized.py` checks it on the machine that runs it), so Token Recycling's greedy
output equals plain decoding's in int4 as in bf16. It is not bf16's output: the weights differ.
"""

from __future__ import annotations

import functools

import torch

from . import fused, invariant

GROUP = 32  # weights per step and minimum, along the input (Q4_1's block)
LEVELS = 15  # 4 bits: q in 0 .. 15


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`weight` (out, in) as 4-bit levels (out, in) int32 in 0 .. 15 and, per group, the (step, zero) pair
    torch's kernel takes (in / GROUP, out, 2) in bf16, where a weight is `(q - 8) * step + zero`."""
    out, width = weight.shape
    groups = weight.detach().float().view(out, width // GROUP, GROUP)
    low, high = groups.amin(-1), groups.amax(-1)
    step = (high - low) / LEVELS
    safe = torch.where(step > 0, step, torch.ones_like(step))
    levels = torch.round((groups - low[..., None]) / safe[..., None]).clamp_(0, LEVELS).to(torch.int32)
    steps_zeros = torch.stack([step, low + 8 * step], dim=-1).transpose(0, 1)
    return levels.view(out, width), steps_zeros.to(torch.bfloat16).contiguous()


class Int4Linear(torch.nn.Module):
    """A bias-free linear layer with 4-bit weights (`quantize`), for bf16 rows on the CPU."""

    def __init__(self, linear: torch.nn.Module):
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        levels, self.steps_zeros = quantize(linear.weight)
        self.packed = torch._convert_weight_to_int4pack_for_cpu(levels, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, self.in_features)
        out = torch._weight_int4pack_mm_for_cpu(rows, self.packed, GROUP, self.steps_zeros)
        return out.reshape(*hidden.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The weights this layer multiplies by, (out, in), as the kernel forms them and rounded to bf16 (each
        times one): for tests and comparisons."""
        return self(torch.eye(self.in_features, dtype=torch.bfloat16)).T


@functools.cache
def supported() -> bool:
    """Whether torch's 4-bit CPU kernel runs here (x86 and Arm builds have it; others may not)."""
    try:
        Int4Linear(torch.nn.Linear(GROUP, 16, bias=False))(torch.ones(1, GROUP, dtype=torch.bfloat16))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


def installed(model: torch.nn.Module) -> bool:
    """Whether `model` multiplies by 4-bit weights (`install_int4`)."""
    return any(isinstance(module, Int4Linear) for module in model.modules())


def fits(linear: torch.nn.Module) -> bool:
    out, width = linear.weight.shape
    return getattr(linear, "bias", None) is None and width % GROUP == 0 and out % 16 == 0


def install_int4(model: torch.nn.Module) -> int:
    """Replace the weight products of every fused decoder layer (`tr.device.fused`) by `Int4Linear`s, after
    `tr.device.kernels.install_kernels`; returns how many were replaced. The bf16 copies they held are let go."""
    replaced = 0
    for layer in model.modules():
        if isinstance(layer, (fused.FusedAttention, fused.FusedMLP)):
            for name, child in list(layer.named_children()):
                if isinstance(child, invariant.InvariantLinear) and fits(child):
                    setattr(layer, name, Int4Linear(child))
                    replaced += 1
    return replaced
