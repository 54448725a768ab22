"""Benchmark CLI: plain decoding, transformers greedy and prompt lookup, and Token Recycling on
Spec-Bench-format prompts.

    python -m tools.bench --per-category 1 --max-new-tokens 32 --methods ar,hf,pld,tr --out results.json

Methods (all greedy, so every correct one emits exactly the `ar` tokens):

- ``ar``: this project's autoregressive loop (`tr.decoding.autoregressive` via `decode_steps`);
- ``hf``: ``model.generate`` greedy, same EOS ids and max_new_tokens, on our model (its kernels and LM head:
  a comparison of decoding loops);
- ``stock``: the same on the model as transformers ships it, in a worker process without this project's
  kernel settings (`tools.bench.stock`): the baseline a user without this project has;
- ``pld``: ``model.generate`` with prompt lookup decoding (``--pld-tokens`` draft tokens);
- ``tr``: Token Recycling (`tr.decoding.token_recycling` via `decode_steps`) with ``--template`` and
  ``--start``; ``tr:TREE`` and ``tr:TREE:START`` name a variant (`tr.specs.parse_variant`), so several
  trees or start modes run side by side, e.g.
  ``--methods ar,hf,pld,tr:paper-80,tr:auto,tr:auto-nolookup,tr:auto:seeded``. Each variant keeps its own matrix.

``--prompts`` takes one or more files, read in turn (``--per-category`` applies within each).
``--dtype auto`` runs bfloat16 where the device has native bf16 (`tr.device.kernels.native_bf16`), else
float32; the JSON's machine block records the dtype, why it was chosen, the native bf16 feature and the
CPU's flags.

Each prompt's first turn is wrapped in the chat template; prompts and methods are interleaved
(prompt by prompt, every method in turn) so slow drift of the machine hits all methods alike.
Every generation is timed by the wall clock (synchronised on CUDA); ``ar`` and ``tr`` also split
that time into forward passes and the rest from their step records. Steps and MAT (mean tokens per
decoding step) are reported only where known: exactly one token per step for ``ar``, from the records
for ``tr``, null for ``hf``, ``stock`` and ``pld`` (transformers does not expose its acceptance counts).

Per category, speed-up is a method's tokens per second (total tokens over total seconds) over the
fastest of ``ar``, ``hf`` and ``stock`` (those that ran) in that category; "overall" pools every prompt
the same way, so it is not the mean of the category figures.

On a shared or noisy machine, ``--repeats N`` times every generation N times, in rounds over all
methods (so drift hits each alike), and keeps the fastest; ``tr`` variants repeat from the same matrix,
so tokens, steps and MAT are those of a single round. Each row keeps every round's seconds.

Warm-up (``--warmup``) runs each method on the first prompt before timing. For ``tr`` with a hot or
seeded start this also fills the adjacency matrix from that prompt, so the first timed prompt starts
with a warm matrix: that is what hot start means in a long-running server, but it flatters the first
prompt's MAT a little. ``--start cold`` clears the matrix before every prompt. ``--start primed`` (or
``tr:TREE:primed``) is hot, with every empty row filled from the model's primed matrix (`tools.priming`):
the matrix a long-running server would have.

The package, one job per module: `options` (the typed method list and number checks), `prompts` (the
questions file), `runs` (timing each method on each prompt), `report` (pooled table, printed report,
JSON), `cli` (the command line).
"""

from .cli import main
from .options import BenchMethod, Kind, parse_methods
from .prompts import DEFAULT_PROMPTS, Question, load_question_files, load_questions
from .report import identical_text, summarize_table, to_json
from .rows import PromptRow, TableRow
from .runs import Run, cut_at_eos, fastest, run_benchmark

__all__ = [
    "DEFAULT_PROMPTS",
    "BenchMethod",
    "Kind",
    "PromptRow",
    "Question",
    "Run",
    "TableRow",
    "cut_at_eos",
    "fastest",
    "identical_text",
    "load_question_files",
    "load_questions",
    "main",
    "parse_methods",
    "run_benchmark",
    "summarize_table",
    "to_json",
]
