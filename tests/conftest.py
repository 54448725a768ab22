"""Shared fixtures: the real bundled model (loaded once per session) and a tiny random model that
uses the bundled tokenizer, for fast end-to-end tests of the CLI and the app."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tr.device.model import BUNDLED, LoadedModel, load_model, resolve

# Tiny models run ~10x slower with two threads whenever anything else shares the two cores (spinning
# OpenMP workers); one thread keeps the suite fast and its timing steady.
torch.set_num_threads(1)

SPEC_BENCH = Path(__file__).resolve().parents[2] / "shared" / "spec_bench" / "question.jsonl"
# Tests that use these are slow: the real model, the app launched, a browser, a subprocess app.
SLOW_FIXTURES = {"real_lm", "app_url", "page", "space"}


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the slow tests (CI always does)")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--slow") or os.environ.get("CI") == "true"
    skip = pytest.mark.skip(reason="slow: run with --slow (CI=true runs every test)")
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def calibrations_kept_out_of_the_user_cache(tmp_path_factory):
    """Tests calibrate tiny models in temporary folders and with one thread: keep those curves in a
    temporary folder too (a test that sets TR_CACHE_DIR still gets its own), not in ~/.cache."""
    folder = tmp_path_factory.mktemp("calibrations")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tr.device.calibrate.cache_dir", lambda: Path(os.environ.get("TR_CACHE_DIR", folder)))
        yield


@pytest.fixture(scope="session")
def real_lm() -> LoadedModel:
    return load_model(BUNDLED)


def make_tiny_model_dir(folder: Path, seed: int = 0) -> Path:
    """A 2-layer random Llama with the bundled tokenizer, saved like any local model folder."""
    tokenizer = AutoTokenizer.from_pretrained(resolve(BUNDLED))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def spec_bench_questions() -> list[dict]:
    if not SPEC_BENCH.is_file():
        pytest.skip(f"Spec-Bench questions not found at {SPEC_BENCH} (the repo's ../shared is absent)")
    return [json.loads(line) for line in SPEC_BENCH.read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


APP_DOWNLOADS = {}  # app URL -> its `webapp.downloads.Downloads`


def launch_app(lm: LoadedModel):
    """The app on `lm`, launched in this process as app.py would, on a free port: (demo, port)."""
    from tr.costs import LearnedCost  # gradio is slow to import: only the tests that launch the app pay for it
    from tr.device.calibrate import device_curve
    from webapp.downloads import Downloads
    from webapp.layout import build_demo
    from webapp.runner import race_runner

    port, downloads = free_port(), Downloads()
    demo = build_demo(lm, LearnedCost(device_curve(lm)), race_runner(lm), downloads=downloads)
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    APP_DOWNLOADS[f"http://127.0.0.1:{port}/"] = downloads
    return demo, port


@pytest.fixture(scope="module")
def app_url(tiny_model_dir):
    """The app on the tiny model, launched in this process on a free port; its URL."""
    demo, port = launch_app(load_model(str(tiny_model_dir)))
    url = f"http://127.0.0.1:{port}/"
    yield url
    demo.close()
    APP_DOWNLOADS.pop(url).close()
