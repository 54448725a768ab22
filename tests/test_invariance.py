"""tools.invariance: comparing a token's pass alone with the same token among others, module by module."""

from __future__ import annotations

import json

import torch

from tools.invariance import compare, measure, row
from tr.device.invariant import CHUNK
from tr.device.model import load_model


def test_compare_counts_identical_tokens_and_names_the_first_module_that_differs():
    alone = [{"a <": torch.ones(3), "a": torch.zeros(3), "lm_head": torch.arange(4.0)} for _ in range(2)]
    together = {"a <": torch.ones(1, 2, 3), "a": torch.zeros(1, 2, 3), "lm_head": torch.arange(4.0).repeat(1, 2, 1)}
    assert compare(alone, together, [0, 1]) == {"tokens": 2, "identical": 2, "differing_logits": 0,
                                                 "first_difference": {}}
    together["a"][0, 1, 2] = 1.0
    together["lm_head"][0, 1, :2] = -1.0
    assert compare(alone, together, [0, 1]) == {"tokens": 2, "identical": 1, "differing_logits": 2,
                                                 "first_difference": {"a": 1}}
    assert torch.equal(row(torch.arange(6).view(1, 3, 2), 1), torch.tensor([2, 3]))
    assert torch.equal(row(torch.arange(6).view(3, 2), 2), torch.tensor([4, 5]))


def test_measure_reports_every_pass_on_a_model(tiny_model_dir):
    report = measure(load_model(str(tiny_model_dir)), [2, 9])
    assert set(report) == {"chain-2", "chain-9", "tree-9"}
    assert report["chain-9"]["tokens"] == 9 and 1 < report["tree-9"]["tokens"] <= 9
    assert all(0 <= r["identical"] <= r["tokens"] for r in report.values()) and json.dumps(report)


def test_bfloat16_passes_are_bit_identical_to_one_token_passes_on_the_cpu(tiny_model_dir):
    """With `tr.device.invariant` installed (as `load_model` does for bf16 on the CPU), every compared token's
    logits match bit for bit, in chains and trees, behind caches that end inside and across chunks."""
    lm = load_model(str(tiny_model_dir), "cpu", "bfloat16")
    for cached in (0, CHUNK - 3):
        report = measure(lm, [2, 9, 17], cached=cached)
        assert all(r["identical"] == r["tokens"] and not r["first_difference"] for r in report.values()), report
