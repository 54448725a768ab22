"""Kernel choices for this machine, applied by an explicit call (`install_kernels`, which `load_model`
makes), never on import.

- Batch-invariant products and attention on the CPU (`tr.device.invariant`), in float32 and bf16: every
  token gets the same bits in a one-token pass as inside a verification pass, so greedy Token Recycling
  equals plain decoding by construction; both decoders run them. A Llama layer's q, k, v projections and
  its MLP's gate and up projections each run as one product there (`tr.device.fused`), the same bits.
- A screened LM head (`ScreenedHead`, `Fp16Screen`): greedy decoding reads only each row's argmax, so the
  head screens the vocabulary with a half-precision copy of its weight and recomputes in fp32 only the
  tokens a proven error bound cannot rule out; each row's argmax is the fp32 head's, and each recomputed
  logit is one dot product whatever the row count.
- No cuDNN attention on CUDA: cuDNN builds a new plan for every new key length, i.e. every decoding step.

Measurements behind each choice are in BENCHMARKS.md.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from . import fused, invariant


def read_cpuinfo() -> str:
    """/proc/cpuinfo's text (Linux); empty elsewhere. The one reader, so tests can fake another CPU."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpuinfo(field: str) -> str | None:
    """A field of /proc/cpuinfo (its first processor); None where it has none."""
    for line in read_cpuinfo().splitlines():
        if line.startswith(field):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags on Linux; empty elsewhere."""
    return set((_cpuinfo("flags") or "").split())


def cpu_name() -> str:
    # platform.processor() is empty on many Linux machines; /proc/cpuinfo names the model there.
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


# CPU flags of native bf16 arithmetic, best first: AMX tiles, then AVX-512 BF16 dot products. Without
# either, torch widens bf16 to fp32 in software and bf16 runs slower than fp32.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def native_bf16(device: torch.device) -> str | None:
    """The feature that gives `device` native bf16 arithmetic ("amx_bf16" or "avx512_bf16" on a CPU,
    "cuda" on a GPU that computes in bf16 without emulation), or None."""
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type == "cpu":
        flags = cpu_flags()
        return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)
    return None


class ScreenedHead(invariant.InvariantLinear):
    """The LM head as an `InvariantLinear` that, while `argmax_only` is set (see `tr.passes.argmax_only`),
    screens with half-precision weights (`Fp16Screen`)."""

    def __init__(self, head: torch.nn.Linear):
        super().__init__(head)
        self.argmax_only = False
        self.screen = Fp16Screen(head.weight.detach())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        if self.argmax_only and self.screen.applies(rows):
            return self.screen(rows, self.weight).reshape(*hidden.shape[:-1], -1)
        return super().forward(hidden)


class Fp16Screen:
    """Logits whose every row has the fp32 head's argmax, at the price of a half-precision product.

    Why the argmax survives. For hidden row x and vocabulary row w (fp16 copy w16), the screened logit a
    (w16 . x in fp32 arithmetic) and the fp32 logit f (w . x, any summation order) each lie within
    gamma * |w| |x| (gamma ~ hidden size x 2^-24, the worst-case rounding of a float32 dot product) of
    the exact products w16 . x and w . x, which differ by at most |w - w16| |x|. So |a - f| <= B |x| with
    B = max over the vocabulary of |w - w16| + gamma (|w| + |w16|). The token with the largest f has
    a >= max(a) - 2 B |x|; every token that passes that test gets its fp32 logit, the rest keep a, which
    is below the fp32 logit of the token with the largest a. Hence each row's argmax is the fp32 argmax;
    the other logits are within B |x| of fp32 (good enough for the matrix's top-k and probabilities).
    """

    def __init__(self, weight: torch.Tensor):
        self.packed = None
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            return
        try:  # fbgemm's kernels exist on x86 builds of torch only
            self.packed = torch.ops.quantized.linear_prepack_fp16(weight, None)
        except (RuntimeError, AttributeError):
            return
        half = weight.half().float()
        gamma = (weight.shape[1] + 2) * 2.0**-24  # + 2: covers the 1 / (1 - n u) factor of the bound
        self.bound = float(((weight - half).norm(dim=1) + gamma * (weight.norm(dim=1) + half.norm(dim=1))).max())

    def applies(self, rows: torch.Tensor) -> bool:
        return self.packed is not None and rows.dtype == torch.float32 and rows.device.type == "cpu"

    def __call__(self, rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        logits = torch.ops.quantized.linear_dynamic_fp16(rows, self.packed)
        margin = 2 * self.bound * rows.norm(dim=1, keepdim=True)
        if not torch.isfinite(margin).all():
            return invariant.product(rows, weight)
        row, token = (logits >= logits.amax(1, keepdim=True) - margin).nonzero(as_tuple=True)
        logits[row, token] = (weight[token] * rows[row]).sum(1)
        return logits


def install_kernels(model: torch.nn.Module, fuse: bool = True) -> None:
    """On the CPU, in a dtype oneDNN multiplies (float32, bf16): batch-invariant products (the LM head
    screened, when bias-free and float32) and attention (see `tr.device.invariant`), with a Llama layer's
    projections fused unless `fuse` is False (`tr.device.fused`). On CUDA: no cuDNN attention (process-wide,
    so every decoder in this process runs without it)."""
    parameter = next(model.parameters())
    if parameter.device.type == "cpu" and invariant.supported(parameter.dtype):
        head = model.get_output_embeddings()
        if type(head) is torch.nn.Linear and head.bias is None and head.weight.dtype == torch.float32:
            model.set_output_embeddings(ScreenedHead(head))  # before the others: its weight is packed once
        if fuse:  # before the products: its stacked linears become invariant with the rest
            fused.install_fused(model)
        invariant.install_linears(model)
        invariant.install_attention(model)
    elif parameter.device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)
