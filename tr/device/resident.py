"""Token Recycling with the whole step on the model's device, the next step queued while the host reads one.

`tr.decoding.token_recycling` builds each draft in Python and waits for the device after every pass: on
a GPU, where a graphed pass of a small model takes about a millisecond, the host's work is the step.
Here, for a template tree and greedy decoding, a step is tensor operations only, on the device:

1. draft: the template filled from the device's copy of the matrix rows, one gather per layer;
2. verify: one pass over a `tr.device.graphs.Workspace`'s slot cache, its mask built on the device from
   the committed length, which never leaves the device;
3. accept: the deepest node whose path the model agrees with; the path's cache entries move into place
   with one gather as long as the template is deep;
4. recycle: every node's row gets its top-k; a token drafted twice keeps its last occurrence (the
   others write to a spare row, so no two writes race).

One read back per step brings the draft, the model's choices and the rows to the host, which builds the
same `Step` record as the host loop and learns the same statistics, while the device runs the step
after (`ahead`). The device also knows when the request is over (an EOS, or no room left), so the step
queued after the last one changes no row. On CUDA a step is one CUDA graph, captured on first use.

The rows live on the device for the request and are written back to the matrix when it ends (rows this
request wrote only); pair rows, which templates never read, are not kept.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..decoding import Clock, Request, check_recycling, clip, prefill
from ..drafts import TemplateDrafter
from ..matrix import AdjacencyMatrix, latest
from ..passes import forward
from ..records import RowWrite, Step
from ..sampling import GREEDY
from ..trees import DraftTree
from .graphs import GraphedPasses, Workspace

log = logging.getLogger(__name__)

MAX_EOS = 16  # end-of-sequence ids a request may name (a model has one to three)


def path_nodes(tree: DraftTree) -> torch.Tensor:
    """(n, depth + 1): row i lists node i's path from the root, one node per depth, padded with i itself."""
    rows = []
    for node, sees in enumerate(tree.ancestors.tolist()):
        path = [a for a, seen in enumerate(sees) if seen]  # nodes are sorted by depth: root first
        rows.append(path + [node] * (tree.depth + 1 - len(path)))
    return torch.tensor(rows)


@dataclass
class _Launch:
    """One step's results on their way to the host."""

    ints: torch.Tensor
    floats: torch.Tensor
    began: torch.cuda.Event | float  # perf_counter seconds off CUDA
    ended: torch.cuda.Event | float

    def wait(self) -> float:
        """Block until the results are on the host; the device seconds the step took."""
        if isinstance(self.ended, float):
            return self.ended - self.began
        self.ended.synchronize()
        return self.began.elapsed_time(self.ended) / 1000


