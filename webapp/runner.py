"""Where a race is computed: beside the model, in this process or, on a ZeroGPU Space, inside a call
decorated with `spaces.GPU` that runs in a worker process holding the GPU.

Either way the race comes out as `Chunk`s of plain step records (no CUDA tensor, nothing a pickle
cannot carry), and the last chunk brings back what the run changed: the session's matrix and the
device's cost curve. The caller renders; nothing here knows about the page.

On ZeroGPU (the `spaces` package installed and `SPACES_ZERO_GPU` set by the Space) the main process
never has a real GPU, so the cost calibration runs inside the first decorated call and comes back with
its result. Elsewhere nothing of `spaces` is imported and the race runs in this process.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from tr.costs import LearnedCost
from tr.device.calibrate import device_curve
from tr.device.model import LoadedModel
from tr.generate import decode_steps
from tr.matrix import AdjacencyMatrix
from tr.race import race
from tr.records import Step
from tr.specs import Method

from .settings import Settings

CHUNK_S = 0.25  # compute between two screen updates (the caller may ask for more when rendering is slow)
# The longest allowed run on a GPU: both decoders, MAX_NEW_TOKENS (1024) each, plus a first call's
# calibration, at the slowest plain decoding seen on a GPU (BENCHMARKS.md), with room to spare.
GPU_DURATION_S = 120
MODEL_LOCK = threading.Lock()  # one forward pass on the model at a time, even from an abandoned (stopped) run


@dataclass
class Chunk:
    """Steps computed since the last chunk; the last one (`done`) also carries what the run changed."""

    steps: list[tuple[str, Step]] = field(default_factory=list)
    done: bool = False
    matrix: AdjacencyMatrix | None = None
    costs: LearnedCost | None = None


def on_zero_gpu() -> bool:
    """A ZeroGPU Space: the Space sets SPACES_ZERO_GPU, and the `spaces` package is installed."""
    flag = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return flag and importlib.util.find_spec("spaces") is not None


def prepare_zero_gpu() -> bool:
    """Import `spaces` before anything touches CUDA, as ZeroGPU requires; say whether it applies."""
    if not on_zero_gpu():
        return False
    importlib.import_module("spaces")
    return True


def _release_memory() -> None:
    """Hand freed heap pages back to the system (glibc keeps them after a long prompt's activations)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _warm_up(lm: LoadedModel) -> None:
    """One untimed pass, so a freshly attached GPU's start-up cost is charged to neither decoder."""
    if lm.device.type == "cuda":
        with torch.inference_mode():
            lm.model(input_ids=torch.tensor([[lm.eos_ids[0] if lm.eos_ids else 0]], device=lm.device))
        torch.cuda.synchronize()


def race_chunks(lm: LoadedModel, settings: Settings, prompt_ids: list[int], matrix: AdjacencyMatrix,
                costs: LearnedCost | None, stopped: Callable[[], bool] | None = None,
                budget_s: Callable[[], float] | None = None) -> Iterator[Chunk]:
    """Race plain decoding against Token Recycling (and prompt lookup decoding, when the settings ask),
    one chunk of steps per `budget_s()` seconds."""
    with MODEL_LOCK:
        costs = costs or LearnedCost(device_curve(lm))
        _warm_up(lm)
    options = {Method.TR: dict(matrix=matrix, tree=settings.tree, start=settings.start, costs=costs),
               Method.PLD: dict(costs=costs)}
    runners = {lane.value: decode_steps(lm, prompt_ids, lane, settings.max_new_tokens, settings.sampling,
                                        **options.get(lane, {}))
               for lane in settings.lanes}
    events, finished = race(runners), False
    while not finished:
        chunk, deadline = Chunk(), time.perf_counter() + (budget_s() if budget_s else CHUNK_S)
        with MODEL_LOCK:  # released between chunks, so a stopped run never blocks the next one
            for name, step in events:
                chunk.steps.append((name, step))
                if (stopped and stopped()) or time.perf_counter() >= deadline:
                    break
            else:
                finished = True
        if stopped and stopped():
            return
        if not finished:
            yield chunk
    del events, runners  # the decoders' caches and activations
    _release_memory()
    yield Chunk(chunk.steps, done=True, matrix=matrix, costs=costs)


# The model a ZeroGPU worker races on. ZeroGPU moves module-level CUDA weights to the worker's GPU and
# pickles only the decorated call's arguments, so the model is never one of them.
_gpu_model: LoadedModel | None = None


def _gpu_race(settings: Settings, prompt_ids: list[int], matrix: AdjacencyMatrix, costs: LearnedCost | None
              ) -> Iterator[Chunk]:
    yield from race_chunks(_gpu_model, settings, prompt_ids, matrix, costs)


Runner = Callable[[Settings, list[int], AdjacencyMatrix, LearnedCost | None, Callable[[], bool], Callable[[], float]],
                  Iterator[Chunk]]


def race_runner(lm: LoadedModel) -> Runner:
    """`race_chunks` on `lm` here, or its ZeroGPU form: decorated, without the callbacks a worker cannot
    reach (Stop then takes effect when Gradio cancels the call, between chunks; step mode reveals a race
    computed whole)."""
    if not on_zero_gpu():
        return lambda *args: race_chunks(lm, *args)
    global _gpu_model
    _gpu_model = lm
    decorated = importlib.import_module("spaces").GPU(duration=GPU_DURATION_S)(_gpu_race)

    def run(settings: Settings, prompt_ids: list[int], matrix: AdjacencyMatrix, costs: LearnedCost | None,
            stopped: Callable[[], bool], budget_s: Callable[[], float]) -> Iterator[Chunk]:
        chunks = decorated(settings, prompt_ids, matrix, costs)
        # A decorated call must not wait for a teacher's clicks while it holds the GPU: in step mode (no
        # compute per chunk) the race is computed whole, then revealed one step at a time.
        return iter(list(chunks)) if budget_s() == 0 else chunks

    return run
