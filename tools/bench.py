"""Benchmark CLI: plain decoding, transformers greedy and prompt lookup, and Token Recycling on
Spec-Bench-format prompts.

    python -m tools.bench --per-category 1 --max-new-tokens 32 --methods ar,hf,pld,tr --out results.json

Methods (all greedy, so every correct one emits exactly the `ar` tokens):

- ``ar``: this project's autoregressive loop (`tr.decoding.autoregressive` via `decode_steps`);
- ``hf``: ``model.generate`` greedy, same EOS ids and max_new_tokens;
- ``pld``: ``model.generate`` with prompt lookup decoding (``--pld-tokens`` draft tokens);
- ``tr``: Token Recycling (`tr.decoding.token_recycling` via `decode_steps`) with ``--template`` and
  ``--start``; ``tr:TREE`` and ``tr:TREE:START`` name a variant, so several trees or start modes run
  side by side, e.g. ``--methods ar,hf,pld,tr:paper-80,tr:auto,tr:auto-nolookup,tr:auto:seeded``.
  Each variant keeps its own matrix.

Each prompt's first turn is wrapped in the chat template; prompts and methods are interleaved
(prompt by prompt, every method in turn) so slow drift of the machine hits all methods alike.
Every generation is timed by the wall clock (synchronised on CUDA); ``ar`` and ``tr`` also split
that time into forward passes and the rest from their step records. Steps and MAT (mean tokens per
decoding step) are reported only where known: 1.0 for ``ar``, from the records for ``tr``, null for
``hf`` and ``pld`` (transformers does not expose its acceptance counts).

Per category, speed-up is a method's tokens/s (total tokens / total seconds) over the faster of
``ar`` and ``hf`` in that category; "overall" pools every prompt the same way, so it is not the mean
of the category figures.

On a shared or noisy machine, ``--repeats N`` times every generation N times, in rounds over all
methods (so drift hits each alike), and keeps the fastest; ``tr`` variants repeat from the same matrix,
so tokens, steps and MAT are those of a single round. Each row keeps every round's seconds.

Warm-up (``--warmup``, default 1) runs each method on the first prompt before timing. For ``tr``
with a hot or seeded start this also fills the adjacency matrix from that prompt, so the first
timed prompt starts with a warm matrix: that is what hot start means in a long-running server, but
it flatters the first prompt's MAT a little. ``--start cold`` clears the matrix before every prompt.
``--start primed`` (or ``tr:TREE:primed``) is hot, with every empty row filled from the model's primed
matrix (`tools.priming`): the matrix a long-running server would have.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from tqdm import tqdm
from transformers import GenerationConfig

from tr.device import kernels
from tr.device.calibrate import calibrate
from tr.decoding import argmax_only
from tr.device.model import BUNDLED, DTYPES, LoadedModel, ModelLoadError, load_model
from tr.generate import (
    DYNAMIC_TREES, FIXED_DYNAMIC, MAX_NEW_TOKENS, START_MODES, check_request, check_tree, decode_steps, make_drafter,
)
from tr.matrix import MAX_K, AdjacencyMatrix
from tr.records import Step, first_divergence, summarize, token_ids
from tr.trees import BUILTIN_TEMPLATES, DEFAULT_TEMPLATE, TreeError

BENCH_METHODS = ("ar", "hf", "pld", "tr")
BASELINES = ("ar", "hf")  # speed-up is measured against the faster of these, per category
# Found through the package, not the cwd, so `python -m tools.bench` works from anywhere.
DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "prompts.jsonl"
OVERALL = "overall"


class BenchError(ValueError):
    """Bad command-line input; `main` prints it as one line and exits with status 2."""


# --- input ----------------------------------------


def load_questions(path: str | Path, per_category: int | None = None) -> list[dict]:
    """Spec-Bench questions from a JSONL file, keeping the first `per_category` of each category
    in file order (all when None). Raises OSError for an unreadable file, ValueError for bad lines."""
    if per_category is not None and per_category < 1:
        raise ValueError(f"--per-category must be at least 1, got {per_category}")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise OSError(f"cannot read prompts file {str(path)!r}: {err.strerror or err}") from None
    questions: list[dict] = []
    taken: dict[str, int] = {}
    seen: set = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        question = parse_question(line, f"{path}:{number}")
        # Outputs are matched to the ar output of the same question_id, so ids must be unique.
        if question["question_id"] in seen:
            raise ValueError(f"{path}:{number}: question_id {question['question_id']!r} appears twice")
        seen.add(question["question_id"])
        category = question["category"]
        if per_category is None or taken.get(category, 0) < per_category:
            taken[category] = taken.get(category, 0) + 1
            questions.append(question)
    if not questions:
        raise ValueError(f"no prompts in {str(path)!r}")
    return questions


def parse_question(line: str, where: str) -> dict:
    """One JSONL line as {question_id, category, prompt}; only the first turn is benchmarked."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object")
    missing = [key for key in ("question_id", "category", "turns") if key not in record]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    turns = record["turns"]
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
        raise ValueError(f"{where}: turns must be a non-empty list of strings")
    return {"question_id": record["question_id"], "category": str(record["category"]), "prompt": turns[0]}


