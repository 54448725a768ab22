"""The benchmark's command line: flags in, typed options checked before the model loads, the run, the
printed report and the JSON file out. Bad input is one line, ``tools.bench: error: ...``, and status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from tr.device.model import BUNDLED, DTYPE_CHOICES, ModelLoadError, load_model
from tr.matrix import MAX_K
from tr.specs import CHOSEN_PREFIX, DYNAMIC_PREFIX, Start, TreeKind, parse_start
from tr.trees import BUILTIN_TEMPLATES, DEFAULT_TEMPLATE, TreeError

from .options import KIND_NAMES, Template, check_numbers, parse_methods
from .prompts import DEFAULT_PROMPTS, load_question_files
from .report import machine_info, report, summarize_table, to_json
from .runs import run_benchmark

DESCRIPTION = ("Benchmark CLI: plain decoding, transformers greedy and prompt lookup, and Token Recycling on\n"
               "Spec-Bench-format prompts.")
SIZED_TREES = (TreeKind.AUTO.value, TreeKind.AUTO_NO_LOOKUP.value)


class BenchError(ValueError):
    """Bad command-line input; `main` prints it as one line and exits with status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage and exits; we want one line and status 2
        raise BenchError(message)


AUTO_ON_OFF = {"auto": None, "on": True, "off": False}  # --resident-steps and --fixed-shapes


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m tools.bench", description=DESCRIPTION,
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--prompts", nargs="+", default=[str(DEFAULT_PROMPTS)],
                        help="Spec-Bench-format JSONL files, read in turn (question ids unique across them)")
    parser.add_argument("--per-category", type=int, default=None,
                        help="first N prompts of each category of each file, in file order; all when not given")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per generation at most")
    parser.add_argument("--methods", default=",".join(KIND_NAMES), help="comma list of " + ", ".join(KIND_NAMES))
    parser.add_argument("--pld-tokens", type=int, default=10, help="prompt_lookup_num_tokens for pld")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE,
                        help=f"tree of a plain `tr` method: {', '.join([*BUILTIN_TEMPLATES, *SIZED_TREES])}, "
                             f"{DYNAMIC_PREFIX}N (best-first with lookup, always N drafts), {CHOSEN_PREFIX}N (the N "
                             "most probable of a 256-path template, each step) or a JSON file")
    parser.add_argument("--k", type=int, default=8, help=f"tr candidates per matrix row (1..{MAX_K})")
    parser.add_argument("--start", default=Start.HOT.value, choices=[s.value for s in Start],
                        help="tr matrix: hot keeps one matrix across all prompts, cold clears it per prompt, "
                             "seeded keeps it and also seeds it from each prompt, primed keeps it and fills "
                             "its empty rows from the model's primed matrix (tools.priming)")
    parser.add_argument("--model", default=BUNDLED, help="bundled, a local folder or a hub id")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPE_CHOICES),
                        help="model weights and compute; auto: bfloat16 where the device has native bf16, else "
                             "float32")
    parser.add_argument("--cuda-graphs", default="on", choices=["on", "off"],
                        help="on a GPU, our decoders replay CUDA graphs of their passes (off: launch each kernel "
                             "from Python); transformers' generate runs as it ships either way")
    parser.add_argument("--resident-steps", default="auto", choices=list(AUTO_ON_OFF),
                        help="greedy ar and tr over a template run each whole step on the device, on CUDA queueing "
                             "the next before reading one back; auto: where passes are CUDA graphs (off: the host "
                             "loops; on: also on a CPU, eagerly over a static cache)")
    parser.add_argument("--fixed-shapes", default="auto", choices=list(AUTO_ON_OFF),
                        help="resident steps run every pass in fixed shapes, so that tr equals ar by construction "
                             "where the CPU's invariant kernels are not installed (tr.device.fixed); auto: there")
    parser.add_argument("--out", default="results.json", help="JSON file for per-prompt figures")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs per method on the first prompt (for tr this also warms the matrix)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time every generation N times, in rounds over all methods, and keep the fastest "
                             "(tr repeats start from the same matrix)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds from the model's load: no prompt but the first starts after them (every method "
                             "finishes the prompt it is on, so all run the same prompts); the JSON holds those timed")
    parser.add_argument("--seed", type=int, default=0,
                        help="torch seed (decoding is greedy, so outputs do not depend on it)")
    return parser


def read_template(value: str) -> Template:
    """``--template``: a JSON file is read here and named by its path; anything else is tree text
    (`tr.specs.parse_tree` says what is allowed)."""
    path = Path(value)
    if path.is_file():
        try:
            return Template(path.read_text(encoding="utf-8"), value)
        except OSError as err:
            raise OSError(f"cannot read --template file {value!r}: {err.strerror or err}") from None
    return Template(value, value)


def output_path(value: str) -> Path:
    out = Path(value)
    if not out.parent.is_dir():
        raise OSError(f"cannot write {str(out)!r}: folder {str(out.parent)!r} does not exist")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        # Everything that can be checked without the model is checked before the slow load.
        check_numbers(args.max_new_tokens, args.k, args.pld_tokens, args.warmup, args.repeats, args.time_limit)
        methods = parse_methods(args.methods, args.k, read_template(args.template), parse_start(args.start))
        questions = load_question_files(args.prompts, args.per_category)
        out = output_path(args.out)
        torch.manual_seed(args.seed)
        lm = load_model(args.model, args.device, args.dtype, cuda_graphs=args.cuda_graphs == "on",
                        resident_steps=AUTO_ON_OFF[args.resident_steps],
                        fixed_shapes=AUTO_ON_OFF[args.fixed_shapes])
        results = run_benchmark(
            lm, questions, methods, args.max_new_tokens, pld_tokens=args.pld_tokens, k=args.k, warmup=args.warmup,
            repeats=args.repeats, time_limit=args.time_limit,
        )
        table = summarize_table(results)
        machine = machine_info(lm)
        settings = dict(vars(args), methods=[m.name for m in methods],
                        prompts=[str(Path(p).resolve()) for p in args.prompts])
        out.write_text(to_json({"settings": settings, "machine": machine, "table": [asdict(r) for r in table],
                                "results": [asdict(r) for r in results]}))
    except (ValueError, TreeError, ModelLoadError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"tools.bench: error: {message}", file=sys.stderr)
        return 2
    print(report(table, machine, results, methods))
    print(f"\nwrote {out}")
    return 0
