"""Kernel choices for this machine, applied by explicit calls (`configure`, `install_kernels`; `load_model`
makes both), never on import.

- MKL's code branch, in strict mode (`configure`): MKL picks a conservative path on AMD processors, where
  small-row products (a tree pass) then cost nearly as much per row as separate one-row products; pinning
  `MKL_CBWR` to the widest extension the CPU has flattens that. Strict mode makes every output of a
  float32 matrix product the same bits whatever the number of rows and whichever of the three layouts
  below computes it, so a token's products in a verification pass equal those of its one-token pass
  (`strict_products` says whether it is in force; `tests/test_kernels.py` checks the property).
  Process-wide, so every decoder gets it; a value the user set is left alone.
- Tuned product layouts (`tune`, `CpuLinear`): each float32 weight product can be one of three BLAS
  calls, and the fastest depends on the weight's shape and the row count; tuned once per machine and
  cached, then followed by every decoder alike (a fair baseline).
- A screened LM head (`CpuLmHead`, `Fp16Screen`): greedy decoding reads only each row's argmax, so the
  head screens the vocabulary with a half-precision copy of its weight and recomputes in fp32 only the
  tokens a proven error bound cannot rule out; each row's argmax is the fp32 head's.
- Grouped attention with a mask on the CPU (`TRANSFORMERS_SDPA_FORCE_GQA`): otherwise transformers copies
  every key and value head once per query head for a masked (tree) pass. On CUDA a mask with grouped
  heads takes a slower kernel, so it is set only for CPU models.
- No cuDNN attention on CUDA: cuDNN builds a new plan for every new key length, i.e. every decoding step.
- Batch-invariant attention on the CPU, and bf16 weight products (`tr.device.invariant`): every token
  gets the same bits in a one-token pass as inside a verification pass, so greedy Token Recycling equals
  plain decoding by construction (float32 products are invariant through MKL's strict mode); both
  decoders run them.

Measurements behind each choice are in BENCHMARKS.md.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from . import invariant


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


def best_mkl_branch(flags: set[str]) -> str | None:
    """The widest MKL code branch these flags allow, or None when there is nothing to pin."""
    if "avx512f" in flags:
        return "AVX512"
    if "avx2" in flags:
        return "AVX2"
    return None


GROUPED_ATTENTION = "TRANSFORMERS_SDPA_FORCE_GQA"  # transformers reads it at every attention call


def configure() -> None:
    """Set MKL's code branch, strict (unless already set): MKL reads it at its first matrix product."""
    branch = best_mkl_branch(cpu_flags())
    if branch and "MKL_CBWR" not in os.environ:
        os.environ["MKL_CBWR"] = f"{branch},STRICT"


MKL_CBWR_ALL, MKL_CBWR_STRICT = -1, 0x10000  # mkl_cbwr_get's "every setting" and its strict bit


def strict_products() -> bool:
    """Whether MKL computes this process's float32 products in strict mode (False without MKL). Asking
    starts MKL, which then keeps its mode: call it after `configure`."""
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        get = library.mkl_serv_cbwr_get  # MKL's service layer, exported by torch's x86 builds
    except (OSError, AttributeError):
        return False
    get.argtypes, get.restype = [ctypes.c_int], ctypes.c_int
    return bool(get(MKL_CBWR_ALL) & MKL_CBWR_STRICT)


def settings() -> dict[str, str]:
    """The kernel environment set, for reports and calibration keys."""
    return {name: os.environ.get(name, "") for name in ("MKL_CBWR", GROUPED_ATTENTION)}


def _linear(rows: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.linear(rows, weight)


def _weight_first(rows: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor | None) -> torch.Tensor:
    # Contiguous rows: argmax, top-k and the next layer read a transposed result several times slower.
    return (weight @ rows.t()).t().contiguous()


def _transposed(rows: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor | None) -> torch.Tensor:
    return rows @ weight_t


# Three ways to compute rows @ weight.T, each a different BLAS call: one letter each in reports.
LAYOUTS = {"L": _linear, "W": _weight_first, "T": _transposed}
TUNED_ROWS = 8  # row counts tuned (where a CPU's trees are); more rows take the last one's layout
COPY_BUDGET = 1 << 30  # bytes of transposed weight copies a model may add (the bundled one adds ~0.4 GB)
TUNING_BYTES = 64 << 20  # weights timed per shape: enough to overflow the CPU's caches, as a forward pass does


class CpuLinear(torch.nn.Module):
    """A drop-in for a float32 `nn.Linear` that multiplies in the layout `plan` names for each row count
    (`plan[n - 1]` for n rows, a letter of `LAYOUTS`; its last for more rows). It shares the original
    weight and bias, so a head tied to the input embeddings stays tied; a transposed copy of the weight
    is kept only when the plan uses one."""

    def __init__(self, linear: torch.nn.Linear, plan: str):
        super().__init__()
        if not plan or set(plan) - set(LAYOUTS):
            raise ValueError(f"a layout plan is a string of {', '.join(LAYOUTS)}, got {plan!r}")
        self.weight, self.bias, self.plan = linear.weight, linear.bias, plan
        # A buffer, so moving the model to another device moves the copy too (not saved with the model).
        copy = linear.weight.detach().t().contiguous() if "T" in plan else None
        self.register_buffer("weight_t", copy, persistent=False)

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        return LAYOUTS[self.plan[min(rows.shape[0], len(self.plan)) - 1]](rows, self.weight, self.weight_t)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.product(hidden.reshape(-1, hidden.shape[-1]))
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*hidden.shape[:-1], -1)


