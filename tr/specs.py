"""A run's options as typed values, parsed from text in this one place.

The library, the app and the benchmark all describe a Token Recycling run the same way: a `TreeSpec`
(which draft tree), a `Start` (what the matrix holds before the first step), a `Sampling` and the
limits below. Text from a command line, a form or a JSON body goes through `parse_tree`,
`parse_start` or `parse_variant` once; code downstream receives the typed values and never parses again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum

from .trees import (BUILTIN_TEMPLATES, DEFAULT_TEMPLATE, RANK_PRIOR, TreeError, best_first_paths, best_first_template,
                    validate_paths)

MAX_NEW_TOKENS = 1024  # new tokens per request, everywhere (library, app, benchmark)
# Prompt tokens per request where strangers send them (the app, its API, the benchmark's prompt files):
# reading the longest such prompt (the prefill, which a Stop cannot interrupt) stays short on a small CPU.
MAX_PROMPT_TOKENS = 2048
MAX_TREE_NODES = 256  # draft nodes of any tree: one verification pass stays a bounded amount of work
MAX_TREE_JSON_CHARS = 20_000
# A template is a list of paths, each a list of ranks: nested two deep. Deeper text is refused before the
# JSON parser runs, whose recursion would otherwise end in a RecursionError about a thousand levels down.
MAX_TREE_JSON_NESTING = 2
CUSTOM_EXAMPLE = "[[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]]"


class Method(str, Enum):
    AR = "ar"  # plain autoregressive decoding, one token per forward pass
    TR = "tr"  # Token Recycling
    PLD = "pld"  # prompt lookup decoding: n-gram copies from the text, verified by Token Recycling's loop


class Start(str, Enum):
    """What the matrix holds when a run begins."""

    HOT = "hot"  # the matrix as earlier runs left it (the paper's setting)
    COLD = "cold"  # cleared first
    SEEDED = "seeded"  # hot, plus the prompt's own rows written from the prefill
    PRIMED = "primed"  # hot, with every empty row filled from the model's primed matrix (`tools.priming`)


class TreeKind(str, Enum):
    AUTO = "auto"  # best-first with a prompt-lookup branch, sized by the device's cost curve
    AUTO_NO_LOOKUP = "auto-nolookup"  # the same without prompt lookup, to measure what lookup adds
    DYNAMIC = "dynamic"  # best-first with lookup, always `nodes` drafts (no cost curve)
    TEMPLATE = "template"  # a fixed list of rank paths, filled breadth-first (the paper's method)
    CHOSEN = "chosen"  # each step the `nodes` most probable of a template's paths (what `auto` is on a device)


DYNAMIC_PREFIX = "dynamic-"
CHOSEN_PREFIX = "chosen-"
# What a chosen tree picks from: enough paths to go deep along a confident chain or wide under a doubtful
# root (the dynamic trees reach depth 10 too).
CHOSEN_POOL, CHOSEN_DEPTH = 256, 10
TREE_NAMES = (TreeKind.AUTO.value, TreeKind.AUTO_NO_LOOKUP.value, *BUILTIN_TEMPLATES)


@dataclass(frozen=True)
class TreeSpec:
    """Which draft tree a run uses. `paths` are a template's validated rank paths (for k = `k`)."""

    kind: TreeKind
    label: str  # how it is written: auto, dynamic-16, paper-80, custom
    nodes: int = 0  # DYNAMIC and CHOSEN: draft nodes per step
    paths: tuple[tuple[int, ...], ...] = ()  # TEMPLATE and CHOSEN
    k: int = 0  # TEMPLATE and CHOSEN: the k its ranks were checked against

    @property
    def sized_by_cost(self) -> bool:
        return self.kind in (TreeKind.AUTO, TreeKind.AUTO_NO_LOOKUP)


def _template(label: str, paths: object, k: int) -> TreeSpec:
    checked = validate_paths(paths, k)
    if len(checked) > MAX_TREE_NODES:
        raise TreeError(f"the tree has {len(checked)} nodes; at most {MAX_TREE_NODES} are allowed")
    return TreeSpec(TreeKind.TEMPLATE, label, paths=tuple(checked), k=k)


