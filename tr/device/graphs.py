"""CUDA graphs for decoding's forward passes: one replay launches what Python launched kernel by kernel.

On a GPU a small model's pass is bound by Python issuing hundreds of small kernels. `GraphedPasses` runs
each pass over a static KV cache (`SlotCache`: every layer's keys and values in one buffer of fixed
capacity, written at the slots a pass names and attended in full under a mask) with its rows padded to
a bucket (`BUCKETS`), and captures one CUDA graph per bucket on first use; later passes of that size
copy their tokens, positions, slots and mask into the graph's input buffers and replay it. Padding rows
write their keys past the pass, where no real row looks and the next pass overwrites them.

Buffers and graphs belong to a `Workspace` of one model and one capacity, which a request borrows from
the model's pool and hands back when it ends (a race's decoders hold one each). Capture happens in the
process that decodes, on first use, without `torch.compile`: in a ZeroGPU worker, inside the decorated
call. A pass longer than the largest bucket (a prefill) runs as several, each seeing the ones before.
Off CUDA the same static passes run eagerly: that is how the tests on a CPU check them.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..kv_cache import CacheFullError, in_place, move_kept
from ..passes import additive, chain, forward

log = logging.getLogger(__name__)
T = TypeVar("T")

# Rows a captured pass holds: plain decoding's one, prompt lookup's chains, dynamic trees up to 81 nodes.
BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96)
WARMUP_PASSES = 2  # eager passes on a side stream before capture, as CUDA graphs need
MIN_CAPACITY = 256


def capture_graph(run: Callable[[], T], device: torch.device, pool: tuple | None = None
                  ) -> tuple[torch.cuda.CUDAGraph, T] | None:
    """`run` warmed up on a side stream (`WARMUP_PASSES` times, as CUDA graphs need), then captured: the graph
    and what `run` returned while captured (its output buffers), or None, logged, where it cannot be
    captured: the caller then runs it eagerly (a model whose forward cannot be captured still decodes)."""
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs = run()
    except RuntimeError as err:
        log.warning("CUDA graph capture failed, running eagerly: %s", str(err).splitlines()[0])
        return None
    return graph, outputs


def bucket(n: int) -> int:
    """The rows a pass of `n` tokens (at most the largest bucket) runs with."""
    return next(rows for rows in BUCKETS if rows >= n)


def supports(model: torch.nn.Module) -> bool:
    """Whether the model's config names what a `SlotCache` is shaped by (decoder layers with one cache each)."""
    config = model.config
    return all(hasattr(config, name) for name in ("num_hidden_layers", "num_attention_heads", "hidden_size"))


class _SlotLayer(CacheLayerMixin):
    """One layer's view of a `SlotCache`: writes at the cache's slots, hands attention every position."""

    is_sliding = False

    def __init__(self, cache: SlotCache, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.cache, self.keys, self.values = cache, keys, values
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # allocated with the cache

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys.index_copy_(2, self.cache.slots, key_states)
        self.values.index_copy_(2, self.cache.slots, value_states)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2], 0

    def get_seq_length(self) -> int:
        return self.cache.length

    def get_max_length(self) -> int:
        return self.keys.shape[2]

    def reset(self) -> None:
        self.cache.length = 0


class SlotCache(Cache):
    """Keys and values of every layer in one static buffer (layers, 2, 1, kv heads, capacity, head size).
    A pass writes at `slots` (a device tensor, set before the pass) and attends over all `capacity`
    positions, so its shapes and addresses never change; `length` (on the host) counts committed ones."""

    def __init__(self, config, capacity: int, dtype: torch.dtype, device: torch.device):
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_size = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.kv = torch.zeros(config.num_hidden_layers, 2, 1, kv_heads, capacity, head_size, dtype=dtype,
                              device=device)
        super().__init__(layers=[_SlotLayer(self, layer[0], layer[1]) for layer in self.kv])
        self.capacity, self.length = capacity, 0
        self.slots = torch.zeros(0, dtype=torch.long, device=device)

    def keep(self, start: int, offsets: Sequence[int]) -> None:
        """Keep positions `start + offsets` (increasing) as `start, start + 1, ...`; drop the rest."""
        if not in_place(offsets):
            move_kept(self.kv, 4, start, torch.tensor(offsets, device=self.kv.device) + start)
        self.length = start + len(offsets)

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)


@dataclass
class _Inputs:
    """A bucket's static input buffers, and its graph and output once captured."""

    ids: torch.Tensor  # (rows,)
    positions: torch.Tensor  # (rows,)
    slots: torch.Tensor  # (rows,)
    offsets: torch.Tensor  # (rows,) 0, 1, ...: slots are these behind the pass's first
    mask: torch.Tensor  # (1, 1, rows, capacity)
    graph: torch.cuda.CUDAGraph | None = None
    logits: torch.Tensor | None = None


