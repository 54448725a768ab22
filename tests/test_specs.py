"""tr.specs: the one parser of tree, start and benchmark-variant options, as tables of accepted and
rejected text."""

from __future__ import annotations

import pytest

from tr.specs import (
    CHOSEN_POOL, MAX_TREE_NODES, Start, TreeKind, parse_start, parse_tree, parse_variant, variant_name,
)
from tr.trees import TreeError, best_first_template


@pytest.mark.parametrize("text, kind, label, nodes", [
    ("auto", TreeKind.AUTO, "auto", 0),
    (" auto-nolookup ", TreeKind.AUTO_NO_LOOKUP, "auto-nolookup", 0),
    ("dynamic-16", TreeKind.DYNAMIC, "dynamic-16", 16),
    (f"dynamic-{MAX_TREE_NODES}", TreeKind.DYNAMIC, f"dynamic-{MAX_TREE_NODES}", MAX_TREE_NODES),
    ("chosen-95", TreeKind.CHOSEN, "chosen-95", 95),
    ("paper-80", TreeKind.TEMPLATE, "paper-80", 0),
    ("[[0], [1], [0, 0]]", TreeKind.TEMPLATE, "custom", 0),
])
def test_accepted_trees(text, kind, label, nodes):
    spec = parse_tree(text, 8)
    assert (spec.kind, spec.label, spec.nodes) == (kind, label, nodes)


def test_templates_carry_their_checked_paths():
    assert parse_tree("small-16", 4).paths == tuple(best_first_template("small-16", 4))
    chosen = parse_tree("chosen-8", 4)  # chosen from a pool of paths over the first k ranks
    assert len(chosen.paths) == CHOSEN_POOL and max(map(max, chosen.paths)) == 3 and chosen.k == 4
    assert parse_tree("[[0], [1], [0, 0]]", 8).paths == ((0,), (1,), (0, 0))
    assert parse_tree("[[0]]", 8, label="tree.json").label == "tree.json"


@pytest.mark.parametrize("text, message", [
    ("", "the tree is empty"),
    ("   ", "the tree is empty"),
    ("no-such-tree", "unknown tree 'no-such-tree': use one of auto, auto-nolookup"),
    ("dynamic-0", "dynamic-N with N from 1 to"),
    (f"dynamic-{MAX_TREE_NODES + 1}", "dynamic-N with N from 1 to"),
    ("dynamic-x", "dynamic-N with N from 1 to"),
    ("chosen-0", "chosen-N with N from 1 to"),
    ("[[0], [0,", "not valid JSON"),
    ("[[9]]", "outside 0..7"),
    ("[[0], [0, 0, 0]]", "no parent"),
    ("[" + "0," * 20_000 + "0]", "too long"),
    (str([[a] for a in range(8)] + [[a, b] for a in range(8) for b in range(8)] * 5), "appears twice"),
    (str([[a] for a in range(8)] + [[a, b] for a in range(8) for b in range(8)]
         + [[a, b, c] for a in range(8) for b in range(8) for c in range(8)]), f"at most {MAX_TREE_NODES}"),
], ids=lambda value: value[:24] if isinstance(value, str) else value)
def test_rejected_trees_say_why(text, message):
    with pytest.raises(TreeError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_tree(text, 8)


@pytest.mark.parametrize("text", ["hot", "cold", "seeded", "primed"])
def test_start_modes(text):
    assert parse_start(text) is Start(text)


def test_unknown_start_mode_lists_the_modes():
    with pytest.raises(ValueError, match="unknown start mode 'warm': use one of hot, cold, seeded, primed"):
        parse_start("warm")


@pytest.mark.parametrize("text, tree, start, name", [
    ("tr", "paper-80", Start.HOT, "tr:paper-80"),
    ("tr:auto", "auto", Start.HOT, "tr:auto"),
    ("tr:auto:primed", "auto", Start.PRIMED, "tr:auto:primed"),
    ("tr::cold", "paper-80", Start.COLD, "tr:paper-80:cold"),
])
def test_benchmark_variants(text, tree, start, name):
    spec, mode = parse_variant(text, 8)
    assert (spec.label, mode) == (tree, start) and variant_name(spec, mode) == name


@pytest.mark.parametrize("text, message", [
    ("ar:auto", "not a Token Recycling method"),
    ("tr:bogus", "unknown tree"),
    ("tr:auto:warm", "unknown start mode"),
])
def test_rejected_variants(text, message):
    with pytest.raises(ValueError, match=message):
        parse_variant(text, 8)
