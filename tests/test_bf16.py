"""bfloat16 as a first-class mode: native bf16 detection, `dtype="auto"`, and greedy Token Recycling in bf16
equal to plain bf16 decoding on the bundled model (by construction, through `tr.device.invariant`)."""

from __future__ import annotations

import pytest
import torch

from tr.device import kernels
from tr.device.model import BUNDLED, choose_dtype, load_model
from tr.generate import generate
from tr.specs import Method, Start, parse_tree

CPU = torch.device("cpu")
FLAGS = "fpu sse2 avx2 avx512f avx512bw"  # an AVX-512 CPU without bf16 arithmetic


def fake_cpu(monkeypatch, flags: str) -> None:
    """Make /proc/cpuinfo read as a CPU with these flags."""
    text = f"processor\t: 0\nmodel name\t: Fake CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    monkeypatch.setattr(kernels, "read_cpuinfo", lambda: text)


@pytest.mark.parametrize("flags, expected", [
    (FLAGS, None),
    (FLAGS + " avx512_bf16", "avx512_bf16"),
    (FLAGS + " avx512_bf16 amx_tile amx_bf16", "amx_bf16"),  # AMX first: the faster of the two
    ("", None),
])
def test_native_bf16_names_the_cpu_feature(monkeypatch, flags, expected):
    fake_cpu(monkeypatch, flags)
    assert kernels.native_bf16(CPU) == expected


def test_native_bf16_without_cpuinfo_is_none(monkeypatch):
    monkeypatch.setattr(kernels, "read_cpuinfo", lambda: "")  # not Linux
    assert kernels.native_bf16(CPU) is None
    assert kernels.cpu_flags() == set()


def test_native_bf16_on_cuda_asks_for_hardware_bf16(monkeypatch):
    asked = {}

    def supported(including_emulation: bool = True) -> bool:
        asked["emulation"] = including_emulation
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert kernels.native_bf16(torch.device("cuda")) == "cuda"
    assert asked == {"emulation": False}  # an emulated bf16 GPU does not count
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert kernels.native_bf16(torch.device("cuda")) is None


def test_auto_picks_bfloat16_only_where_native(monkeypatch):
    fake_cpu(monkeypatch, FLAGS + " avx512_bf16")
    dtype, note = choose_dtype("auto", CPU)
    assert dtype == torch.bfloat16 and note == "bfloat16 (native bf16 on this CPU: avx512_bf16)"
    fake_cpu(monkeypatch, FLAGS)
    dtype, note = choose_dtype("auto", CPU)
    assert dtype == torch.float32
    assert note == "float32 (this CPU has no native bf16: bfloat16 would be emulated and slower)"


def test_an_explicit_dtype_is_kept_and_explained(monkeypatch):
    fake_cpu(monkeypatch, FLAGS)
    assert choose_dtype("float32", CPU) == (torch.float32, "float32 (as asked)")
    dtype, note = choose_dtype("bfloat16", CPU)
    assert dtype == torch.bfloat16 and "as asked" in note and "emulated and slower" in note
    fake_cpu(monkeypatch, FLAGS + " amx_bf16")
    assert choose_dtype("bfloat16", CPU)[1] == "bfloat16 (as asked; native bf16 on this CPU: amx_bf16)"


def test_load_model_auto_on_a_cpu_without_bf16_is_float32(monkeypatch, tiny_model_dir):
    fake_cpu(monkeypatch, FLAGS)
    lm = load_model(str(tiny_model_dir), "cpu", "auto")
    assert lm.dtype == torch.float32 and next(lm.model.parameters()).dtype == torch.float32
    assert lm.dtype_note.startswith("float32 (this CPU has no native bf16")


def test_the_library_default_stays_float32(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), "cpu")
    assert lm.dtype == torch.float32 and lm.dtype_note == "float32 (as asked)"


PROMPTS = (
    "Write a haiku about autumn leaves.",
    "Write a Python function that reverses a string.",
    "List three facts about the Moon.",
)


@pytest.fixture(scope="module")
def bf16_lm():
    feature = kernels.native_bf16(CPU)
    if feature is None:
        pytest.skip("this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag): bf16 would be emulated")
    lm = load_model(BUNDLED, "cpu", "auto")
    assert lm.dtype == torch.bfloat16 and feature in lm.dtype_note
    return lm


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_token_recycling_in_bf16_equals_plain_bf16_decoding(bf16_lm, prompt):
    plain = generate(bf16_lm, prompt, Method.AR, max_new_tokens=32)
    recycled = generate(bf16_lm, prompt, Method.TR, max_new_tokens=32, tree=parse_tree("auto", 8, "tree"),
                        start=Start.PRIMED)
    assert recycled.token_ids == plain.token_ids
    assert len(recycled.steps) < len(plain.steps)  # it did draft and accept, not only decode one by one
