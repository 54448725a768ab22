"""What the batch-invariant attention (`tr.device.invariant.attend`) costs on this machine, per layer call,
by pass size and cached context: all kv heads in one product (`together`) against one product per head,
and one-token passes over key counts never seen before (oneDNN compiles a kernel per new shape), with
keys padded to `BUCKET` and without. The figures behind `TOGETHER_ROWS` and `BUCKET`.

    python -m tools.attention_timing                         # the bundled model's heads, bf16 where supported
    python -m tools.attention_timing --dtype float32 --sizes 1 8 32 --contexts 300

Prints one JSON document. Times are medians over interleaved rounds (microseconds per call); both ways
give the same bits (`tests/test_kernels.py`), so only time is compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from tr.passes import chain, pass_mask
from tr.device import invariant
from tr.device.kernels import cpu_flags

HEADS, KV_HEADS, DIM = 9, 3, 64  # the bundled SmolLM2-135M's attention


def _microseconds(call: Callable[[], object], repeats: int) -> float:
    begin = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - begin) / repeats * 1e6


def one_pass(dtype: torch.dtype, n: int, context: int, together: bool) -> Callable[[], torch.Tensor]:
    """A call of `attend` for n chained tokens behind `context` cached ones, all kv heads in one product or
    one product per head."""
    generator = torch.Generator().manual_seed(n)
    query = torch.randn(1, HEADS, n, DIM, generator=generator).to(dtype)
    key, value = (torch.randn(1, KV_HEADS, context + n, DIM, generator=generator).to(dtype) for _ in range(2))
    plan = invariant.plan_for(pass_mask(chain(n), context, dtype, torch.device("cpu")), context + n, n)

    def call() -> torch.Tensor:
        chosen = invariant.TOGETHER_ROWS
        invariant.TOGETHER_ROWS = HEADS * n if together else 0
        try:
            return invariant.attend(query, key, value, plan, DIM**-0.5)
        finally:
            invariant.TOGETHER_ROWS = chosen
    return call


def forms(dtype: torch.dtype, sizes: Sequence[int], contexts: Sequence[int], rounds: int) -> list[dict]:
    rows = []
    for context in contexts:
        for n in sizes:
            calls = {"per_head": one_pass(dtype, n, context, False), "together": one_pass(dtype, n, context, True)}
            times: dict[str, list[float]] = {name: [] for name in calls}
            for call in calls.values():
                _microseconds(call, 5)  # compiles the shapes
            for _ in range(rounds):
                for name, call in calls.items():
                    times[name].append(_microseconds(call, 20))
            rows.append({"context": context, "n": n, **{name: round(statistics.median(t)) for name, t in times.items()},
                         "chosen": "together" if invariant.heads_together(HEADS // KV_HEADS * n) else "per_head"})
    return rows


def new_shapes(dtype: torch.dtype, context: int, steps: int) -> dict:
    """One-token passes over `steps` key counts, one more each (as plain decoding goes), none of them seen
    before in this process: with keys padded to `BUCKET` and without padding."""
    generator = torch.Generator().manual_seed(0)
    key = torch.randn(1, KV_HEADS, context + 3 * steps, DIM, generator=generator).to(dtype)
    query = torch.randn(1, HEADS, 1, DIM, generator=generator).to(dtype)

    def sweep(first: int) -> float:
        begin = time.perf_counter()
        for count in range(first, first + steps):
            invariant.attend(query, key[:, :, :count], key[:, :, :count], invariant.plan_for(None, count, 1),
                             DIM**-0.5)
        return (time.perf_counter() - begin) / steps * 1e6
    bucket = invariant.BUCKET
    padded = sweep(context)
    invariant.BUCKET = 1
    try:
        unpadded = sweep(context + 2 * steps)
    finally:
        invariant.BUCKET = bucket
    return {"first_key_count": context, "steps": steps, "bucket": bucket, "padded_us": round(padded),
            "unpadded_us": round(unpadded)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="default: bfloat16 where oneDNN multiplies it here, else float32")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 24, 32, 48, 81])
    parser.add_argument("--contexts", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or max(args.sizes) > 81 or min(args.contexts) < 0 or args.rounds < 1:
        parser.error("--sizes must lie in 1..81, --contexts be 0 or more, --rounds 1 or more")
    name = args.dtype or ("bfloat16" if invariant.supported(torch.bfloat16) else "float32")
    dtype = getattr(torch, name)
    if not invariant.supported(dtype):
        parser.error(f"--dtype {name}: oneDNN has no {name} product on this CPU")
    with torch.inference_mode():
        report = {"dtype": name, "threads": torch.get_num_threads(),
                  "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
                  "forms": forms(dtype, args.sizes, args.contexts, args.rounds),
                  "new_shapes": new_shapes(dtype, max(args.contexts) + 200, 64)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
