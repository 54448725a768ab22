"""The benchmark's optional llama.cpp method: its parsing, its wiring (the worker's command and first
line), and, where node-llama-cpp is installed, one real generation on the bundled GGUF."""

from __future__ import annotations

import json
import shutil

import pytest

from tools.bench import llama
from tools.bench.options import KIND_NAMES, BenchMethod, Kind, parse_methods

READY = {"ready": True, "build": "ggml-org/llama.cpp v0.5.0", "backend": "libggml-cpu-x64", "threads": 2}


@pytest.mark.parametrize(("text", "expected"), [
    ("llama", [BenchMethod(Kind.LLAMA)]),
    ("ar,llama:1,llama:2,llama:1", [BenchMethod(Kind.AR), BenchMethod(Kind.LLAMA, threads=1),
                                    BenchMethod(Kind.LLAMA, threads=2)]),
])
def test_llama_methods_parse(text, expected):
    methods = parse_methods(text, 8)
    assert methods == expected
    assert [m.name for m in methods if m.kind is Kind.LLAMA] == [m.name for m in expected if m.kind is Kind.LLAMA]
    assert all(m.name == "llama" or m.name.startswith("llama:") for m in methods if m.kind is Kind.LLAMA)


@pytest.mark.parametrize("text", ["llama:0", "llama:x", "llama:-1", "llama:1:2"])
def test_bad_llama_threads_are_one_line(text):
    with pytest.raises(ValueError, match="thread count"):
        parse_methods(text, 8)


def test_llama_is_not_a_default_method():
    """An optional extra: the default method list must run where node is not installed."""
    assert "llama" not in KIND_NAMES


def test_ready_line_parses_and_labels():
    info = llama.parse_ready(json.dumps(READY) + "\n")
    assert info == llama.LlamaInfo("ggml-org/llama.cpp v0.5.0", "libggml-cpu-x64", 2)
    assert info.label == "llama.cpp ggml-org/llama.cpp v0.5.0 (libggml-cpu-x64), 2 threads"
    assert llama.LlamaInfo("b", "cpu", 1).label.endswith("1 thread")


@pytest.mark.parametrize("line", ["", "not json", json.dumps({"ready": False}), json.dumps({"ready": True})])
def test_a_worker_that_does_not_start_is_an_os_error(line):
    with pytest.raises(OSError, match="did not start"):
        llama.parse_ready(line)


def test_missing_install_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TR_LLAMA_DIR", str(tmp_path))
    with pytest.raises(llama.LlamaMissing, match="npm install"):
        llama.worker_command("bundled", 1)


def test_worker_command_runs_the_gguf_on_the_threads(tmp_path, monkeypatch):
    (tmp_path / "node_modules" / llama.PACKAGE).mkdir(parents=True)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("TR_LLAMA_DIR", str(tmp_path))
    monkeypatch.setattr(llama.shutil, "which", lambda name: "/usr/bin/node")
    assert llama.worker_command(str(gguf), 3) == ["/usr/bin/node", str(llama.WORKER), str(tmp_path), str(gguf), "3"]
    with pytest.raises(llama.LlamaMissing, match="GGUF"):
        llama.worker_command(str(tmp_path / "absent.gguf"), 1)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("node") is None or not (llama.install_dir() / "node_modules" / llama.PACKAGE).is_dir(),
                    reason="node-llama-cpp is not installed (an optional extra)")
def test_llama_generates_greedily_from_our_ids():
    """The real worker on the bundled GGUF: it starts, names its build, stops at the limit, and is greedy
    (the same prompt twice gives the same tokens)."""
    worker = llama.LlamaWorker("bundled", 1)
    try:
        assert worker.info.threads == 1 and worker.info.backend.startswith("libggml-cpu")
        prompt = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 2, 198, 1, 4093, 198, 19556, 30, 2, 198, 1]
        first, seconds = worker.generate(prompt, 8, [2])
        again, _ = worker.generate(prompt, 8, [2])
        assert first == again and 1 <= len(first) <= 8 and seconds > 0
    finally:
        worker.close()