def parse_methods(text: str, template: str = DEFAULT_TEMPLATE, start: str = "hot") -> list[str]:
    """A comma list of methods, in the order given, without repeats. Each ``tr`` becomes its variant
    name ``tr:TREE`` (hot start) or ``tr:TREE:START``, filling in `template` and `start`."""
    methods: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        base, _, variant = name.partition(":")
        if base not in BENCH_METHODS or (variant and base != "tr"):
            raise ValueError(f"unknown method {name!r}: use a comma list of {', '.join(BENCH_METHODS)} "
                             f"(tr also as tr:TREE or tr:TREE:START)")
        if base == "tr":
            tree, _, mode = variant.partition(":")
            tree, mode = tree or template, mode or start
            if mode not in START_MODES:
                raise ValueError(f"unknown start mode {mode!r} in {name!r}: use one of {', '.join(START_MODES)}")
            name = f"tr:{tree}" if mode == "hot" else f"tr:{tree}:{mode}"
        if name not in methods:
            methods.append(name)
    if not methods:
        raise ValueError(f"no methods given: use a comma list of {', '.join(BENCH_METHODS)}")
    return methods


def tr_variant(method: str) -> tuple[str, str] | None:
    """(tree, start) of a ``tr:TREE[:START]`` method name; None for other methods."""
    base, _, variant = method.partition(":")
    if base != "tr":
        return None
    tree, _, mode = variant.partition(":")
    return tree, mode or "hot"


def check_numbers(max_new_tokens: int, k: int, pld_tokens: int, warmup: int, repeats: int = 1) -> None:
    """Range checks done before the model loads; the decoders repeat them, but only after the slow load."""
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"--max-new-tokens must be from 1 to {MAX_NEW_TOKENS}, got {max_new_tokens}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"--k must be from 1 to {MAX_K}, got {k}")
    if pld_tokens < 1:
        raise ValueError(f"--pld-tokens must be at least 1, got {pld_tokens}")
    if warmup < 0:
        raise ValueError(f"--warmup must be 0 or more, got {warmup}")
    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {repeats}")


# --- running ----------------------------------------


def now(device: torch.device) -> float:
    """Wall clock; on CUDA wait for queued kernels first so the time is the work's, not the launch's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def cut_at_eos(ids: Sequence[int], eos_ids: Iterable[int]) -> list[int]:
    """Tokens up to and including the first EOS: how our decoders count a generation's length."""
    eos = set(eos_ids)
    for i, token in enumerate(ids):
        if token in eos:
            return list(ids[: i + 1])
    return list(ids)


