"""Kernel choices: MKL's code branch, applied when `tr` is imported; a faster LM head and grouped
attention for tree passes, applied when a model is loaded on the CPU; no cuDNN attention on CUDA.

Intel's MKL picks a conservative code path on AMD processors, and its small-row products (a forward
over a few tree tokens) then cost nearly as much per row as separate one-row products. Pinning MKL's
code branch (`MKL_CBWR`) to the widest vector extension the CPU has flattens that curve: measured on a
2-core AMD EPYC with AVX2, an MLP projection over 8 rows went from 310 to 220 us while one row stayed
at about 120 us. The setting is process-wide, so plain decoding and Token Recycling run with the same
kernels. A value the user already set is left alone.

The LM head (vocabulary x hidden, the largest single product of a small model) is also faster on a
CPU in other layouts than `nn.Linear` uses: for one row, a product with a contiguous transposed copy
of the weight; for a few rows, the weight times the transposed rows. On the bundled model that cut a
whole fp32 forward pass by about 20% at every tree size from 1 to 16 tokens (2-core AMD EPYC, AVX2).
`load_model` installs it on the CPU, where both decoders and transformers' `generate` share it.

Greedy decoding reads only each row's argmax from the LM head (and, for the matrix, an approximate
top-k). Within `greedy_logits`, `CpuLmHead` screens the vocabulary with a half-precision copy of the
weight (fbgemm's fp16 product: half the memory traffic, fp32 arithmetic) and recomputes in fp32 only the
tokens that a proven error bound cannot rule out (median 1, at most 6 per row on the bundled model), so
every row's argmax is the fp32 head's argmax. On the bundled model (2-core AMD EPYC, AVX2) the head went
from 6.8 to 3.6 ms for one row and 12.6 to 9.2 ms for eight. Both decoders and the benchmark's greedy
`generate` runs use it; sampling needs every logit exact and runs without it.

A tree pass carries an explicit attention mask, and with a mask transformers' SDPA attention copies
every key and value head once per query head that shares it (`repeat_kv`) over the whole context,
unless told that grouped-query attention is safe with a mask. On the CPU it is (torch's CPU kernel takes
grouped heads and a mask together, with the same result): measured side by side on the bundled model,
an 8-token pass behind 1,024 cached tokens went from 137 to 114 ms (4 tokens: 119 to 105 ms), a
one-token pass unchanged. On CUDA a mask with grouped heads falls back to a slower kernel, so the switch
is set only when a model is loaded on the CPU (process-wide, like MKL's branch, so every method gets it).

On CUDA, torch prefers cuDNN's attention for bf16/fp16 on recent GPUs, and cuDNN builds a new execution
plan for every new key length: a decoding loop meets a new length at every step. Measured on an H200 with
the bundled model in bf16: our one-token loop ran at 19.8 tokens/s with cuDNN attention (1.2 ms of CPU
per attention call) and 60.1 without it (transformers' `generate`: 54.7 and 61.2). `install_kernels`
turns it off when a model is loaded on CUDA; flash attention takes its place.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def cpu_flags() -> set[str]:
    """The CPU's feature flags on Linux; empty elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def best_mkl_branch(flags: set[str]) -> str | None:
    """The widest MKL code branch these flags allow, or None when there is nothing to pin."""
    if "avx512f" in flags:
        return "AVX512"
    if "avx2" in flags:
        return "AVX2"
    return None


GROUPED_ATTENTION = "TRANSFORMERS_SDPA_FORCE_GQA"  # transformers reads it at every attention call


def configure() -> None:
    """Set MKL's code branch (unless already set): MKL reads it at its first matrix product."""
    branch = best_mkl_branch(cpu_flags())
    if branch and "MKL_CBWR" not in os.environ:
        os.environ["MKL_CBWR"] = branch


def settings() -> dict[str, str]:
    """The kernel environment in force, for reports and calibration keys."""
    return {name: os.environ.get(name, "") for name in ("MKL_CBWR", GROUPED_ATTENTION)}


class CpuLmHead(torch.nn.Module):
    """A drop-in for a bias-free `nn.Linear` LM head that picks the faster product layout per row count,
    and, while `argmax_only` is set (see `greedy_logits`), screens with half-precision weights.

    It keeps a transposed copy of the weight (one more vocabulary x hidden matrix in memory) and
    shares the original, so a head tied to the input embeddings stays tied.
    """

    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        self.weight = head.weight
        # A buffer, so moving the model to another device moves the copy too (not saved with the model).
        self.register_buffer("weight_t", head.weight.detach().t().contiguous(), persistent=False)
        self.argmax_only = False
        self.screen = Fp16Screen(head.weight.detach())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        if self.argmax_only and self.screen.applies(rows):
            logits = self.screen(rows, self.weight)
        # Contiguous rows: argmax, top-k and softmax over a transposed result cost several times more.
        elif rows.shape[0] == 1:
            logits = rows @ self.weight_t
        else:
            logits = (self.weight @ rows.t()).t().contiguous()
        return logits.reshape(*hidden.shape[:-1], -1)


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
            return rows @ weight.t()
        row, token = (logits >= logits.amax(1, keepdim=True) - margin).nonzero(as_tuple=True)
        logits[row, token] = (weight[token] * rows[row]).sum(1)
        return logits


@contextmanager
def greedy_logits(model: torch.nn.Module) -> Iterator[None]:
    """Within: a `CpuLmHead` returns logits exact at each row's argmax only (see `Fp16Screen`), for
    greedy decoding. Any other head is left alone."""
    head = model.get_output_embeddings()
    if not isinstance(head, CpuLmHead):
        yield
        return
    before, head.argmax_only = head.argmax_only, True
    try:
        yield
    finally:
        head.argmax_only = before


def install_cpu_lm_head(model: torch.nn.Module) -> bool:
    """Swap a CPU float32 model's bias-free linear LM head for `CpuLmHead`; say whether it did."""
    head = model.get_output_embeddings()
    fits = (type(head) is torch.nn.Linear and head.bias is None and head.weight.device.type == "cpu"
            and head.weight.dtype == torch.float32)
    if fits:
        model.set_output_embeddings(CpuLmHead(head))
    return fits


def install_kernels(model: torch.nn.Module) -> None:
    """On the CPU: the faster LM head (float32) and grouped attention with masks, unless the user set it.
    On CUDA: no cuDNN attention (process-wide, so every decoder runs without it)."""
    device = next(model.parameters()).device.type
    if device == "cpu":
        install_cpu_lm_head(model)
        os.environ.setdefault(GROUPED_ATTENTION, "1")
    elif device == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


configure()
