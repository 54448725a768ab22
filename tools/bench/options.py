"""The benchmark's options as typed values: its method list and the range checks of its numbers.

A ``tr`` entry's tree and start are parsed by `tr.specs` (the one grammar of run options); this module
only splits the comma list and tells the benchmark's own methods apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tr.matrix import MAX_K
from tr.specs import (
    CHOSEN_PREFIX,
    DYNAMIC_PREFIX,
    MAX_NEW_TOKENS,
    MAX_TREE_NODES,
    TREE_NAMES,
    Start,
    TreeSpec,
    parse_tree,
    parse_variant,
    variant_name,
)
from tr.trees import DEFAULT_TEMPLATE

from .custom import parse_custom


class Kind(str, Enum):
    AR = "ar"  # this project's autoregressive loop
    HF = "hf"  # transformers' greedy `model.generate` on our model (its kernels and LM head)
    STOCK = "stock"  # the same on the model as transformers ships it, in a process of its own
    PLD = "pld"  # transformers' prompt lookup decoding
    TR = "tr"  # Token Recycling, one variant per tree and start
    LLAMA = "llama"  # llama.cpp on the bundled GGUF (tools.bench.llama), an optional extra; llama:N on N threads
    HF_TR = "hf-tr"  # Token Recycling through `model.generate(custom_generate=...)` (tools.bench.custom)


BASELINES = (Kind.AR, Kind.HF, Kind.STOCK)  # speed-up is over the fastest of these that ran, per category
# The default list: no optional extra, and Token Recycling once (through the library)
KIND_NAMES = tuple(kind.value for kind in Kind if kind not in (Kind.LLAMA, Kind.HF_TR))
VARIANT_SEPARATOR = ":"  # tr:TREE:START; what follows the method is `tr.specs.parse_variant`'s grammar
METHODS_HELP = (f"a comma list of {', '.join(KIND_NAMES)} or llama (llama.cpp, optional; llama:N on N threads) or "
                f"{Kind.HF_TR.value} (Token Recycling through model.generate, {Kind.HF_TR.value}:TREE:START as tr); "
                f"tr also as tr:TREE or tr:TREE:START with "
                f"TREE one of {', '.join(TREE_NAMES)}, {DYNAMIC_PREFIX}N or {CHOSEN_PREFIX}N (N from 1 to "
                f"{MAX_TREE_NODES}) or a JSON list of paths, and START one of {', '.join(s.value for s in Start)}")


@dataclass(frozen=True)
class BenchMethod:
    """One benchmarked method; a Token Recycling variant carries its tree and start."""

    kind: Kind
    tree: TreeSpec | None = None  # TR only
    start: Start = Start.HOT  # TR only
    threads: int | None = None  # LLAMA only: its thread count; None: torch's

    @property
    def name(self) -> str:
        """How the method is written in the JSON, the table and the progress bar."""
        if self.kind is Kind.HF_TR:
            return f"hf-{variant_name(self.tree, self.start)}"
        if self.kind is Kind.LLAMA and self.threads is not None:
            return f"{self.kind.value}{VARIANT_SEPARATOR}{self.threads}"
        return variant_name(self.tree, self.start) if self.kind is Kind.TR else self.kind.value


@dataclass(frozen=True)
class Template:
    """``--template`` as given: tree text (a JSON file's contents) and the name a plain ``tr`` gets from it."""

    text: str = DEFAULT_TEMPLATE
    label: str = DEFAULT_TEMPLATE

    def tree(self, k: int) -> TreeSpec:
        return parse_tree(self.text, k, label=self.label)


def parse_method(entry: str, k: int, template: Template, start: Start) -> BenchMethod:
    """One entry of the comma list; a ``tr`` variant's missing tree and start come from `template` and `start`."""
    if entry == Kind.TR:
        return BenchMethod(Kind.TR, template.tree(k), start)
    if entry in KIND_NAMES:
        return BenchMethod(Kind(entry))
    kind, _, variant = entry.partition(VARIANT_SEPARATOR)
    if kind == Kind.TR:
        return BenchMethod(Kind.TR, *parse_variant(entry, k, tree=template.text, start=start))
    if kind == Kind.LLAMA:
        return BenchMethod(Kind.LLAMA, threads=parse_threads(variant) if variant else None)
    if kind == Kind.HF_TR:
        return BenchMethod(Kind.HF_TR, *parse_custom(variant, k))
    raise ValueError(f"unknown method {entry!r}: use {METHODS_HELP}")


MAX_THREADS = 1024


def parse_threads(text: str) -> int:
    """llama:N's thread count."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_THREADS:
        raise ValueError(f"llama:N takes a thread count from 1 to {MAX_THREADS}, got {text!r}")
    return int(text)


def parse_methods(text: str, k: int, template: Template = Template(), start: Start = Start.HOT
                  ) -> list[BenchMethod]:
    """A comma list of methods, in the order given, without repeats (two entries naming the same variant,
    such as ``tr`` and ``tr:TREE:hot``, run once)."""
    methods: dict[str, BenchMethod] = {}
    for entry in (part.strip() for part in text.split(",")):
        if entry:
            method = parse_method(entry, k, template, start)
            methods.setdefault(method.name, method)
    if not methods:
        raise ValueError(f"no methods given: use {METHODS_HELP}")
    return list(methods.values())


MAX_TIME_LIMIT = 86_400.0  # seconds: a day


def check_numbers(max_new_tokens: int, k: int, pld_tokens: int, warmup: int, repeats: int = 1,
                  time_limit: float | None = None) -> None:
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
    if time_limit is not None and not 0 < time_limit <= MAX_TIME_LIMIT:
        raise ValueError(f"--time-limit must be more than 0 and at most {MAX_TIME_LIMIT:.0f} seconds, got {time_limit}")