def generation_config(lm: LoadedModel, max_new_tokens: int, pld_tokens: int | None) -> GenerationConfig:
    """Plain greedy settings for `model.generate`, built fresh: a checkpoint's own generation config
    may carry sampling or repetition-penalty settings that would make it decode by another rule than
    `ar`."""
    eos = lm.eos_ids
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else (eos[0] if eos else None)
    options = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad)
    if pld_tokens is not None:
        options["prompt_lookup_num_tokens"] = pld_tokens
    return GenerationConfig(**options)


def run_hf(lm: LoadedModel, prompt_ids: list[int], config: GenerationConfig) -> dict:
    """One `model.generate` call: output ids and wall seconds; steps are not known. Greedy, so with the same
    LM head as `ar` (`tr.decoding.argmax_only`): the comparison is of decoding loops, not of heads."""
    ids = torch.tensor([prompt_ids], device=lm.device)
    with torch.inference_mode(), argmax_only(lm.model):
        begin = now(lm.device)
        out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        seconds = now(lm.device) - begin
    tokens = cut_at_eos(out[0, len(prompt_ids):].tolist(), lm.eos_ids)
    return dict(output_ids=tokens, seconds=seconds, steps=None, mat=None, forward_s=None, overhead_s=None)


def tree_figures(steps: list[Step]) -> dict:
    """A tr run's trees: mean draft nodes per decoding step, probe steps, and the cost curve the last step
    was sized by (one-token passes at each calibrated size; None without one)."""
    decoding, curve = steps[1:], steps[-1].cost_curve
    return dict(
        draft_nodes=sum(len(s.tree_tokens) - 1 for s in decoding) / len(decoding) if decoding else None,
        probes=sum(s.probe for s in decoding),
        cost_curve=[curve.relative(n) for n in curve.sizes] if curve else None,
    )


def run_own(lm: LoadedModel, prompt_ids: list[int], method: str, max_new_tokens: int, **options) -> dict:
    """One `decode_steps` run (ar or tr): output ids, wall seconds, and the records' own split."""
    begin = now(lm.device)
    steps = list(decode_steps(lm, prompt_ids, method, max_new_tokens, **options))
    seconds = now(lm.device) - begin
    stats = summarize(steps)
    return dict(
        output_ids=token_ids(steps),
        seconds=seconds,
        steps=stats.steps,
        # No decoding step (EOS or the limit at the prefill token) leaves MAT undefined, not 0.
        mat=stats.mat if stats.steps else None,
        forward_s=stats.forward_s,
        overhead_s=stats.overhead_s,
        **(tree_figures(steps) if method == "tr" else {}),
    )


def make_runners(lm: LoadedModel, methods: Sequence[str], max_new_tokens: int, pld_tokens: int, k: int) -> dict:
    """One callable `(prompt_ids, scratch) -> figures` per method. Each TR variant's matrix and drafter are
    shared by all prompts; a `scratch` run decodes on copies, so a repeat starts from the same state."""
    runners, curve = {}, None
    for method in methods:
        if method == "ar":
            runners[method] = lambda ids, scratch: run_own(lm, ids, "ar", max_new_tokens)
        elif method in ("hf", "pld"):
            config = generation_config(lm, max_new_tokens, pld_tokens if method == "pld" else None)
            runners[method] = lambda ids, scratch, config=config: run_hf(lm, ids, config)
        elif variant := tr_variant(method):
            tree, start = variant
            matrix = AdjacencyMatrix(lm.vocab_size, k)
            curve = curve or calibrate(lm.model, lm.name)  # once: every variant reads the same device curve
            drafter = make_drafter(lm, tree, k, curve)
            # A scratch run works on copies: the matrix and the costs the drafter learned advance once per prompt.
            runners[method] = lambda ids, scratch, matrix=matrix, drafter=drafter, start=start: run_own(
                lm, ids, "tr", max_new_tokens, matrix=copy.deepcopy(matrix) if scratch else matrix,
                tree=copy.deepcopy(drafter) if scratch else drafter, start=start,
            )
        else:
            raise ValueError(f"unknown method {method!r}")
    return runners