class CpuLmHead(CpuLinear):
    """`CpuLinear` for the LM head that, while `argmax_only` is set (see `tr.decoding.argmax_only`), screens with
    half-precision weights."""

    def __init__(self, head: torch.nn.Linear, plan: str = "TW"):
        super().__init__(head, plan)
        self.argmax_only = False
        self.screen = Fp16Screen(head.weight.detach())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        if self.argmax_only and self.screen.applies(rows):
            return self.screen(rows, self.weight).reshape(*hidden.shape[:-1], -1)
        return super().forward(hidden)


def tune(weights: Sequence[torch.Tensor], max_rows: int = TUNED_ROWS, repeats: int = 3, letters: str = "LWT",
         timer: Callable[[], float] = time.perf_counter) -> str:
    """The fastest of the `letters` layouts for each row count 1..max_rows, for products with these
    same-shaped weights.

    Each timing runs over the weights in turn (as many as fill `TUNING_BYTES`), as a forward pass reads
    them, so none is still in the CPU's cache when it is read again; each is the fastest of `repeats`
    rounds, the layouts interleaved so a drifting host slows all alike. A draw within 3% keeps the
    simpler layout (L, then W). `timer` is the time source (seconds): tests pass a fake one.
    """
    count = max(1, min(len(weights), TUNING_BYTES // (weights[0].numel() * weights[0].element_size())))
    weights = weights[:count]
    transposed = [w.t().contiguous() if "T" in letters else None for w in weights]
    rows = torch.randn(max_rows, weights[0].shape[1], dtype=weights[0].dtype)
    best = {n: {letter: float("inf") for letter in letters} for n in range(1, max_rows + 1)}
    with torch.inference_mode():
        for _ in range(repeats):
            for n in best:
                for letter in letters:
                    layout, begin = LAYOUTS[letter], timer()
                    for weight, weight_t in zip(weights, transposed):
                        layout(rows[:n], weight, weight_t)
                    best[n][letter] = min(best[n][letter], timer() - begin)
    plan = ""
    for times in best.values():
        fastest = min(times.values())
        plan += next(letter for letter in letters if times[letter] <= 1.03 * fastest)
    return plan


def _cpu_linears(model: torch.nn.Module) -> dict[tuple[int, int, bool], list[tuple[torch.nn.Module, str]]]:
    """The model's float32 `nn.Linear` modules on the CPU, as (parent, attribute) by (out, in, bias)."""
    groups: dict[tuple[int, int, bool], list[tuple[torch.nn.Module, str]]] = {}
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is torch.nn.Linear and child.weight.device.type == "cpu" \
                    and child.weight.dtype == torch.float32:
                groups.setdefault((*child.weight.shape, child.bias is not None), []).append((parent, name))
    return groups


def plans_file(folder: Path) -> Path:
    """Where tuned plans are kept: one file per CPU, thread count, torch version and kernel settings."""
    key = f"{cpu_name()}|{torch.get_num_threads()}|{torch.__version__}|{settings()}|{TUNED_ROWS}"
    return folder / f"layouts-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def _shape_name(linear: torch.nn.Module) -> str:
    """How plans name the shape of a linear module's weight (and bias): "576x1536", "576x576+bias"."""
    return "x".join(map(str, linear.weight.shape)) + ("+bias" if linear.bias is not None else "")


def layout_plans(model: torch.nn.Module) -> dict[str, str]:
    """The layout plan of each weight shape ("576x1536": "TWLL...", or `invariant.PLAN` for an
    `InvariantLinear`): empty where none is installed."""
    plans = {_shape_name(m): invariant.PLAN for m in model.modules() if isinstance(m, invariant.InvariantLinear)}
    return plans | {_shape_name(m): m.plan for m in model.modules() if isinstance(m, CpuLinear)}


def install_cpu_linears(model: torch.nn.Module, plans_file: Path | None = None) -> None:
    """Swap a CPU float32 model's `nn.Linear` modules for `CpuLinear` (the LM head, when bias-free,
    for `CpuLmHead`), each shape with its tuned plan, read from and saved to `plans_file` when given
    (tuning takes a few seconds). Transposed copies are allowed while they add up to `COPY_BUDGET`."""
    groups = _cpu_linears(model)
    saved = json.loads(plans_file.read_text()) if plans_file and plans_file.is_file() else {}
    plans, copies = {}, 0
    head = model.get_output_embeddings()
    for members in groups.values():
        modules = [getattr(parent, attribute) for parent, attribute in members]
        size = sum(m.weight.numel() * m.weight.element_size() for m in modules)
        letters = "LWT" if copies + size <= COPY_BUDGET else "LW"
        name = _shape_name(modules[0]) + ("" if "T" in letters else " (no copy)")
        plans[name] = saved.get(name) or tune([m.weight.detach() for m in modules], letters=letters)
        copies += size if "T" in plans[name] else 0
        for (parent, attribute), module in zip(members, modules):
            lm_head = module is head and module.bias is None
            setattr(parent, attribute, (CpuLmHead if lm_head else CpuLinear)(module, plans[name]))
    if plans_file and {**saved, **plans} != saved:
        plans_file.parent.mkdir(parents=True, exist_ok=True)
        plans_file.write_text(json.dumps({**saved, **plans}))


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


def install_kernels(model: torch.nn.Module, plans_file: Path | None = None) -> None:
    """On the CPU: tuned product layouts (float32, see `install_cpu_linears`), batch-invariant attention
    and bf16 products (see `tr.device.invariant`) and grouped attention with masks, unless the user set
    it. On CUDA: no cuDNN attention (process-wide, so every decoder runs without it)."""
    parameter = next(model.parameters())
    device = parameter.device.type
    if device == "cpu":
        install_cpu_linears(model, plans_file)
        invariant.install_linears(model)
        invariant.install_attention(model)
        os.environ.setdefault(GROUPED_ATTENTION, "1")
    elif device == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)
