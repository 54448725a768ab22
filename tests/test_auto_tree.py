"""Calibration, acceptance statistics and the `auto` tree."""

from __future__ import annotations

import torch

from tiny_models import tiny_model
from tr.acceptance import AcceptanceStats
from tr.auto_tree import auto_tree, choose_tree
from tr.calibrate import CostCurve, calibrate
from tr.decoding import autoregressive, token_recycling
from tr.matrix import AdjacencyMatrix
from tr.trees import DraftTree, grow, load_template, validate_paths

FREE = CostCurve([1, 8, 16, 32, 81], [0.010, 0.0101, 0.0102, 0.0104, 0.0108], 256, "cuda")
EXPENSIVE = CostCurve([1, 8, 16, 32, 81], [0.056, 0.078, 0.090, 0.123, 0.213], 256, "cpu")


def test_auto_picks_a_large_tree_when_verification_is_free_and_a_small_one_when_not():
    rates = AcceptanceStats(8).rates()
    large, small = choose_tree(rates, FREE), choose_tree(rates, EXPENSIVE)
    assert len(large.paths) >= 70
    assert 2 <= len(small.paths) <= 24
    for choice in (large, small):
        validate_paths(choice.paths, 8)
        assert choice.tokens_per_s == max(c[2] for c in choice.candidates)


def test_grown_probabilities_are_products_of_rates():
    rates = torch.rand(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.9
    for path, p in grow(rates.tolist(), 30, 6):
        expected = 1.0
        for depth, rank in enumerate(path):
            expected *= float(rates[depth, rank])
        assert abs(p - expected) < 1e-12


def test_statistics_count_reached_and_correct_nodes():
    model = tiny_model("qwen2", 96, seed=0)
    matrix = AdjacencyMatrix(96, 8)
    steps = list(token_recycling(model, [4, 5, 6], 40, matrix, DraftTree.from_paths(load_template("small-16", 8))))
    stats = matrix.stats
    accepted = sum(s.accepted_drafts for s in steps)
    # every accepted draft is a reached, correct node (siblings sharing a token can be correct too)
    assert sum(map(sum, stats.reached)) >= sum(map(sum, stats.correct)) >= accepted > 0
    root_children = sum(1 for s in steps[1:] for d in s.tree_depths if d == 1)
    assert sum(stats.reached[0]) == root_children  # every first-layer node is reached (the root always is)
    matrix.reset()
    assert sum(map(sum, stats.reached)) == 0


def test_auto_tree_decoding_is_lossless_and_adapts():
    model = tiny_model("llama", 96, seed=0)
    matrix = AdjacencyMatrix(96, 8)
    prompt = [9, 8, 7, 6]
    expected = [t for s in autoregressive(model, prompt, 50) for t in s.tokens]
    trees = []
    for _ in range(3):
        tree, choice = auto_tree(matrix.stats.rates(), EXPENSIVE)
        trees.append(choice.paths)
        assert [t for s in token_recycling(model, prompt, 50, matrix, tree) for t in s.tokens] == expected
    assert trees[0] != trees[-1]  # statistics from earlier runs changed the choice


def test_calibration_measures_growing_costs_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TR_CACHE_DIR", str(tmp_path))
    model = tiny_model("llama", 96, seed=0, dtype=torch.float32)
    curve = calibrate(model, "tiny", sizes=(1, 4, 64), context=32, repeats=2)
    assert curve.sizes == [1, 4, 64] and all(s > 0 for s in curve.seconds)
    assert list(tmp_path.glob("calibration-*.json"))
    assert calibrate(model, "tiny", sizes=(1, 4, 64), context=32, repeats=2) == curve  # read back
    assert curve.relative(1) == 1.0 and curve.cost(2) > 0