class Workspace:
    """A `SlotCache` and, per bucket, input buffers and a CUDA graph, for one model and capacity; used by one
    request at a time. `capture` False runs the static passes eagerly (always so off CUDA)."""

    def __init__(self, model: torch.nn.Module, capacity: int):
        parameter = next(model.parameters())
        self.model, self.dtype, self.device = model, parameter.dtype, parameter.device
        self.cache = SlotCache(model.config, capacity, self.dtype, self.device)
        self.capture = self.device.type == "cuda"
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.buckets: dict[int, _Inputs] = {}
        self.steps: dict[tuple, object] = {}  # whole decoding steps on this cache (`tr.device.resident`), by key

    def run(self, ids: torch.Tensor, positions: torch.Tensor, ancestors: torch.Tensor | None, last_only: bool,
            greedy: bool) -> torch.Tensor:
        """Logits of one pass behind the cache's committed positions (see `tr.passes.Passes.__call__`), in
        chunks of the largest bucket: a chunk's rows see the cache and what they see of the chunks before."""
        n, start, most = len(ids), self.cache.length, BUCKETS[-1]
        sees = chain(n) if ancestors is None else ancestors
        parts = []
        for first in range(0, n, most):
            end = min(first + most, n)
            logits = self._pass(ids[first:end], positions[first:end], start, first, sees[first:end, :end], greedy)
            if end == n or not last_only:
                parts.append(logits if end == n else logits.clone())  # a replay overwrites its output
        self.cache.length = start + n
        return parts[-1][-1:] if last_only else torch.cat(parts) if len(parts) > 1 else parts[0]

    def _pass(self, ids: torch.Tensor, positions: torch.Tensor, start: int, first: int, sees: torch.Tensor,
              greedy: bool) -> torch.Tensor:
        """Rows `first`.. of a pass written at `start`; `sees` (rows, first + rows): which of the pass's
        tokens each row sees."""
        m = len(ids)
        inputs = self._inputs(bucket(m))
        inputs.ids[:m], inputs.ids[m:] = ids, 0
        inputs.positions[:m], inputs.positions[m:] = positions, 0
        torch.add(inputs.offsets, start + first, out=inputs.slots)
        mask = inputs.mask[0, 0]
        mask.fill_(torch.finfo(self.dtype).min)
        mask[:m, :start] = 0
        mask[:m, start : start + sees.shape[1]] = additive(sees, self.dtype).to(self.device)
        mask[m:, 0] = 0  # padding rows see slot 0 only: a row that sees nothing would be NaN
        return self._replay(inputs, greedy)[:m]

    def _inputs(self, rows: int) -> _Inputs:
        if rows not in self.buckets:
            long = dict(dtype=torch.long, device=self.device)
            self.buckets[rows] = _Inputs(
                torch.zeros(rows, **long), torch.zeros(rows, **long), torch.zeros(rows, **long),
                torch.arange(rows, **long),
                torch.empty(1, 1, rows, self.cache.capacity, dtype=self.dtype, device=self.device))
        return self.buckets[rows]

    def _replay(self, inputs: _Inputs, greedy: bool) -> torch.Tensor:
        self.cache.slots = inputs.slots
        if inputs.graph is None and self.capture:
            # The inputs already hold this pass, and every run of it writes the same keys and values, so the
            # warm-up passes change nothing the replay does not.
            def run() -> torch.Tensor:
                return forward(self.model, self.cache, inputs.ids, inputs.positions, inputs.mask, greedy=greedy)

            captured = capture_graph(run, self.device, self.pool)
            if captured is None:
                self.capture = False
            else:
                inputs.graph, inputs.logits = captured
        if not self.capture:
            # A new view of the mask per pass: the CPU's invariant attention keeps a pass's plan by its mask object.
            return forward(self.model, self.cache, inputs.ids, inputs.positions, inputs.mask[:], greedy=greedy)
        inputs.graph.replay()
        return inputs.logits


class _Pool:
    """A model's idle workspaces by capacity."""

    def __init__(self) -> None:
        self.idle: dict[int, list[Workspace]] = {}
        self.lock = threading.Lock()

    def borrow(self, model: torch.nn.Module, capacity: int) -> Workspace:
        with self.lock:
            idle = self.idle.get(capacity)
            if idle:
                return idle.pop()
        return Workspace(model, capacity)

    def give_back(self, workspace: Workspace) -> None:
        workspace.cache.length = 0
        with self.lock:
            self.idle.setdefault(workspace.cache.capacity, []).append(workspace)


_pools: weakref.WeakKeyDictionary[torch.nn.Module, _Pool] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def _pool(model: torch.nn.Module) -> _Pool:
    with _pools_lock:
        return _pools.setdefault(model, _Pool())


def workspace_capacity(capacity: int) -> int:
    """A request's capacity, with room for the padding of its largest pass, rounded up to a power of two:
    requests of similar length share workspaces, and so their graphs."""
    needed = max(capacity + BUCKETS[-1], MIN_CAPACITY)
    return 1 << (needed - 1).bit_length()


class GraphedPasses:
    """`tr.passes.Passes` over a borrowed `Workspace`: CUDA graphs on a GPU, the same static passes eagerly
    elsewhere."""

    def __init__(self, model: torch.nn.Module, capacity: int):
        self.capacity, self._pool = capacity, _pool(model)
        self.workspace: Workspace | None = self._pool.borrow(model, workspace_capacity(capacity))

    @property
    def length(self) -> int:
        return self.workspace.cache.length

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, ancestors: torch.Tensor | None = None, *,
                 last_only: bool = False, greedy: bool = False) -> torch.Tensor:
        end = self.length + len(ids)
        if end > self.capacity:
            raise CacheFullError(f"KV cache holds {self.capacity} positions, {end} needed")
        return self.workspace.run(ids, positions, ancestors, last_only, greedy)

    def keep(self, start: int, offsets: Sequence[int]) -> None:
        self.workspace.cache.keep(start, offsets)

    def truncate(self, length: int) -> None:
        self.workspace.cache.truncate(length)

    def close(self) -> None:
        if self.workspace is not None:
            self._pool.give_back(self.workspace)
            self.workspace = None
