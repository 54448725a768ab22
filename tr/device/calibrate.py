"""Measure how much one verification pass costs on the running model and device, by tree size.

`calibrate` times forward passes over 1 to 81 new tokens in a few seconds and caches the curve
(`tr.costs.CostCurve`) per model, device, dtype, thread count and kernels (which, and their code). It is
the prior the `auto` tree starts from; decoding steps then correct it (`tr.costs.LearnedCost`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from . import fused, invariant, kernels, lean, quantized
from ..costs import CostCurve, monotone
from ..decoding import Clock
from ..passes import EagerPasses, PassesFactory, chain
from .model import LoadedModel, cache_dir

# Every size up to 16, where a CPU's trees live: the curve is not smooth there (fbgemm's half-precision
# product works in blocks of six rows), and interpolating between sparser sizes hid its steps.
SIZES = (*range(1, 17), 20, 24, 32, 48, 64, 81)


def _measure(model: torch.nn.Module, sizes: tuple[int, ...], context: int, repeats: int,
             passes: PassesFactory) -> list[float]:
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (context + max(sizes),), generator=generator).to(device)
    run = passes(model, context + max(sizes))
    clock = Clock(device)
    try:
        with torch.inference_mode():
            run(ids[:context], torch.arange(context, device=device), last_only=True)
            timings = {n: [] for n in sizes}
            chains = {n: chain(n) for n in sizes}  # as decoding passes them: trees, a chain being one
            # Interleave sizes so drift of the machine's speed hits all sizes alike; the first round warms up.
            for round_ in range(repeats + 1):
                for n in sizes:
                    begin = clock.now()
                    positions = torch.arange(context, context + n, device=device)
                    run(ids[context : context + n], positions, chains[n], greedy=True)
                    elapsed = clock.now() - begin
                    run.truncate(context)
                    if round_:
                        timings[n].append(elapsed)
    finally:
        run.close()
    return [sorted(t)[len(t) // 2] for t in timings.values()]


@functools.cache
def kernels_version() -> str:
    """A hash of the CPU kernels' source: a curve measured with other kernel code is not this code's."""
    sources = [Path(module.__file__) for module in (invariant, kernels, fused, lean, quantized)]
    return hashlib.sha1(b"".join(path.read_bytes() for path in sources)).hexdigest()[:12]


def _cache_file(key: str) -> Path:
    return cache_dir() / f"calibration-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def calibrate(
    model: torch.nn.Module, name: str = "", sizes: tuple[int, ...] = SIZES, context: int = 256,
    repeats: int = 3, use_cache: bool = True, passes: PassesFactory = EagerPasses,
) -> CostCurve:
    """Measure (or read back) the forward cost curve of `model` on its device, run by `passes`."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    key = (f"{name}|{device}|{dtype}|{torch.get_num_threads()}|{sizes}|{context}|{torch.__version__}|"
           f"{invariant.installed(model)}|{quantized.installed(model)}|{kernels_version()}|{passes.__name__}|"
           "greedy|monotone")
    file = _cache_file(key)
    if use_cache and name and file.is_file():
        return CostCurve(**json.loads(file.read_text()))
    measured = _measure(model, sizes, context, repeats, passes)
    curve = CostCurve(list(sizes), monotone(measured), context, str(device), measured)
    if use_cache and name:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(asdict(curve)))
    return curve


def device_curve(lm: LoadedModel) -> CostCurve:
    """The cost curve of a loaded model's verification passes, as its decoders run them (`lm.passes`)."""
    return calibrate(lm.model, lm.name, passes=lm.passes)
