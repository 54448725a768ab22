"""Where one decoding step's time goes on this CPU, beside the limits it runs against.

    python -m tools.profile                        # bundled model, bf16 where native, a 6-node tree step
    python -m tools.profile --dtype float32 --tree 8 --context 300 --json /tmp/profile.json
    python -m tools.profile --levers 1 2             # also each lever on and off, interleaved, on 1 and 2 threads
    python -m tools.profile --rows 1 2 4 6 8 16      # also every weight product by row count, three kernels

For a plain step (one token) and a Token Recycling step (a verification pass over a `--tree`-token chain)
behind `--context` cached tokens, through the model's own forward (whose modules the hooks below can see),
it prints:

- the host: CPU flags, threads, and its memory bandwidth measured in the same run (a large sum: reading;
  a large copy: reading and writing), and the step time the weights' bytes would take at that bandwidth;
- time per layer part (norms, q/k/v/o projections, attention proper, MLP products and the rest of the
  MLP, LM head, and what lies between: rotary embedding, masks, residual adds, the cache, Python), from
  forward hooks summed over the 30 layers (the hooks' own cost is measured and reported);
- dispatch against kernel time, from torch.profiler: each operator's self time, the matrix kernel's apart,
  the rest of the step (Python, transformers' glue, the operators' own dispatch) by subtraction;
- the invariant kernels' overhead: each weight product timed as the model calls it against oneDNN's bare
  kernel on a ready input (a one-row pass padded to `invariant.MIN_ROWS` rows, the copies around it), and the invariant
  attention against torch's fused attention on the same shapes.

- the same steps as the decoders run them (`LoadedModel.passes`: the lean forward, `tr.device.lean`);
- with `--rows`, a step's weight products at each row count by three kernels on the same weights: the
  model's own (oneDNN's, or 4-bit with `--dtype int4`), torch's 4-bit and its 8-bit weight-only kernels
  (bf16 rows), and whether each kept every row's bits at every row count.

All figures are medians over `--steps` interleaved repeats (microseconds or milliseconds per step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM

from tr.device import invariant, quantized
from tr.device.kernels import cpu_flags, cpu_name, install_kernels
from tr.device.model import BUNDLED, LoadedModel, load_model
from tr.passes import EagerPasses, PassesFactory, chain, pass_mask

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the flags that decide which kernels run
PROJECTIONS = ("qkv", "q_proj", "k_proj", "v_proj", "o_proj")  # qkv, gate_up: fused (tr.device.fused)
MLP_PRODUCTS = ("gate_up", "gate_proj", "up_proj", "down_proj")
NORMS = ("input_layernorm", "post_attention_layernorm")
MATRIX_KERNEL = "mkldnn::_linear_pointwise"  # oneDNN's product: every weight product and attention's


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def bandwidth(megabytes: int = 512, repeats: int = 5) -> dict[str, float]:
    """The host's memory bandwidth in GB/s: a sum over a buffer far larger than the caches (read), and a
    copy of it (read plus write, counted both ways)."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    size = source.numel() * 4
    read = median_seconds(lambda: source.sum(), repeats)
    copy = median_seconds(lambda: target.copy_(source), repeats)
    return {"read_gb_s": size / read / 1e9, "copy_gb_s": 2 * size / copy / 1e9}


class Step:
    """One kind of step, repeatable: `n` new tokens (a chain; one: a plain decoding step) behind `context`
    cached tokens of random ids, the cache cut back after each call; by the model's own forward unless
    `passes` says otherwise, with products padded to `min_rows` rows (`invariant.MIN_ROWS`) unless None."""

    def __init__(self, lm: LoadedModel, context: int, n: int, passes: PassesFactory = EagerPasses,
                 min_rows: int | None = None):
        self.n, self.context, self.min_rows = n, context, min_rows
        ids = torch.randint(0, lm.vocab_size, (context + n,), generator=torch.Generator().manual_seed(0))
        self.ids, self.positions = ids[context:], torch.arange(context, context + n)
        self.ancestors = chain(n) if n > 1 else None
        self.passes = passes(lm.model, context + n)
        with torch.inference_mode():
            self.passes(ids[:context], torch.arange(context), last_only=True)

    def __call__(self) -> torch.Tensor:
        before = invariant.MIN_ROWS
        invariant.MIN_ROWS = self.min_rows or before
        try:
            with torch.inference_mode():
                logits = self.passes(self.ids, self.positions, self.ancestors, greedy=True)
        finally:
            invariant.MIN_ROWS = before
        self.passes.truncate(self.context)
        return logits


