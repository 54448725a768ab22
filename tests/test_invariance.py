"""tools.invariance: comparing a token's pass alone with the same token among others, module by module."""

from __future__ import annotations

import json

import pytest
import torch

from tools.invariance import compare, measure, row
from tr.device import invariant
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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_passes_are_bit_identical_to_one_token_passes_on_the_cpu(tiny_model_dir, dtype):
    """With the kernels `load_model` installs on the CPU, every compared token's logits and every module's
    output match bit for bit, in chains and trees, behind caches that end inside and across chunks."""
    if not invariant.supported(getattr(torch, dtype)):
        pytest.skip(f"no oneDNN product in {dtype} on this CPU: plain torch kernels, not invariant")
    lm = load_model(str(tiny_model_dir), "cpu", dtype)
    for cached in (0, CHUNK - 3):
        report = measure(lm, [2, 9, 17], cached=cached)
        assert all(r["identical"] == r["tokens"] and not r["first_difference"] for r in report.values()), report


@pytest.mark.slow
def test_the_bundled_model_in_float32_is_bit_identical_in_chains_and_trees(real_lm):
    """The same on the bundled model: chains of 2 to 81 tokens and trees of 17 and 81 nodes, behind a cache
    that crosses a chunk."""
    report = measure(real_lm, [2, 17, 81], cached=CHUNK + 5)
    assert all(r["identical"] == r["tokens"] and r["differing_logits"] == 0 and not r["first_difference"]
               for r in report.values()), report


def test_attention_timing_reports_both_product_forms_and_refuses_bad_settings(capsys):
    from tools import attention_timing

    chosen, bucket = invariant.TOGETHER_ROWS, invariant.BUCKET
    attention_timing.main(["--dtype", "float32", "--sizes", "1", "30", "--contexts", "5", "--rounds", "1"])
    report = json.loads(capsys.readouterr().out)
    assert [(r["n"], r["chosen"]) for r in report["forms"]] == [(1, "together"), (30, "per_head")]
    assert all(r["per_head"] > 0 and r["together"] > 0 for r in report["forms"])
    assert report["new_shapes"]["bucket"] == bucket  # and the module's settings are as they were:
    assert (invariant.TOGETHER_ROWS, invariant.BUCKET) == (chosen, bucket)
    with pytest.raises(SystemExit):
        attention_timing.main(["--sizes", "0"])
    assert "--sizes must lie in 1..81" in capsys.readouterr().err
