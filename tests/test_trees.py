"""Templates, their validation, breadth-first filling, and tree attention against per-path references."""

from __future__ import annotations

import pytest
import torch

from tiny_models import ARCHITECTURES, tiny_model
from tr.passes import forward
from tr.kv_cache import PreallocatedCache
from tr.trees import BUILTIN_TEMPLATES, DraftTree, TreeError, best_first_template, validate_paths


def test_builtin_templates_are_valid_and_sized():
    for name, (budget, max_depth) in BUILTIN_TEMPLATES.items():
        paths = best_first_template(name, 8)
        assert validate_paths(paths, 8) == paths
        assert len(paths) == budget and max(map(len, paths)) <= max_depth
    paper = DraftTree.from_paths(best_first_template("paper-80", 8))
    assert (paper.size, paper.depth) == (81, 6)
    assert all(max(p) < 3 for p in best_first_template("paper-80", 3))


@pytest.mark.parametrize(
    "paths, message",
    [
        ([], "non-empty"),
        ([[0], [0, 0, 0]], "no parent"),
        ([[0], [0, 0], [1]], "sorted by depth"),
        ([[0], [8]], "outside 0..7"),
        ([[0], [0]], "twice"),
        ([[0], [-1]], "outside"),
        ([[0], "a"], "non-empty list"),
        ([[0.5]], "only integers"),
        ({"a": 1}, "non-empty list"),
    ],
)
def test_broken_templates_are_rejected_with_a_reason(paths, message):
    with pytest.raises(TreeError, match=message):
        validate_paths(paths, 8)


def test_fill_matches_a_per_node_reference():
    paths = best_first_template("paper-80", 8)
    tree = DraftTree.from_paths(paths)
    matrix = torch.randint(0, 1000, (1000, 8))
    tokens = tree.fill(torch.tensor(7), matrix).tolist()
    for i, path in enumerate(paths, start=1):
        token = 7
        for rank in path:
            token = int(matrix[token, rank])
        assert tokens[i] == token


def tree_logits(model, prompt, tree, tokens):
    """One tree pass over a prefilled cache, as the decoder does it."""
    cache = PreallocatedCache(len(prompt) + tree.size)
    ids = torch.tensor(prompt)
    forward(model, cache, ids, torch.arange(len(prompt)))
    start = cache.length
    bias = torch.zeros(tree.size, tree.size, dtype=torch.float64).masked_fill(~tree.ancestors, torch.finfo(torch.float64).min)
    mask = torch.cat([bias.new_zeros(tree.size, start), bias], dim=1)[None, None]
    logits = forward(model, cache, tokens, tree.depths + start, mask)
    return cache, start, logits


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tree_pass_equals_running_each_path_alone(arch):
    model = tiny_model(arch, 64, seed=3)
    prompt = [5, 9, 2, 33, 17]
    tree = DraftTree.from_paths(best_first_template("medium-32", 8))
    tokens = torch.randint(0, 64, (tree.size,), generator=torch.Generator().manual_seed(0))
    _, _, logits = tree_logits(model, prompt, tree, tokens)
    with torch.no_grad():
        for node in range(tree.size):
            path = tree.ancestors[node].nonzero().flatten()
            reference = model(torch.tensor([prompt + tokens[path].tolist()])).logits[0, -1]
            torch.testing.assert_close(logits[node], reference, rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_keeping_a_path_leaves_the_cache_of_that_sequence(arch):
    model = tiny_model(arch, 64, seed=4)
    prompt = [1, 2, 3, 4]
    tree = DraftTree.from_paths(best_first_template("small-16", 8))
    tokens = torch.randint(0, 64, (tree.size,), generator=torch.Generator().manual_seed(1))
    deepest = int(tree.depths.argmax())
    path = tree.ancestors[deepest].nonzero().flatten().tolist()
    cache, start, _ = tree_logits(model, prompt, tree, tokens)
    buffers = [layer.keys.data_ptr() for layer in cache.layers]
    cache.keep(start, path)
    assert cache.length == len(prompt) + len(path)
    assert [layer.keys.data_ptr() for layer in cache.layers] == buffers  # written in place, never reallocated
    sequence = prompt + tokens[path].tolist()
    with torch.no_grad():
        reference = model(torch.tensor([sequence]), use_cache=True).past_key_values
    for layer, ref in zip(cache.layers, reference.layers):
        torch.testing.assert_close(layer.keys[:, :, : len(sequence)], ref.keys, rtol=0, atol=1e-10)
        torch.testing.assert_close(layer.values[:, :, : len(sequence)], ref.values, rtol=0, atol=1e-10)
    # and decoding goes on from the compacted cache exactly as from the full sequence
    nxt = torch.tensor([11])
    logits = forward(model, cache, nxt, torch.tensor([len(sequence)]))
    with torch.no_grad():
        expected = model(torch.tensor([sequence + [11]])).logits[0, -1]
    torch.testing.assert_close(logits[-1], expected, rtol=0, atol=1e-10)