def fastest(runs: Sequence[dict]) -> dict:
    """The fastest of repeated runs of one generation, with every run's seconds beside it."""
    if any(run["output_ids"] != runs[0]["output_ids"] for run in runs):
        raise ValueError("a repeated generation gave other tokens: decoding is not deterministic here")
    best = min(runs, key=lambda run: run["seconds"])
    return dict(best, repeat_seconds=[run["seconds"] for run in runs])


def run_benchmark(
    lm: LoadedModel,
    questions: Sequence[dict],
    methods: Sequence[str],
    max_new_tokens: int = 128,
    *,
    pld_tokens: int = 10,
    k: int = 8,
    warmup: int = 1,
    repeats: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Per-prompt figures for every (question, method) pair, compared with `ar` where it ran.
    `methods` as returned by `parse_methods`. With `repeats` > 1 every generation is timed that many
    times, in rounds over all methods, and the fastest time is kept."""
    check_numbers(max_new_tokens, k, pld_tokens, warmup, repeats)
    # Encode and check every prompt first, so a too-long one fails before minutes of timing.
    encoded = [lm.encode(q["prompt"]) for q in questions]
    for ids in encoded:
        check_request(lm, ids, max_new_tokens)
    runners = make_runners(lm, methods, max_new_tokens, pld_tokens, k)
    for method in methods:
        for _ in range(warmup):
            runners[method](encoded[0], False)
    results = []
    total = len(questions) * len(methods) * repeats
    with tqdm(total=total, desc="bench", unit="gen", disable=not progress) as bar:
        for question, ids in zip(questions, encoded):
            runs = {method: [] for method in methods}
            for round_ in range(repeats):
                for method in methods:
                    bar.set_postfix_str(f"{question['category']} #{question['question_id']} {method}")
                    # Only the last round advances the TR matrices: every round starts from the same state.
                    runs[method].append(runners[method](ids, round_ < repeats - 1))
                    bar.update()
            results += [result_row(question, method, fastest(runs[method])) for method in methods]
    return compare_to_ar(results)


def result_row(question: dict, method: str, figures: dict) -> dict:
    tokens = len(figures["output_ids"])
    seconds = figures["seconds"]
    return {
        "question_id": question["question_id"],
        "category": question["category"],
        "method": method,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
        "steps": figures["steps"],
        "mat": figures["mat"],
        "forward_s": figures["forward_s"],
        "overhead_s": figures["overhead_s"],
        "repeat_seconds": figures["repeat_seconds"],
        "draft_nodes": figures.get("draft_nodes"),  # tr: mean draft nodes per decoding step
        "probes": figures.get("probes"),  # tr: steps that verified the root alone to time a one-token pass
        "cost_curve": figures.get("cost_curve"),  # tr: relative costs at the calibrated sizes, after this prompt
        "identical_to_ar": None,
        "first_divergence": None,
        "output_ids": figures["output_ids"],
    }


def compare_to_ar(results: list[dict]) -> list[dict]:
    """Fill identical_to_ar / first_divergence against the `ar` output of the same question
    (left None where `ar` did not run)."""
    reference = {r["question_id"]: r["output_ids"] for r in results if r["method"] == "ar"}
    for row in results:
        if row["question_id"] in reference:
            index = first_divergence(reference[row["question_id"]], row["output_ids"])
            row["identical_to_ar"], row["first_divergence"] = index is None, index
    return results


# --- summary ----------------------------------------


def aggregate(rows: list[dict]) -> dict:
    """Pooled figures of one method over some prompts: totals first, ratios of totals after."""
    tokens = sum(r["tokens"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    known_steps = all(r["steps"] is not None for r in rows)
    steps = sum(r["steps"] for r in rows) if known_steps else None
    # MAT pooled over steps: decoded tokens / decoding steps, each prompt weighted by its steps.
    decoded = sum(r["mat"] * r["steps"] for r in rows if r["mat"] is not None) if known_steps else None
    timed = all(r["forward_s"] is not None for r in rows)
    forward_s = sum(r["forward_s"] for r in rows) if timed else None
    overhead_s = sum(r["overhead_s"] for r in rows) if timed else None
    compared = [r["identical_to_ar"] for r in rows if r["identical_to_ar"] is not None]
    return {
        "prompts": len(rows),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
        "steps": steps,
        "mat": decoded / steps if steps else None,
        # Time-weighted mean of per-prompt overhead/forward: total non-forward over total forward time.
        "overhead_pct": 100.0 * overhead_s / forward_s if timed and forward_s else None,
        "identical": sum(compared) if compared else None,
        "compared": len(compared),
    }


def summarize_table(results: list[dict]) -> list[dict]:
    """One row per (category, method), categories in order of first appearance, then "overall"."""
    categories = list(dict.fromkeys(r["category"] for r in results))
    methods = list(dict.fromkeys(r["method"] for r in results))
    table = []
    for category in categories + [OVERALL]:
        chosen = [r for r in results if category == OVERALL or r["category"] == category]
        rows = {m: {"category": category, "method": m, **aggregate([r for r in chosen if r["method"] == m])}
                for m in methods if any(r["method"] == m for r in chosen)}
        speeds = {m: rows[m]["tokens_per_s"] for m in BASELINES if m in rows and rows[m]["tokens_per_s"]}
        baseline = max(speeds, key=speeds.get) if speeds else None
        for row in rows.values():
            row["baseline"] = baseline
            row["speedup"] = row["tokens_per_s"] / speeds[baseline] if baseline and row["tokens_per_s"] else None
            table.append(row)
    return table


def machine_info(lm: LoadedModel) -> dict:
    """What the numbers were measured on."""
    info = {
        "cpu": kernels.cpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(lm.device),
        "gpu": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else None,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "kernels": kernels.settings(),  # process-wide, so every method ran with them
        "layouts": kernels.layout_plans(lm.model),  # product layout per weight shape and row count
        # The device's verification cost curve (cached per model, device, dtype, threads): what `auto` sizes trees by.
        "forward_cost": asdict(calibrate(lm.model, lm.name)),
    }
    return info


def describe_machine(info: dict) -> str:
    device = f"{info['device']} ({info['gpu']})" if info["gpu"] else info["device"]
    cost = info["forward_cost"]
    curve = ", ".join(f"{n}: {s / cost['seconds'][0]:.2f}x" for n, s in zip(cost["sizes"][1:], cost["seconds"][1:]))
    lines = [f"machine: {info['cpu']}, {info['platform']}; torch {info['torch']}, transformers "
             f"{info['transformers']}; device {device}, dtype {info['dtype']}, {info['threads']} threads; "
             f"kernels {' '.join(f'{k}={v}' for k, v in info['kernels'].items() if v) or 'default'}"]
    if info.get("layouts"):  # files from before layouts were tuned have none
        lines.append("product layouts by weight shape, for 1, 2, ... rows: "
                     + ", ".join(f"{shape} {plan}" for shape, plan in info["layouts"].items()))
    lines.append(f"forward cost of n new tokens behind {cost['context']} cached, relative to n=1 "
                 f"({cost['seconds'][0] * 1000:.1f} ms): {curve}")
    return "\n".join(lines)


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def identical_text(row: dict) -> str:
    if row["identical"] is None:
        return "n/a"  # no ar run to compare with
    return "yes" if row["identical"] == row["compared"] else f"{row['identical']} of {row['compared']}"


def format_table(table: list[dict]) -> str:
    header = ("category", "method", "n", "tokens", "MAT", "tok/s", "speed-up", "identical", "overhead")
    lines = [[row["category"], row["method"], str(row["prompts"]), str(row["tokens"]), _num(row["mat"], ".2f"),
              _num(row["tokens_per_s"], ".1f"), _num(row["speedup"], ".2f", "x"), identical_text(row),
              _num(row["overhead_pct"], ".1f", "%") if tr_variant(row["method"]) else ""]
             for row in table]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    out, previous = [], None
    for cells in [header, *lines]:
        if previous is not None and cells[0] != previous and previous != "category":
            out.append("")  # a blank line between categories
        previous = cells[0]
        out.append("  ".join(c.ljust(w) if i < 2 or i == 7 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    return "\n".join(out)


def describe_learned(results: list[dict], sizes: list[int]) -> list[str]:
    """Each sized tr method's cost curve after its last prompt, as decoding steps corrected it."""
    last = {r["method"]: r for r in results if r["cost_curve"]}
    return [f"{method}: cost after the last prompt, corrected by decoding steps: "
            + ", ".join(f"{n}: {c:.2f}x" for n, c in zip(sizes[1:], row["cost_curve"][1:]))
            for method, row in last.items() if tr_variant(method)[0] in DYNAMIC_TREES]


def report(table: list[dict], machine: dict, results: list[dict]) -> str:
    return "\n".join([
        describe_machine(machine),
        *describe_learned(results, machine["forward_cost"]["sizes"]),
        "speed-up: tokens/s (total tokens / total seconds) over the faster of ar and hf in the category; "
        "identical: outputs equal to ar; overhead (tr): non-forward time as % of forward time",
        "",
        format_table(table),
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


# --- CLI ----------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage and exits; we want one line and status 2
        raise BenchError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="Spec-Bench-format JSONL file")
    parser.add_argument("--per-category", type=int, default=None,
                        help="first N prompts of each category, in file order; all when not given")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per generation at most")
    parser.add_argument("--methods", default=",".join(BENCH_METHODS), help="comma list of " + ", ".join(BENCH_METHODS))
    parser.add_argument("--pld-tokens", type=int, default=10, help="prompt_lookup_num_tokens for pld")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE,
                        help=f"tree of a plain `tr` method: {', '.join([*BUILTIN_TEMPLATES, *DYNAMIC_TREES])}, "
                             f"{FIXED_DYNAMIC}N (best-first with lookup, always N drafts) or a JSON file")
    parser.add_argument("--k", type=int, default=8, help=f"tr candidates per matrix row (1..{MAX_K})")
    parser.add_argument("--start", default="hot", choices=START_MODES,
                        help="tr matrix: hot keeps one matrix across all prompts, cold clears it per prompt, "
                             "seeded keeps it and also seeds it from each prompt, primed keeps it and fills "
                             "its empty rows from the model's primed matrix (tools.priming)")
    parser.add_argument("--model", default=BUNDLED, help="bundled, a local folder or a hub id")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="model weights and compute")
    parser.add_argument("--out", default="results.json", help="JSON file for per-prompt figures")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs per method on the first prompt (for tr this also warms the matrix)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time every generation N times, in rounds over all methods, and keep the fastest "
                             "(tr repeats start from the same matrix)")
    parser.add_argument("--seed", type=int, default=0,
                        help="torch seed (decoding is greedy, so outputs do not depend on it)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        # Everything that can be checked without the model is checked before the slow load.
        methods = parse_methods(args.methods, args.template, args.start)
        questions = load_questions(args.prompts, args.per_category)
        check_numbers(args.max_new_tokens, args.k, args.pld_tokens, args.warmup, args.repeats)
        for tree, _ in filter(None, map(tr_variant, methods)):
            check_tree(tree, args.k)
        out = Path(args.out)
        if not out.parent.is_dir():
            raise OSError(f"cannot write {str(out)!r}: folder {str(out.parent)!r} does not exist")
        torch.manual_seed(args.seed)
        lm = load_model(args.model, args.device, args.dtype)
        results = run_benchmark(
            lm, questions, methods, args.max_new_tokens, pld_tokens=args.pld_tokens, k=args.k, warmup=args.warmup,
            repeats=args.repeats,
        )
        table = summarize_table(results)
        machine = machine_info(lm)
        settings = dict(vars(args), methods=methods, prompts=str(Path(args.prompts).resolve()))
        out.write_text(to_json({"settings": settings, "machine": machine, "table": table, "results": results}))
    except (ValueError, TreeError, ModelLoadError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"tools.bench: error: {message}", file=sys.stderr)
        return 2
    print(report(table, machine, results))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