def parse_tree(text: str, k: int, label: str = "custom") -> TreeSpec:
    """`auto`, `auto-nolookup`, `dynamic-N`, `chosen-N`, a built-in template name or a JSON list of rank
    paths (called `label`); raises `TreeError` saying what is allowed."""
    if not isinstance(text, str) or not text.strip():
        raise TreeError(f"the tree is empty: use one of {', '.join(TREE_NAMES)}, dynamic-N, chosen-N or a JSON list "
                        "of paths")
    text = text.strip()
    if text in (TreeKind.AUTO.value, TreeKind.AUTO_NO_LOOKUP.value):
        return TreeSpec(TreeKind(text), text)
    if text.startswith(DYNAMIC_PREFIX):
        return TreeSpec(TreeKind.DYNAMIC, text, nodes=_size(text, DYNAMIC_PREFIX))
    if text.startswith(CHOSEN_PREFIX):
        return chosen_tree(_size(text, CHOSEN_PREFIX), k)
    if text in BUILTIN_TEMPLATES:
        return TreeSpec(TreeKind.TEMPLATE, text, paths=tuple(best_first_template(text, k)), k=k)
    if not text.startswith("["):
        raise TreeError(f"unknown tree {text!r}: use one of {', '.join(TREE_NAMES)}, dynamic-N or chosen-N (N from 1 "
                        f"to {MAX_TREE_NODES}) or a JSON list of paths such as {CUSTOM_EXAMPLE}")
    if len(text) > MAX_TREE_JSON_CHARS:
        raise TreeError(f"the tree JSON is too long ({len(text):,} characters, at most {MAX_TREE_JSON_CHARS:,})")
    if (nesting := json_nesting(text)) > MAX_TREE_JSON_NESTING:
        raise TreeError(f"the tree JSON is nested {nesting} deep; a tree is a list of paths of ranks, nested "
                        f"{MAX_TREE_JSON_NESTING} deep, such as {CUSTOM_EXAMPLE}")
    try:
        paths = json.loads(text)
    except json.JSONDecodeError as err:
        raise TreeError(f"the tree is not valid JSON: {err}") from None
    except ValueError:  # e.g. a number of thousands of digits, which Python refuses to convert
        raise TreeError("the tree JSON holds a number too long to read: ranks are from 0 to k - 1") from None
    return _template(label, paths, k)


def json_nesting(text: str) -> int:
    """How deep brackets nest in `text` (brackets inside JSON strings count too: only ever stricter)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _size(text: str, prefix: str) -> int:
    size = text.removeprefix(prefix)
    # ASCII digits only (str.isdigit() also accepts digits such as "²" that int() refuses), and few of them.
    if not (size.isascii() and size.isdigit() and len(size) <= 4) or not 1 <= int(size) <= MAX_TREE_NODES:
        raise TreeError(f"{text!r}: use {prefix}N with N from 1 to {MAX_TREE_NODES}, e.g. {prefix}16")
    return int(size)


def chosen_tree(nodes: int, k: int) -> TreeSpec:
    """Each step the `nodes` most probable of `CHOSEN_POOL` template paths (`TreeKind.CHOSEN`)."""
    pool = best_first_paths(CHOSEN_POOL, CHOSEN_DEPTH, RANK_PRIOR[:k])
    return TreeSpec(TreeKind.CHOSEN, f"{CHOSEN_PREFIX}{nodes}", nodes=nodes, paths=tuple(pool), k=k)


def check_prompt_tokens(count: int) -> None:
    """Raise ValueError, with the limit and the count, for a prompt of more than MAX_PROMPT_TOKENS tokens."""
    if count > MAX_PROMPT_TOKENS:
        raise ValueError(f"the prompt is too long: {count:,} tokens, at most {MAX_PROMPT_TOKENS:,} are accepted")


def default_tree(k: int) -> TreeSpec:
    """The paper's template (the library's default tree)."""
    return parse_tree(DEFAULT_TEMPLATE, k)


def parse_start(text: str) -> Start:
    try:
        return Start(text)
    except ValueError:
        raise ValueError(f"unknown start mode {text!r}: use one of {', '.join(s.value for s in Start)}") from None


def parse_variant(text: str, k: int, tree: str = DEFAULT_TEMPLATE, start: str = Start.HOT.value
                  ) -> tuple[TreeSpec, Start]:
    """The TREE and START of a benchmark method ``tr``, ``tr:TREE`` or ``tr:TREE:START`` (missing parts
    from `tree` and `start`)."""
    base, _, variant = text.partition(":")
    if base != "tr":
        raise ValueError(f"{text!r} is not a Token Recycling method (tr, tr:TREE or tr:TREE:START)")
    tree_text, _, start_text = variant.partition(":")
    return parse_tree(tree_text or tree, k), parse_start(start_text or start)


def variant_name(tree: TreeSpec, start: Start) -> str:
    """The benchmark's name of a variant: ``tr:TREE`` for a hot start, else ``tr:TREE:START``."""
    return f"tr:{tree.label}" if start is Start.HOT else f"tr:{tree.label}:{start.value}"
