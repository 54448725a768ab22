"""tools.profile on a tiny Llama: every figure is there, the parts add up to the step they split, and the
levers run each form and thread count (no speed is asserted: figures live in BENCHMARKS.md)."""

from __future__ import annotations

import pytest
import torch

from tiny_models import tiny_model
from tools import profile
from tr.device import invariant, kernels, quantized
from tr.device.model import LoadedModel


@pytest.fixture(scope="module")
def tiny_lm() -> LoadedModel:
    model = tiny_model("llama", 96, seed=0, dtype=torch.float32).cpu().eval()
    kernels.install_kernels(model)
    assert invariant.installed(model)
    return LoadedModel(model, None, "tiny", torch.device("cpu"), torch.float32)


def test_bandwidth_is_measured_both_ways():
    figures = profile.bandwidth(megabytes=8, repeats=2)
    assert set(figures) == {"read_gb_s", "copy_gb_s"} and all(v > 0 for v in figures.values())


@pytest.mark.parametrize("tokens", [1, 4])
def test_a_step_is_split_into_parts_that_add_up(tiny_lm, tokens):
    result = profile.profile_step(tiny_lm, context=20, n=tokens, repeats=3)
    parts = result["parts ms"]
    assert {"qkv", "o_proj", "gate_up", "down_proj", "lm_head", "attention (rope, cache, attend)"} <= set(parts)
    step = parts.pop("step with hooks")
    assert sum(parts.values()) == pytest.approx(step)
    assert result["step ms as decoders run it"] > 0 and result["operator calls as decoders run it"] > 0
    assert result["products"]["calls"] == 2 * 4 + 1  # per layer: qkv, o, gate_up, down; and the head
    assert result["dispatch"]["matrix kernel calls"] > 0
    assert set(result["attention"]) == {"invariant ms", "torch fused ms"}
    host = {"cpu": "x", "flags": [], "threads": 1, "read_gb_s": 1.0, "copy_gb_s": 1.0, "dtype": "float32",
            "hook_us": 1.0}
    assert ("plain step" if tokens == 1 else "tree step") in profile.report({"host": host, "steps": [result]})


def test_levers_time_each_form_and_thread_count(tiny_lm, monkeypatch):
    separate = tiny_model("llama", 96, seed=0, dtype=torch.float32).cpu().eval()
    monkeypatch.setattr(profile.AutoModelForCausalLM, "from_pretrained", lambda *args, **kwargs: separate)
    figures = profile.levers(tiny_lm, context=20, n=3, threads=[1], repeats=2)
    forms = ("lean", "lean, rows padded to 2", "model's forward, fused", "model's forward, separate")
    assert set(figures) == {f"{n} token(s), {form}, 1 thread(s)" for n in (1, 3) for form in forms}
    assert all(t["min ms"] <= t["median ms"] for t in figures.values())


def test_products_by_rows_time_each_kernel_and_check_its_rows(tiny_lm):
    figures = profile.products_by_rows(tiny_lm.model, rows=[1, 2, 4], repeats=2)
    expected = {"model's own"} | ({"int4 (bf16 rows)", "int8 (bf16 rows)"} if quantized.supported() else set())
    assert set(figures) == expected
    for name, kernel in figures.items():
        assert set(kernel["ms by rows"]) == {1, 2, 4} and all(ms > 0 for ms in kernel["ms by rows"].values())
        assert kernel["calls"] == 2 * 4 + 1 and kernel["rows keep their bits"] is True, name