@contextmanager
def part_timer(model: torch.nn.Module) -> Iterator[dict[str, float]]:
    """Seconds spent inside each named module kind (summed over layers), collected by forward hooks."""
    totals: dict[str, float] = defaultdict(float)
    started: dict[int, float] = {}
    handles = []
    for name, module in model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if kind in (*PROJECTIONS, *MLP_PRODUCTS, *NORMS, "self_attn", "mlp", "lm_head", "embed_tokens", "norm"):
            def before(module, args, key=id(module)):
                started[key] = time.perf_counter()

            def after(module, args, output, key=id(module), kind=kind):
                totals[kind] += time.perf_counter() - started[key]
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield totals
    finally:
        for handle in handles:
            handle.remove()


def parts(step: Step, model: torch.nn.Module, repeats: int) -> dict[str, float]:
    """Milliseconds per step in each layer part (medians over `repeats`), exclusive of the parts inside it."""
    runs: list[dict[str, float]] = []
    walls = []
    for _ in range(repeats):
        with part_timer(model) as totals:
            begin = time.perf_counter()
            step()
            walls.append(time.perf_counter() - begin)
        runs.append(dict(totals))
    med = {kind: statistics.median(run.get(kind, 0.0) for run in runs) * 1e3 for kind in runs[0]}
    out = {kind: med[kind] for kind in (*NORMS, "norm", *PROJECTIONS) if kind in med}
    out["attention (rope, cache, attend)"] = med["self_attn"] - sum(med.get(k, 0.0) for k in PROJECTIONS)
    out.update({kind: med[kind] for kind in MLP_PRODUCTS if kind in med})
    out["mlp rest (silu, mul)"] = med["mlp"] - sum(med.get(k, 0.0) for k in MLP_PRODUCTS)
    out["lm_head"], out["embed_tokens"] = med["lm_head"], med["embed_tokens"]
    out["between (residuals, masks, glue)"] = statistics.median(walls) * 1e3 - sum(out.values())
    out["step with hooks"] = statistics.median(walls) * 1e3
    return out


