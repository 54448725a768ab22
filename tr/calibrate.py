"""How much one verification pass costs on this model and device, as a function of tree size.

Token Recycling pays for its drafts in verification: a forward pass over n tree tokens costs more
than over one token, by how much depends on the device (about 1.4x at n=8 and 3.8x at n=81 on a
2-core CPU, nearly flat on a GPU). `calibrate` measures that curve on the running model in a few
seconds and caches it per model, device, dtype, thread count and kernel settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import kernels
from .decoding import Clock, forward, tree_mask
from .kv_cache import PreallocatedCache
from .model import cache_dir

# Every size up to 16, where a CPU's trees live: the curve is not smooth there, and interpolating hid it
# (bundled model, 2-core AVX2 CPU, two runs: 3 nodes 1.08-1.09x, 4 nodes 1.02-1.06x, 7 nodes 1.22-1.24x,
# 8 nodes 1.18-1.19x; fbgemm's half-precision product works in blocks of six rows).
SIZES = (*range(1, 17), 20, 24, 32, 48, 64, 81)


@dataclass
class CostCurve:
    """Seconds of one forward pass over `sizes[i]` new tokens behind a cache of `context` tokens:
    `measured` as timed, `seconds` the closest non-decreasing fit to it (see `monotone`)."""

    sizes: list[int]
    seconds: list[float]
    context: int
    device: str
    measured: list[float] = field(default_factory=list)

    def cost(self, n: int) -> float:
        """Linear interpolation; beyond the last size, extrapolated from the last two points."""
        sizes, seconds = self.sizes, self.seconds
        if n <= sizes[0]:
            return seconds[0]
        for (n0, s0), (n1, s1) in zip(zip(sizes, seconds), zip(sizes[1:], seconds[1:])):
            if n <= n1:
                return s0 + (s1 - s0) * (n - n0) / (n1 - n0)
        (n0, s0), (n1, s1) = (sizes[-2], seconds[-2]), (sizes[-1], seconds[-1])
        return s1 + (s1 - s0) * (n - n1) / (n1 - n0)

    def relative(self, n: int) -> float:
        """Cost of n tokens in units of one token's forward pass."""
        return self.cost(n) / self.seconds[0]


def monotone(values: list[float]) -> list[float]:
    """The non-decreasing sequence closest to `values` in least squares (pool adjacent violators).

    A pass over more tokens does more work, so a dip in a measured curve is timing noise; left in, it
    decides the tree: on a GPU, where the curve is flat within a few percent, a curve that timed 8 tokens
    13% under one kept `auto` to mid-sized trees (an H100 run: MAT 2.31 and 1.79x, where a smooth curve
    gave 2.58 and 2.00x). Pooling averages each dip with the rises around it, so real steps stay (a
    CPU's jump at 7 tokens); a real dip is flattened too (on the 2-core CPU, 2 tokens timed 1% under one
    and 4 under 3, both in two calibrations), the price of not trusting noise.
    """
    blocks: list[list[float]] = []  # [sum, count] of runs pooled to their mean
    for value in values:
        blocks.append([value, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(count)]


def _measure(model: torch.nn.Module, sizes: tuple[int, ...], context: int, repeats: int) -> list[float]:
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    vocab = model.get_output_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (context + max(sizes),), generator=generator).to(device)
    cache = PreallocatedCache(context + max(sizes))
    clock = Clock(device)
    with torch.inference_mode():
        forward(model, cache, ids[:context], torch.arange(context, device=device), last_only=True)
        timings = {n: [] for n in sizes}
        # The masks decoding passes (a chain is a tree too; none for one token, as plain decoding passes
        # none): attention kernels differ with and without one.
        masks = {n: tree_mask(torch.ones(n, n, dtype=torch.bool).tril(), context, dtype, device) if n > 1 else None
                 for n in sizes}
        # Interleave sizes so drift of the machine's speed hits all sizes alike; the first round warms up.
        for round_ in range(repeats + 1):
            for n in sizes:
                begin = clock.now()
                positions = torch.arange(context, context + n, device=device)
                forward(model, cache, ids[context : context + n], positions, masks[n], greedy=True)
                elapsed = clock.now() - begin
                cache.truncate(context)
                if round_:
                    timings[n].append(elapsed)
    return [sorted(t)[len(t) // 2] for t in timings.values()]


def _cache_file(key: str) -> Path:
    return cache_dir() / f"calibration-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def calibrate(
    model: torch.nn.Module, name: str = "", sizes: tuple[int, ...] = SIZES, context: int = 256,
    repeats: int = 3, use_cache: bool = True,
) -> CostCurve:
    """Measure (or read back) the forward cost curve of `model` on its device."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    head = type(model.get_output_embeddings()).__name__
    key = (f"{name}|{device}|{dtype}|{torch.get_num_threads()}|{sizes}|{context}|{torch.__version__}|"
           f"{kernels.settings()}|{head}|greedy|monotone")
    file = _cache_file(key)
    if use_cache and name and file.is_file():
        return CostCurve(**json.loads(file.read_text()))
    measured = _measure(model, sizes, context, repeats)
    curve = CostCurve(list(sizes), monotone(measured), context, str(device), measured)
    if use_cache and name:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(asdict(curve)))
    return curve
