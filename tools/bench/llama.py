"""The `llama` baseline: llama.cpp running the bundled GGUF itself, what a CPU user would run instead of us.

An optional extra, needed by neither the app nor the tests: node-llama-cpp's prebuilt CPU binaries, which
install from npm in seconds (llama-cpp-python would build llama.cpp from source):

    npm install --prefix .llama node-llama-cpp@3.22.1     # or any folder named by $TR_LLAMA_DIR

A worker process (`llama_worker.mjs`) loads the GGUF once and is sent each prompt's token ids, ours (the
same chat template), so both sides start from the same tokens; it decodes greedily until one of our EOS
ids or the token limit and times the whole call, prompt included, as `tools.bench` times its own methods.
Its thread count is the method's (`llama:N`) or torch's; the report names it with llama.cpp's release
and the CPU backend it loaded (its instruction-set variant, e.g. ``libggml-cpu-sapphirerapids``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tr.device.model import bundled_gguf

from .stock import ROOT, StockWorker

PACKAGE = "node-llama-cpp"
WORKER = Path(__file__).with_name("llama_worker.mjs")
INSTALL_HINT = f"npm install --prefix .llama {PACKAGE}@3.22.1 (or set TR_LLAMA_DIR to its folder)"


class LlamaMissing(OSError):
    """node or node-llama-cpp is not installed, or there is no GGUF to run; the message says what to do."""


@dataclass(frozen=True)
class LlamaInfo:
    """What the worker reported on start: llama.cpp's release, the CPU backend it loaded, its threads."""

    build: str
    backend: str
    threads: int

    @property
    def label(self) -> str:
        return f"llama.cpp {self.build} ({self.backend}), {self.threads} thread{'s' * (self.threads != 1)}"


def install_dir() -> Path:
    """Where node-llama-cpp is installed: $TR_LLAMA_DIR, else `.llama` in the repository."""
    return Path(os.environ.get("TR_LLAMA_DIR", ROOT / ".llama"))


def gguf_file(model: str) -> Path:
    """The GGUF the worker runs: the bundled model's own file, or `model` itself where it is a .gguf file."""
    path = Path(model) if model.endswith(".gguf") else bundled_gguf()
    if path is None or not path.is_file():
        raise LlamaMissing(f"llama needs a GGUF file: the bundled model's package is not installed and {model!r} "
                           "is not a .gguf file")
    return path


def worker_command(model: str, threads: int) -> list[str]:
    """The worker's command line; raises `LlamaMissing` naming what to install."""
    node = shutil.which("node")
    folder = install_dir()
    if node is None:
        raise LlamaMissing("the llama method needs node (Node.js 20 or later) on the PATH")
    if not (folder / "node_modules" / PACKAGE).is_dir():
        raise LlamaMissing(f"the llama method needs {PACKAGE} in {folder}: {INSTALL_HINT}")
    return [node, str(WORKER), str(folder), str(gguf_file(model)), str(threads)]


def parse_ready(line: str) -> LlamaInfo:
    """The worker's first line as a `LlamaInfo`; raises OSError where it is not the ready line."""
    try:
        answer = json.loads(line)
        if answer.get("ready"):
            return LlamaInfo(str(answer["build"]), str(answer["backend"]), int(answer["threads"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    raise OSError(f"the llama worker did not start: {line.strip()[:200]!r}")


class LlamaWorker(StockWorker):
    """A `StockWorker` whose process is llama.cpp's: the same requests and answers, one line each."""

    def __init__(self, model: str, threads: int):
        self.process = subprocess.Popen(worker_command(model, threads), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        self.info = parse_ready(self.process.stdout.readline())