class DeviceStep:
    """One template's step on one workspace: the buffers and state it runs on, and its CUDA graph."""

    def __init__(self, workspace: Workspace, tree: DraftTree, k: int, vocab_size: int):
        device, n = workspace.device, tree.size
        self.workspace, self.tree, self.k, self.vocab_size = workspace, tree, k, vocab_size
        to = dict(device=device)
        self.parents, self.ranks = tree.parents.clamp(min=0).to(**to), tree.ranks.clamp(min=0).to(**to)
        self.depths, self.ancestors = tree.depths.to(**to), tree.ancestors.to(**to)
        self.layers = [tuple(part.to(**to) for part in layer) for layer in tree.layers]
        paths = path_nodes(tree)
        self.paths = paths.to(**to)
        self.path_lists = [row[: depth + 1] for row, depth in zip(paths.tolist(), tree.depths.tolist())]
        self.offsets, self.ahead_of_root = torch.arange(n, **to), torch.arange(tree.depth + 1, **to)
        self.later = torch.ones(n, n, dtype=torch.bool, **to).triu(1)  # later[i, j]: node j comes after i
        minimum = torch.finfo(workspace.dtype).min
        self.visible = torch.zeros(n, n, dtype=workspace.dtype, **to).masked_fill_(~self.ancestors, minimum)
        self.key_slots = torch.arange(workspace.cache.capacity, **to)
        self.mask = torch.empty(1, 1, n, workspace.cache.capacity, dtype=workspace.dtype, **to)
        # The matrix rows, one spare row (`vocab_size`) for the writes a step discards.
        self.table = torch.zeros(vocab_size + 1, k, dtype=torch.long, **to)
        self.probs = torch.zeros(vocab_size + 1, k, **to)
        self.filled = torch.zeros(vocab_size + 1, dtype=torch.bool, **to)
        self.touched = torch.zeros(vocab_size + 1, dtype=torch.bool, **to)  # rows this request wrote
        self.length, self.root, self.room = (torch.zeros((), dtype=torch.long, **to) for _ in range(3))
        self.done = torch.zeros((), dtype=torch.bool, **to)
        self.eos = torch.full((MAX_EOS,), -1, dtype=torch.long, **to)
        self.capture = device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.host: list[tuple[torch.Tensor, torch.Tensor]] = []  # on CUDA: two pinned read-back buffers, in turn
        self.launches = 0

    # --- one request ---------------------------------------------------------------------------------

    def begin(self, matrix: AdjacencyMatrix, length: int, root: int, room: int, eos: Sequence[int]) -> None:
        """Load the matrix rows and the state after the prefill: `length` committed positions, `root` the
        last token, `room` tokens still allowed."""
        vocab = self.vocab_size
        self.table[:vocab].copy_(matrix.table)
        self.probs[:vocab].copy_(matrix.probs)
        self.filled[:vocab].copy_(matrix.filled)
        self.touched.zero_()
        self.eos.fill_(-1)
        self.eos[: len(eos)] = torch.tensor(list(eos), dtype=torch.long)
        for state, value in ((self.length, length), (self.root, root), (self.room, room), (self.done, False)):
            state.fill_(value)

    def end(self, matrix: AdjacencyMatrix) -> None:
        """Write the rows this request changed back to the matrix."""
        rows = self.touched[: self.vocab_size].nonzero().flatten()
        host = rows.cpu()
        matrix.table[host], matrix.probs[host] = self.table[rows].cpu(), self.probs[rows].cpu()
        matrix.filled[host] = True

    # --- the step, as tensor operations ----------------------------------------------------------------

    def _step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft, verify, accept and recycle; returns (ints, floats) to read back (see `unpack`)."""
        tokens = self.root.expand(self.tree.size).clone()
        for nodes, parents, ranks in self.layers:
            tokens.index_copy_(0, nodes, self.table[tokens[parents], ranks])
        drafted = self.probs[tokens[self.parents[1:]], self.ranks[1:]]
        start = self.length.clone()
        logits = self._verify(tokens, start)
        choices = logits.argmax(-1)
        best, count, finished = self._accept(tokens, choices, start)
        was_done = self.done.clone()
        top, chances, old, was_filled = self._recycle(tokens, logits, was_done)
        self.root.copy_(choices[best])
        self.length.copy_(start + count)
        self.room.sub_(count)
        self.done.logical_or_(finished)
        ints = torch.cat([tokens, choices, best.view(1), top.flatten(), old.flatten(), was_filled.long()])
        return ints, torch.cat([chances.flatten(), drafted])

    def _verify(self, tokens: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Logits of the tree behind `start` committed positions, its keys and values written after them."""
        cache, minimum = self.workspace.cache, torch.finfo(self.workspace.dtype).min
        slots = start + self.offsets
        mask = self.mask[0, 0]
        mask.fill_(minimum).masked_fill_(self.key_slots < start, 0)
        mask.index_copy_(1, slots, self.visible)
        cache.slots = slots
        return forward(self.workspace.model, cache, tokens, start + self.depths, self.mask, greedy=True)

    def _accept(self, tokens: torch.Tensor, choices: torch.Tensor, start: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first of the deepest nodes whose path the model agrees with, the tokens that emits and whether
        that ends the request; the path's keys and values move to the committed positions after `start`."""
        correct = tokens == choices[self.parents]
        correct[0] = True
        agreed = ~(self.ancestors & ~correct).any(1)
        best = torch.argmax(agreed * (self.depths + 1))
        depth, path = self.depths[best], self.paths[best]
        kv = self.workspace.cache.kv
        kv.index_copy_(4, start + self.ahead_of_root, kv.index_select(4, start + path))
        after = self.paths[best, (self.ahead_of_root + 1).clamp(max=self.tree.depth)]
        emitted = torch.where(self.ahead_of_root < depth, tokens[after], choices[best])
        ends = (emitted[:, None] == self.eos).any(1) & (self.ahead_of_root <= depth)
        count = depth + 1
        return best, count, ends.any() | (count >= self.room)

    def _recycle(self, tokens: torch.Tensor, logits: torch.Tensor, was_done: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each node's row overwritten with its top-k (as `AdjacencyMatrix.write`); nothing once done."""
        rows = logits.float()
        top = rows.topk(self.k, dim=-1)
        chances = (top.values - rows.logsumexp(-1, keepdim=True)).exp()
        old, was_filled = self.table[tokens], self.filled[tokens]
        target = self.targets(tokens, was_done)
        self.table.index_copy_(0, target, top.indices)
        self.probs.index_copy_(0, target, chances)
        self.filled.index_fill_(0, target, True)
        self.touched.index_fill_(0, target, True)
        return top.indices, chances, old, was_filled

    def targets(self, tokens: torch.Tensor, was_done: torch.Tensor) -> torch.Tensor:
        """The row each node writes: its token's, unless the token occurs again later in the tree or the
        request was over; those write the spare row, so no two writes of a row race on a GPU."""
        repeated = ((tokens[:, None] == tokens[None, :]) & self.later).any(1)
        return torch.where(repeated | was_done, self.vocab_size, tokens)

    # --- launching and reading back --------------------------------------------------------------------

    def launch(self) -> _Launch:
        """Queue one step (on CUDA: without waiting for it); its results follow to the host."""
        if self.workspace.device.type != "cuda":
            began = time.perf_counter()
            ints, floats = self._step()
            return _Launch(ints, floats, began, time.perf_counter())
        began = torch.cuda.Event(enable_timing=True)
        began.record()
        ints, floats = self._replay() if self.capture else self._step()
        if not self.host:
            self.host = [(torch.empty_like(ints, device="cpu").pin_memory(),
                          torch.empty_like(floats, device="cpu").pin_memory()) for _ in range(2)]
        host_ints, host_floats = self.host[self.launches % 2]
        self.launches += 1
        host_ints.copy_(ints, non_blocking=True)
        host_floats.copy_(floats, non_blocking=True)
        ended = torch.cuda.Event(enable_timing=True)
        ended.record()
        return _Launch(host_ints, host_floats, began, ended)

    def _replay(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is None:
            try:
                self._capture()
            except RuntimeError as err:  # a model whose step cannot be captured still decodes, eagerly
                log.warning("CUDA graph capture of the step failed, running it eagerly: %s",
                            str(err).splitlines()[0])
                self.capture = False
                return self._step()
        self.graph.replay()
        return self.outputs

    def _capture(self) -> None:
        """Warm up on a side stream, capture, and put the state back as it was before the warm-up (a step
        changes rows and state; the cache it writes lies past the committed positions)."""
        state = (self.table, self.probs, self.filled, self.touched, self.length, self.root, self.room, self.done)
        saved = [tensor.clone() for tensor in state]
        side = torch.cuda.Stream(self.workspace.device)
        side.wait_stream(torch.cuda.current_stream(self.workspace.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream(self.workspace.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                outputs = self._step()
        finally:
            for tensor, before in zip(state, saved):
                tensor.copy_(before)
        self.graph, self.outputs = graph, outputs

    def unpack(self, launch: _Launch, drafter: TemplateDrafter, matrix: AdjacencyMatrix, request: Request,
               index: int) -> Step:
        """The step record of a launched step, built on the host as `tr.decoding.token_recycling` builds it."""
        n, k = self.tree.size, self.k
        ints, floats = launch.ints.tolist(), launch.floats.tolist()
        tokens, choices, best = ints[:n], ints[n : 2 * n], ints[2 * n]
        top, old = ints[2 * n + 1 : 2 * n + 1 + n * k], ints[2 * n + 1 + n * k : 2 * n + 1 + 2 * n * k]
        was_filled = ints[2 * n + 1 + 2 * n * k :]
        draft = drafter.record(tokens, floats[n * k :], matrix.stats)
        path = self.path_lists[best]
        emitted, finished = clip([tokens[i] for i in path[1:]] + [choices[best]], request.room, request.eos)
        rows = [RowWrite(token, old[i * k : (i + 1) * k], top[i * k : (i + 1) * k], bool(was_filled[i]))
                for token, i in latest(tokens).items()]
        step = Step(index, emitted, draft, choices, path, rows, finished=finished)
        matrix.stats.observe(step)
        return step


def device_step(workspace: Workspace, tree: DraftTree, k: int, vocab_size: int) -> DeviceStep:
    """The workspace's step for this template, built (and on CUDA captured) once, then reused by requests."""
    key = (tuple(tree.paths), k, vocab_size)
    if key not in workspace.steps:
        workspace.steps[key] = DeviceStep(workspace, tree, k, vocab_size)
    return workspace.steps[key]


@torch.inference_mode()  # per step, as for `tr.decoding.token_recycling`
def resident_token_recycling(
    model: torch.nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    matrix: AdjacencyMatrix,
    drafter: TemplateDrafter,
    eos_ids: Sequence[int] = (),
    ahead: bool | None = None,
) -> Iterator[Step]:
    """Greedy Token Recycling over `drafter`'s template with every step on the model's device: the tokens,
    records and matrix rows of `tr.decoding.token_recycling` (pair rows aside). With `ahead` (default: on
    CUDA), each step is queued before the host reads the one before."""
    ids = check_recycling(model, prompt_ids, max_new_tokens, matrix)
    if len(set(eos_ids)) > MAX_EOS:
        raise ValueError(f"a request may name at most {MAX_EOS} end-of-sequence ids, got {len(set(eos_ids))}")
    device, size = ids.device, drafter.max_size
    ahead = device.type == "cuda" if ahead is None else ahead
    # Room for a step queued after the last (its tree behind a path that overran the room).
    passes = GraphedPasses(model, len(ids) + max_new_tokens + 2 * size)
    request = Request(device, passes, Clock(device), GREEDY, None, set(eos_ids), max_new_tokens)
    try:
        step = prefill(request, list(prompt_ids), ids, None, False)
        yield request.totals.record(step, request.clock)
        if step.finished:
            return
        runner = device_step(passes.workspace, drafter.tree, matrix.k, matrix.vocab_size)
        runner.begin(matrix, passes.length, step.tokens[-1], request.room, sorted(request.eos))
        try:
            yield from _steps(runner, drafter, matrix, request, ahead)
        finally:
            runner.end(matrix)
    finally:
        passes.close()


def _steps(runner: DeviceStep, drafter: TemplateDrafter, matrix: AdjacencyMatrix, request: Request,
           ahead: bool) -> Iterator[Step]:
    """Each interval launches a step (two at the start with `ahead`), reads one back and records it, so
    the device's work always falls inside a counted interval and the consumer's time outside."""
    in_flight: deque[_Launch] = deque()
    index = 0
    while True:
        request.clock.resume()
        if not in_flight:
            in_flight.append(runner.launch())
        if ahead:
            in_flight.append(runner.launch())
        launch = in_flight.popleft()
        request.clock.forward_s = launch.wait()
        index += 1
        step = runner.unpack(launch, drafter, matrix, request, index)
        yield request.totals.record(step, request.clock)
        if step.finished:
            return
