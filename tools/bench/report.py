"""The benchmark's summary: rows pooled per category, the machine they ran on, the printed report and
the JSON document."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import torch
import transformers

from tr.device import invariant, kernels
from tr.device.calibrate import device_curve
from tr.device.model import LoadedModel

from .options import BASELINES, BenchMethod, Kind
from .rows import PromptRow, TableRow

OVERALL = "overall"
EXPLAINED = ("speed-up: tokens/s (total tokens / total seconds) over the fastest of ar, hf and stock in the category; "
             "identical: outputs equal to ar; overhead (tr): non-forward time as % of forward time")


def aggregate(category: str, method: str, rows: Sequence[PromptRow]) -> TableRow:
    """Pooled figures of one method over some prompts: totals first, ratios of totals after."""
    tokens = sum(r.tokens for r in rows)
    seconds = sum(r.seconds for r in rows)
    known_steps = all(r.steps is not None for r in rows)
    steps = sum(r.steps for r in rows) if known_steps else None
    # MAT pooled over steps: decoded tokens / decoding steps, each prompt weighted by its steps.
    decoded = sum(r.mat * r.steps for r in rows if r.mat is not None) if known_steps else None
    timed = all(r.forward_s is not None for r in rows)
    forward_s = sum(r.forward_s for r in rows) if timed else None
    overhead_s = sum(r.overhead_s for r in rows) if timed else None
    compared = [r.identical_to_ar for r in rows if r.identical_to_ar is not None]
    return TableRow(
        category=category,
        method=method,
        prompts=len(rows),
        tokens=tokens,
        seconds=seconds,
        tokens_per_s=tokens / seconds if seconds > 0 else None,
        steps=steps,
        mat=decoded / steps if steps else None,
        # Time-weighted mean of per-prompt overhead/forward: total non-forward over total forward time.
        overhead_pct=100.0 * overhead_s / forward_s if timed and forward_s else None,
        identical=sum(compared) if compared else None,
        compared=len(compared),
    )


def set_speedups(rows: Sequence[TableRow]) -> None:
    """Each row's speed-up over the faster baseline among `rows` (one category's)."""
    by_method = {r.method: r for r in rows}
    speeds = {b.value: by_method[b.value].tokens_per_s for b in BASELINES
              if b.value in by_method and by_method[b.value].tokens_per_s}
    baseline = max(speeds, key=speeds.get) if speeds else None
    for row in rows:
        row.baseline = baseline
        row.speedup = row.tokens_per_s / speeds[baseline] if baseline and row.tokens_per_s else None


def summarize_table(results: Sequence[PromptRow]) -> list[TableRow]:
    """One row per (category, method), categories in order of first appearance, then "overall"."""
    categories = list(dict.fromkeys(r.category for r in results))
    methods = list(dict.fromkeys(r.method for r in results))
    table = []
    for category in categories + [OVERALL]:
        chosen = [r for r in results if category == OVERALL or r.category == category]
        rows = [aggregate(category, m, [r for r in chosen if r.method == m])
                for m in methods if any(r.method == m for r in chosen)]
        set_speedups(rows)
        table += rows
    return table


def machine_info(lm: LoadedModel) -> dict:
    """What the numbers were measured on."""
    return {
        "cpu": kernels.cpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(lm.device),
        "gpu": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else None,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "dtype_note": lm.dtype_note,  # which dtype and why (e.g. `--dtype auto` on a CPU with native bf16)
        "native_bf16": kernels.native_bf16(lm.device),
        "cpu_flags": sorted(kernels.cpu_flags()),  # bf16 and fp32 speeds hang on these (avx512_bf16, amx_bf16)
        "threads": torch.get_num_threads(),
        "invariant_kernels": invariant.installed(lm.model),  # batch-invariant products and attention (tr.device)
        "passes": lm.passes.__name__,  # how our decoders ran their forward passes: GraphedPasses (CUDA graphs) or not
        "resident_steps": lm.resident,  # greedy ar and template tr steps on the device (tr.device.resident)
        "fixed_shapes": lm.resident and lm.fixed,  # those steps' passes in fixed shapes (tr.device.fixed)
        # The device's verification cost curve (cached per model, device, dtype, threads): what `auto` sizes trees by.
        "forward_cost": asdict(device_curve(lm)),
    }


def describe_machine(info: dict) -> str:
    device = f"{info['device']} ({info['gpu']})" if info["gpu"] else info["device"]
    cost = info["forward_cost"]
    curve = ", ".join(f"{n}: {s / cost['seconds'][0]:.2f}x" for n, s in zip(cost["sizes"][1:], cost["seconds"][1:]))
    lines = [(f"machine: {info['cpu']}, {info['platform']}; torch {info['torch']}, transformers "
              f"{info['transformers']}; device {device}, dtype {info.get('dtype_note') or info['dtype']}, "
              f"{info['threads']} threads")]
    if info.get("invariant_kernels"):  # files from before these kernels have none
        lines[0] += ", batch-invariant products and attention"
    if info.get("passes") == "GraphedPasses":
        lines[0] += ", CUDA graphs"
    if info.get("resident_steps"):
        lines[0] += ", greedy steps on the device" + (" in fixed shapes" if info.get("fixed_shapes") else "")
    lines.append(f"forward cost of n new tokens behind {cost['context']} cached, relative to n=1 "
                 f"({cost['seconds'][0] * 1000:.1f} ms): {curve}")
    return "\n".join(lines)


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def identical_text(row: TableRow) -> str:
    if row.identical is None:
        return "n/a"  # no ar run to compare with
    return "yes" if row.identical == row.compared else f"{row.identical} of {row.compared}"


def table_cells(row: TableRow, is_tr: bool) -> list[str]:
    return [row.category, row.method, str(row.prompts), str(row.tokens), _num(row.mat, ".2f"),
            _num(row.tokens_per_s, ".1f"), _num(row.speedup, ".2f", "x"), identical_text(row),
            _num(row.overhead_pct, ".1f", "%") if is_tr else ""]


def format_table(table: Sequence[TableRow], methods: Mapping[str, BenchMethod]) -> str:
    """The table as aligned text, a blank line between categories; `methods` by name."""
    header = ("category", "method", "n", "tokens", "MAT", "tok/s", "speed-up", "identical", "overhead")
    lines = [table_cells(row, methods[row.method].kind is Kind.TR) for row in table]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    out, previous = [], None
    for cells in [header, *lines]:
        if previous is not None and cells[0] != previous and previous != "category":
            out.append("")
        previous = cells[0]
        out.append("  ".join(c.ljust(w) if i < 2 or i == 7 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    return "\n".join(out)


def describe_learned(results: Sequence[PromptRow], sizes: list[int], methods: Mapping[str, BenchMethod]
                     ) -> list[str]:
    """Each cost-sized tr method's cost curve after its last prompt, as decoding steps corrected it."""
    last = {r.method: r for r in results if r.cost_curve}
    return [f"{name}: cost after the last prompt, corrected by decoding steps: "
            + ", ".join(f"{n}: {c:.2f}x" for n, c in zip(sizes[1:], row.cost_curve[1:]))
            for name, row in last.items() if methods[name].kind is Kind.TR and methods[name].tree.sized_by_cost]


def report(table: Sequence[TableRow], machine: dict, results: Sequence[PromptRow],
           methods: Sequence[BenchMethod]) -> str:
    by_name = {method.name: method for method in methods}
    return "\n".join([
        describe_machine(machine),
        *describe_learned(results, machine["forward_cost"]["sizes"], by_name),
        EXPLAINED,
        "",
        format_table(table, by_name),
    ])


def to_json(document: dict) -> str:
    """JSON with one line per top-level setting block and per list item (table row, result), so
    token id lists do not take a line per id and the file still reads and diffs well."""
    blocks = []
    for key, value in document.items():
        if isinstance(value, list):
            items = ",\n".join("    " + json.dumps(item) for item in value)
            blocks.append(f"  {json.dumps(key)}: [\n{items}\n  ]" if value else f"  {json.dumps(key)}: []")
        else:
            blocks.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(blocks) + "\n}\n"