def dispatch(step: Step, repeats: int) -> dict[str, object]:
    """torch.profiler's operator self times per step: the matrix kernel, the other operators, and what is
    left of the wall time outside any operator (Python and transformers' glue)."""
    step()
    begin = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    wall = (time.perf_counter() - begin) / repeats * 1e3
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    per_step = {e.key: (e.self_cpu_time_total / repeats / 1e3, e.count // repeats) for e in events}
    kernel = per_step.get(MATRIX_KERNEL, (0.0, 0))
    others = sum(ms for key, (ms, _) in per_step.items() if key != MATRIX_KERNEL)
    top = sorted(per_step.items(), key=lambda item: -item[1][0])[:12]
    return {"wall_ms (profiled)": wall, "matrix kernel ms": kernel[0], "matrix kernel calls": kernel[1],
            "other operators ms": others, "operator calls": sum(count for _, count in per_step.values()),
            "outside operators ms (Python, glue)": wall - kernel[0] - others,
            "top operators (self ms, calls)": {key: [round(ms, 3), count] for key, (ms, count) in top}}


def products(model: torch.nn.Module, rows: int, repeats: int) -> dict[str, float]:
    """Milliseconds per step of every weight product, each called once per round as in a step (so that the
    weights stream from memory, not from a cache): as the model calls it, and as the bare kernel on an input
    already padded and contiguous (oneDNN's; a 4-bit layer is its kernel already); and the weights' bytes."""
    linears, widths = weight_products(model)
    dtype = next(model.parameters()).dtype
    inputs = [torch.randn(1, rows, width).to(dtype) for width in widths]
    # What the bare kernel takes: oneDNN's rows padded (`invariant.product`); a 4-bit layer's as they are.
    ready = [torch.randn(rows if isinstance(linear, quantized.Int4Linear) else max(rows, invariant.MIN_ROWS),
                         width).to(dtype) for linear, width in zip(linears, widths)]
    bare = torch.ops.mkldnn._linear_pointwise

    def as_called() -> None:
        for linear, x in zip(linears, inputs):
            linear(x)

    def kernels_only() -> None:
        for linear, x in zip(linears, ready):
            if isinstance(linear, quantized.Int4Linear):
                linear(x)
            else:
                bare(x, linear.packed, None, "none", [], "")
    with torch.inference_mode():
        called, kernel = median_seconds(as_called, repeats), median_seconds(kernels_only, repeats)
    weights = sum(_bytes(m) for m in linears)
    return {"as called ms": called * 1e3, "bare kernel ms": kernel * 1e3, "calls": len(linears),
            "weight MB": weights / 1e6}


def weight_products(model: torch.nn.Module) -> tuple[list[torch.nn.Module], list[int]]:
    """Every weight product of a step (invariant or 4-bit), in the model's order, and each one's input width."""
    linears = [m for m in model.modules() if isinstance(m, (invariant.InvariantLinear, quantized.Int4Linear))]
    return linears, [m.in_features if isinstance(m, quantized.Int4Linear) else m.weight.shape[1] for m in linears]


def _bytes(linear: torch.nn.Module) -> int:
    """The bytes a product reads of its weights (4-bit levels and their steps and zeros, or the weight)."""
    parts = (linear.packed, linear.steps_zeros) if isinstance(linear, quantized.Int4Linear) else (linear.weight,)
    return sum(part.numel() * part.element_size() for part in parts)


def _int8(linear: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch's 8-bit weight-only product on `linear`'s weight, one scale per output (bf16 rows)."""
    weight = linear.weight.detach().float()
    scale = weight.abs().amax(1).clamp_min(1e-12) / 127
    levels = torch.round(weight / scale[:, None]).to(torch.int8)
    scale = scale.bfloat16()
    return lambda rows: torch._weight_int8pack_mm(rows, levels, scale)


def products_by_rows(model: torch.nn.Module, rows: list[int], repeats: int) -> dict[str, dict]:
    """Milliseconds per step of every weight product (each called once per round, the weights streaming from
    memory) at each row count, by kernel: the model's own, and (where its weights are at hand) torch's 4-bit
    and 8-bit weight-only kernels on the same weights, bf16 rows; and whether each gave the first product's
    rows the same bits at every row count as alone."""
    own, widths = weight_products(model)
    kernels = {"model's own": (own, next(model.parameters()).dtype)}
    if quantized.supported() and all(isinstance(m, invariant.InvariantLinear) and quantized.fits(m) for m in own):
        kernels["int4 (bf16 rows)"] = ([quantized.Int4Linear(m) for m in own], torch.bfloat16)
        kernels["int8 (bf16 rows)"] = ([_int8(m) for m in own], torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    result = {}
    for name, (calls, dtype) in kernels.items():
        inputs = {count: [torch.randn(count, width, generator=generator).to(dtype) for width in widths]
                  for count in rows}
        with torch.inference_mode():
            ms = {count: median_seconds(lambda: [call(x) for call, x in zip(calls, inputs[count])], repeats) * 1e3
                  for count in rows}
            first = inputs[max(rows)][0]
            alone = torch.cat([calls[0](first[i:i + 1]) for i in range(len(first))])
            same = all(torch.equal(calls[0](first[:count]), alone[:count]) for count in rows)
        result[name] = {"ms by rows": ms, "calls": len(calls), "rows keep their bits": same}
    return result


def attention(model: torch.nn.Module, context: int, n: int, repeats: int) -> dict[str, float]:
    """Milliseconds per step (all layers) of the invariant attention and of torch's fused attention on the
    same shapes (not batch-invariant: the reference for its cost)."""
    config, dtype = model.config, next(model.parameters()).dtype
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    dim = config.hidden_size // heads
    generator = torch.Generator().manual_seed(n)
    query = torch.randn(1, heads, n, dim, generator=generator).to(dtype)
    key, value = (torch.randn(1, kv, context + n, dim, generator=generator).to(dtype) for _ in range(2))
    plan = invariant.plan_for(None if n == 1 else tree_mask_for(n, context, dtype), context + n, n)
    causal = torch.ones(n, context + n, dtype=torch.bool).tril(context)
    fused = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
        query, key, value, attn_mask=causal, enable_gqa=True)
    ours = lambda: invariant.attend(query, key, value, plan, dim**-0.5)  # noqa: E731
    layers = config.num_hidden_layers
    with torch.inference_mode():
        return {"invariant ms": median_seconds(ours, repeats) * layers * 1e3,
                "torch fused ms": median_seconds(fused, repeats) * layers * 1e3}


def tree_mask_for(n: int, context: int, dtype: torch.dtype) -> torch.Tensor:
    return pass_mask(chain(n), context, dtype, torch.device("cpu"))


def hook_cost(repeats: int = 2000) -> float:
    """Microseconds one pre and post hook pair adds to a module call (an empty module's call with and
    without them)."""
    module = torch.nn.Identity()
    x = torch.zeros(1)
    bare = median_seconds(lambda: [module(x) for _ in range(100)], repeats // 100)
    with part_timer(torch.nn.ModuleDict({"norm": module})):
        hooked = median_seconds(lambda: [module(x) for _ in range(100)], repeats // 100)
    return (hooked - bare) / 100 * 1e6


def levers(lm: LoadedModel, context: int, n: int, threads: list[int], repeats: int) -> dict[str, dict[str, float]]:
    """Each lever on and off, interleaved step by step so that the host's drift hits all alike: the lean
    forward (`tr.device.lean`) against the model's own, one-token products padded to 4 rows against 2
    (`invariant.MIN_ROWS`), the fused projections (`tr.device.fused`) against separate ones, and each thread
    count. Milliseconds per step, the minimum and the median over `repeats` rounds."""
    separate = AutoModelForCausalLM.from_pretrained(lm.source, dtype=lm.dtype).eval()
    install_kernels(separate, fuse=False)
    unfused = LoadedModel(separate, lm.tokenizer, lm.name, lm.device, lm.dtype, lm.source)
    forms: dict[str, Callable[[int], Step]] = {
        "lean": lambda size: Step(lm, context, size, lm.passes),
        "lean, rows padded to 2": lambda size: Step(lm, context, size, lm.passes, min_rows=2),
        "model's forward, fused": lambda size: Step(lm, context, size),
        "model's forward, separate": lambda size: Step(unfused, context, size)}
    steps = {(form, size): make(size) for form, make in forms.items() for size in (1, n)}
    times: dict[str, list[float]] = defaultdict(list)
    before = torch.get_num_threads()
    try:
        for round_ in range(repeats + 1):  # the first round warms up each shape and thread count
            for count in threads:
                torch.set_num_threads(count)
                for (form, size), step in steps.items():
                    begin = time.perf_counter()
                    step()
                    if round_:
                        times[f"{size} token(s), {form}, {count} thread(s)"].append(time.perf_counter() - begin)
    finally:
        torch.set_num_threads(before)
    return {key: {"min ms": min(t) * 1e3, "median ms": statistics.median(t) * 1e3} for key, t in times.items()}


def profile_step(lm: LoadedModel, context: int, n: int, repeats: int) -> dict[str, object]:
    step, decoders = Step(lm, context, n), Step(lm, context, n, lm.passes)
    step(), decoders()  # oneDNN compiles its kernels for these shapes on first use
    wall = median_seconds(step, repeats) * 1e3
    weights = products(lm.model, n, repeats)
    return {"tokens": n, "context": context, "step ms": wall,
            "step ms as decoders run it": median_seconds(decoders, repeats) * 1e3,
            "operator calls as decoders run it": dispatch(decoders, 3)["operator calls"],
            "parts ms": parts(step, lm.model, repeats),
            "dispatch": dispatch(step, max(repeats // 2, 3)), "products": weights,
            "attention": attention(lm.model, context, n, repeats)}


def report(result: dict) -> str:
    host = result["host"]
    lines = [f"host: {host['cpu']}, flags {' '.join(host['flags'])}, {host['threads']} threads; bandwidth "
             f"{host['read_gb_s']:.1f} GB/s read, {host['copy_gb_s']:.1f} GB/s copy; dtype {host['dtype']}; "
             f"hooks cost {host['hook_us']:.1f} us per module call"]
    for step in result["steps"]:
        weights = step["products"]
        floor = weights["weight MB"] / 1e3 / host["read_gb_s"] * 1e3
        lines += ["", f"{'plain' if step['tokens'] == 1 else 'tree'} step, {step['tokens']} token(s) behind "
                  f"{step['context']}: {step['step ms']:.2f} ms by the model's forward, "
                  f"{step['step ms as decoders run it']:.2f} ms as the decoders run it "
                  f"({step['operator calls as decoders run it']} operator calls); weights "
                  f"{weights['weight MB']:.0f} MB, {floor:.2f} ms at the read bandwidth"]
        lines += [f"  {name:34s} {ms:8.2f} ms" for name, ms in step["parts ms"].items()]
        lines += [f"  products: {weights['as called ms']:.2f} ms as called, {weights['bare kernel ms']:.2f} ms bare "
                  f"kernel (overhead {weights['as called ms'] - weights['bare kernel ms']:.2f} ms)",
                  f"  attention: {step['attention']['invariant ms']:.2f} ms invariant, "
                  f"{step['attention']['torch fused ms']:.2f} ms torch fused (not invariant)"]
        lines += [f"  {name}: {value}" for name, value in step["dispatch"].items()
                  if not isinstance(value, dict)]
        lines += [f"    {name:40s} {ms:8.3f} ms {calls:5d} calls"
                  for name, (ms, calls) in step["dispatch"]["top operators (self ms, calls)"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=BUNDLED)
    parser.add_argument("--dtype", default="auto", help="auto (bf16 where native), float32 or bfloat16")
    parser.add_argument("--context", type=int, default=256, help="cached tokens before the step")
    parser.add_argument("--tree", type=int, default=6, help="tokens of the Token Recycling step's pass")
    parser.add_argument("--steps", type=int, default=20, help="repeats per figure (medians)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--levers", type=int, nargs="*", default=None, metavar="THREADS",
                        help="also time each lever on and off, interleaved: the lean forward against the model's, "
                             "rows padded to 4 against 2, fused projections against separate, on each of these "
                             "thread counts (default 1 and torch's)")
    parser.add_argument("--rows", type=int, nargs="+", default=None, metavar="ROWS",
                        help="also time every weight product at these row counts, by the model's kernel and by "
                             "torch's 4-bit and 8-bit weight-only kernels, and check each keeps a row's bits")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, "cpu", args.dtype)
    host = {"cpu": cpu_name(), "flags": sorted(set(FLAGS) & cpu_flags()), "threads": torch.get_num_threads(),
            "dtype": str(lm.dtype).removeprefix("torch."), "hook_us": hook_cost(), **bandwidth()}
    result = {"host": host, "steps": [profile_step(lm, args.context, n, args.steps) for n in (1, args.tree)]}
    print(report(result))
    if args.levers is not None:
        threads = args.levers or sorted({1, torch.get_num_threads()})
        result["levers"] = levers(lm, args.context, args.tree, threads, args.steps)
        print("\nlevers, interleaved (min / median ms per step):")
        print("\n".join(f"  {key:40s} {t['min ms']:7.2f} / {t['median ms']:7.2f}"
                        for key, t in result["levers"].items()))
    if args.rows:
        result["products by rows"] = products_by_rows(lm.model, args.rows, args.steps)
        print("\nevery weight product of a step, by rows (ms; rows keep their bits at every count):")
        for name, figures in result["products by rows"].items():
            times = "  ".join(f"{count}: {ms:6.2f}" for count, ms in figures["ms by rows"].items())
            print(f"  {name:18s} {times}  ({figures['calls']} calls; {figures['rows keep their bits']})")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=1)


if __name__ == "__main__":
    main()
