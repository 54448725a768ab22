"""Greedy decoding with the whole step on the model's device, the next step queued while the host reads one.

`tr.decoding` builds each draft in Python and waits for the device after every pass: on a GPU, where a
graphed pass of a small model takes about a millisecond, the host's work is the step. Here a step of
greedy Token Recycling over a template is tensor operations only, on the device:

1. draft: the template filled from the device's copy of the matrix rows (`DeviceRows`), one gather per layer;
   with a size below the template's, its most probable nodes kept (`tr.trees.most_probable`: a sort);
2. verify: one pass over a `tr.device.graphs.Workspace`'s slot cache, its mask built on the device from
   the committed length, which never leaves the device;
3. accept: the deepest node whose path the model agrees with; the path's cache entries move into place
   with one gather as long as the template is deep;
4. recycle: every node's row gets its top-k; a token drafted twice keeps its last occurrence (the
   others write to a spare row, so no two writes race).

Plain decoding is the same step over a tree of the root alone, with no rows: both decoders get the same
device loop, so their ratio measures the method, not the loop. One read back per step brings the tokens
(and the draft and rows) to the host, which builds the records `tr.decoding` yields while the device runs
the step after (`ahead`). The device also knows when the request is over (an EOS, or no room left), so
the step queued after the last one changes no row. On CUDA a step is one CUDA graph, captured on first use.

The rows live on the device for the request and go back to the matrix when it ends (those it wrote);
pair rows, which templates never read, are not kept. A record's forward time is the device's time for
its whole step (CUDA events; off CUDA the call's), its overhead the rest of the interval it was read in.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..decoding import Clock, Request, checked_ids, clip, prefill
from ..drafts import TemplateDrafter
from ..matrix import AdjacencyMatrix, latest, top_candidates
from ..passes import additive, forward
from ..records import RowWrite, Step
from ..sampling import GREEDY
from ..trees import DraftTree, Subtree, path_nodes, subtree
from .fixed import FIXED_ROWS, fixed_shapes
from .graphs import GraphedPasses, Workspace, capture_graph


MAX_EOS = 16  # end-of-sequence ids a request may name (a model has one to three)
ROOT_ONLY = DraftTree.from_paths([])  # plain decoding's "tree"


class DeviceRows:
    """A matrix's rows on the device for one request at a time, with a spare row (`vocab_size`) for writes
    a step discards, and which rows the request wrote."""

    def __init__(self, vocab_size: int, k: int, size: int, device: torch.device):
        self.vocab_size, self.k = vocab_size, k
        self.table = torch.zeros(vocab_size + 1, k, dtype=torch.long, device=device)
        self.probs = torch.zeros(vocab_size + 1, k, device=device)
        self.filled = torch.zeros(vocab_size + 1, dtype=torch.bool, device=device)
        self.touched = torch.zeros(vocab_size + 1, dtype=torch.bool, device=device)
        self.later = torch.ones(size, size, dtype=torch.bool, device=device).triu(1)  # node j comes after i

    def load(self, matrix: AdjacencyMatrix) -> None:
        vocab = self.vocab_size
        self.table[:vocab].copy_(matrix.table)
        self.probs[:vocab].copy_(matrix.probs)
        self.filled[:vocab].copy_(matrix.filled)
        self.touched.zero_()

    def store(self, matrix: AdjacencyMatrix) -> None:
        """Write the rows this request changed back to the matrix."""
        rows = self.touched[: self.vocab_size].nonzero().flatten()
        host = rows.cpu()
        matrix.table[host], matrix.probs[host] = self.table[rows].cpu(), self.probs[rows].cpu()
        matrix.filled[host] = True

    def write(self, tokens: torch.Tensor, logits: torch.Tensor, was_done: torch.Tensor) -> list[torch.Tensor]:
        """Each node's row overwritten with its top-k (as `AdjacencyMatrix.write`), nothing once the request
        was over; returns what the records show: new rows, their probabilities, old rows, whether filled."""
        candidates, chances = top_candidates(logits, self.k)
        old, was_filled = self.table[tokens], self.filled[tokens]
        target = self.targets(tokens, was_done)
        self.table.index_copy_(0, target, candidates)
        self.probs.index_copy_(0, target, chances)
        self.filled.index_fill_(0, target, True)
        self.touched.index_fill_(0, target, True)
        return [candidates, chances, old, was_filled]

    def targets(self, tokens: torch.Tensor, was_done: torch.Tensor) -> torch.Tensor:
        """The row each node writes: its token's, unless the token occurs again later in the tree or the
        request was over; those write the spare row, so no two writes of a row race on a GPU."""
        repeated = ((tokens[:, None] == tokens[None, :]) & self.later).any(1)
        return torch.where(repeated | was_done, self.vocab_size, tokens)


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
    """One tree's step on one workspace (`rows` None: plain decoding): buffers, state and its CUDA graph.
    With a `size` below the tree's, each step drafts the `size` most probable nodes of the tree, as
    `TemplateDrafter` does."""

    def __init__(self, workspace: Workspace, tree: DraftTree, rows: DeviceRows | None, fixed: bool = False,
                 size: int | None = None):
        device, capacity = workspace.device, workspace.cache.capacity
        n = tree.size if size is None else min(size, tree.size)
        if fixed and n > FIXED_ROWS:
            raise ValueError(f"fixed shapes hold trees of up to {FIXED_ROWS} nodes, not {n}")
        self.pass_rows = FIXED_ROWS if fixed else n  # padded rows see only themselves
        self.workspace, self.rows, self.fixed, self.size = workspace, rows, fixed, n
        self.tree, self.paths = tree.to(device), path_nodes(tree).to(device)
        to = dict(device=device)
        self.whole = None if n < tree.size else subtree(self.tree, self.paths, torch.arange(n, **to))
        self.offsets, self.ahead_of_root = torch.arange(self.pass_rows, **to), torch.arange(tree.depth + 1, **to)
        self.padding = torch.zeros(self.pass_rows - n, dtype=torch.long, **to)
        self.visible = None if self.whole is None else self._visible(self.whole.ancestors)
        self.key_slots = torch.arange(capacity, **to)
        self.mask = torch.empty(1, 1, self.pass_rows, capacity, dtype=workspace.dtype, **to)
        self.length, self.root, self.room = (torch.zeros((), dtype=torch.long, **to) for _ in range(3))
        self.done = torch.zeros((), dtype=torch.bool, **to)
        self.eos = torch.full((MAX_EOS,), -1, dtype=torch.long, **to)
        self.capture = device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.host: list[tuple[torch.Tensor, torch.Tensor]] = []  # on CUDA: two pinned read-back buffers, in turn
        self.launches = 0

    def begin(self, length: int, root: int, room: int, eos: Sequence[int]) -> None:
        """The state after the prefill: `length` committed positions, `root` the last token, `room` tokens
        still allowed, the request's end-of-sequence ids."""
        self.eos.fill_(-1)
        self.eos[: len(eos)] = torch.tensor(list(eos), dtype=torch.long)
        for state, value in ((self.length, length), (self.root, root), (self.room, room), (self.done, False)):
            state.fill_(value)

    # --- the step, as tensor operations ----------------------------------------------------------------

    def _step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft, verify, accept and recycle; returns (ints, floats) to read back (see `unpack`)."""
        tokens, drafted, chosen = self._draft()
        start = self.length.clone()
        logits = self.verify(tokens, start, chosen)
        choices = logits.argmax(-1)
        best, count, finished = self._accept(tokens, choices, start, chosen)
        ints, floats = [tokens, choices, best], [drafted]
        if self.whole is None:
            ints.append(chosen.nodes)
        if self.rows is not None:
            top, chances, old, was_filled = self.rows.write(tokens, logits, self.done.clone())
            ints += [top.flatten(), old.flatten(), was_filled.long()]
            floats.insert(0, chances.flatten())
        self.root.copy_(choices[best][0])
        self.length.copy_(start + count)
        self.room.sub_(count)
        self.done.logical_or_(finished)
        return torch.cat(ints), torch.cat(floats)

    def _draft(self) -> tuple[torch.Tensor, torch.Tensor, Subtree]:
        """The drafted nodes' tokens (the tree filled breadth-first from the rows, then its most probable
        nodes where it chooses), the probability each had in its parent's row, and the nodes."""
        tree = self.tree
        if self.rows is None:
            return self.root.view(1).clone(), torch.zeros(0, device=self.root.device), self.whole
        tokens = tree.fill(self.root, self.rows.table)
        chances = tree.chances(tokens, self.rows.probs)
        chosen = self.whole or subtree(tree, self.paths, tree.choose(chances, self.size))
        return tokens[chosen.nodes], chances[chosen.nodes][1:], chosen

    def _visible(self, ancestors: torch.Tensor) -> torch.Tensor:
        """The additive mask among a pass's rows: the nodes see their ancestors, padded rows only themselves."""
        n = len(ancestors)
        sees = torch.eye(self.pass_rows, dtype=torch.bool, device=ancestors.device)
        sees[:n, :n] = ancestors
        return additive(sees, self.workspace.dtype)

    def verify(self, tokens: torch.Tensor, start: torch.Tensor, chosen: Subtree | None = None) -> torch.Tensor:
        """Logits of the drafted nodes (`chosen`; by default the whole tree) behind `start` committed
        positions, their keys and values written after them."""
        chosen = chosen or self.whole
        cache, minimum = self.workspace.cache, torch.finfo(self.workspace.dtype).min
        slots = start + self.offsets
        mask = self.mask[0, 0]
        mask.fill_(minimum).masked_fill_(self.key_slots < start, 0)
        mask.index_copy_(1, slots, self._visible(chosen.ancestors) if self.visible is None else self.visible)
        cache.slots = slots
        ids, positions = torch.cat([tokens, self.padding]), start + torch.cat([chosen.depths, self.padding])
        model = self.workspace.model
        with fixed_shapes(model) if self.fixed else nullcontext():
            # A new view of the mask per pass: the CPU's invariant attention keeps a pass's plan by its mask.
            return forward(model, cache, ids, positions, self.mask[:], greedy=True)[: self.size]

    def _accept(self, tokens: torch.Tensor, choices: torch.Tensor, start: torch.Tensor, chosen: Subtree
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first of the deepest nodes whose path the model agrees with, the tokens that emits and whether
        that ends the request; the path's keys and values move to the committed positions after `start`."""
        correct = tokens == choices[chosen.parents]
        correct[0] = True
        agreed = ~(chosen.ancestors & ~correct).any(1)
        # Indexed with a one-element tensor: a zero-dimensional index is read on the host, which a CUDA graph forbids.
        best = torch.argmax(agreed * (chosen.depths + 1)).view(1)
        depth, path = chosen.depths[best][0], chosen.paths[best][0]
        if self.tree.depth:
            kv = self.workspace.cache.kv
            kv.index_copy_(4, start + self.ahead_of_root, kv.index_select(4, start + path))
        after = path[(self.ahead_of_root + 1).clamp(max=self.tree.depth)]
        emitted = torch.where(self.ahead_of_root < depth, tokens[after], choices[best][0])
        ends = (emitted[:, None] == self.eos).any(1) & (self.ahead_of_root <= depth)
        count = depth + 1
        return best, count, ends.any() | (count >= self.room)

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
            # The warm-up steps change rows and state (the cache they write lies past the committed
            # positions): put those back as they were, captured or not.
            state = [self.length, self.root, self.room, self.done]
            if self.rows is not None:
                state += [self.rows.table, self.rows.probs, self.rows.filled, self.rows.touched]
            saved = [tensor.clone() for tensor in state]
            try:
                captured = capture_graph(self._step, self.workspace.device)
            finally:
                for tensor, before in zip(state, saved):
                    tensor.copy_(before)
            if captured is None:
                self.capture = False
                return self._step()
            self.graph, self.outputs = captured
        self.graph.replay()
        return self.outputs

    def unpack(self, launch: _Launch, request: Request, index: int, drafter: TemplateDrafter | None = None,
               matrix: AdjacencyMatrix | None = None) -> Step:
        """The record of a launched step, built on the host as `tr.decoding` builds it."""
        n = self.size
        ints = launch.ints.tolist()
        tokens, choices, best, rest = ints[:n], ints[n : 2 * n], ints[2 * n], ints[2 * n + 1 :]
        nodes, rest = (list(range(n)), rest) if self.whole is not None else (rest[:n], rest[n:])
        if self.rows is None:
            emitted, finished = clip([choices[0]], request.room, request.eos)
            return Step(index, emitted, accepted=[0], finished=finished)
        k, floats = self.rows.k, launch.floats.tolist()
        draft = drafter.record(nodes, tokens, floats[n * k :], matrix.stats)
        path = [best]
        while path[-1]:
            path.append(draft.parents[path[-1]])
        path.reverse()
        emitted, finished = clip([tokens[i] for i in path[1:]] + [choices[best]], request.room, request.eos)
        top, old, was_filled = rest[: n * k], rest[n * k : 2 * n * k], rest[2 * n * k :]
        rows = [RowWrite(token, old[i * k : (i + 1) * k], top[i * k : (i + 1) * k], bool(was_filled[i]))
                for token, i in latest(tokens).items()]
        step = Step(index, emitted, draft, choices, path, rows, finished=finished)
        matrix.stats.observe(step)
        return step


def reserved_positions(prompt_tokens: int, max_new_tokens: int, drafted: int, fixed: bool) -> int:
    """Cache positions a request reserves, with room for a step queued after the last (its pass of
    `drafted` nodes behind a path that overran the room). In fixed shapes every pass has `FIXED_ROWS` rows
    whatever it drafts, and so plain decoding and Token Recycling reserve alike: their workspaces, whose
    capacity is every pass's key count, have one size, and so their passes one shape."""
    return prompt_tokens + max_new_tokens + 2 * (FIXED_ROWS if fixed else drafted)


def device_step(workspace: Workspace, tree: DraftTree, matrix: AdjacencyMatrix | None, fixed: bool,
                size: int | None = None) -> DeviceStep:
    """The workspace's step for this tree (and size, matrix shape and shapes), built (and on CUDA captured)
    once, then reused by later requests."""
    size = tree.size if size is None else min(size, tree.size)
    shape = (matrix.vocab_size, matrix.k) if matrix is not None else None
    key = (tuple(tree.paths), size, shape, fixed)
    if key not in workspace.steps:
        rows = DeviceRows(*shape, size, workspace.device) if shape else None
        workspace.steps[key] = DeviceStep(workspace, tree, rows, fixed, size)
    return workspace.steps[key]


@torch.inference_mode()  # per step, as for `tr.decoding.autoregressive`
def resident_autoregressive(model: torch.nn.Module, prompt_ids: Sequence[int], max_new_tokens: int,
                            eos_ids: Sequence[int] = (), ahead: bool | None = None, fixed: bool = False
                            ) -> Iterator[Step]:
    """Greedy plain decoding with every step on the model's device: `tr.decoding.autoregressive`'s tokens
    and records. With `ahead` (default: on CUDA), each step is queued before the host reads the one before;
    with `fixed`, every pass has the shapes of `tr.device.fixed` (batch invariance without the CPU's kernels)."""
    yield from _decode(model, prompt_ids, max_new_tokens, None, None, eos_ids, ahead, fixed)


@torch.inference_mode()
def resident_token_recycling(model: torch.nn.Module, prompt_ids: Sequence[int], max_new_tokens: int,
                             matrix: AdjacencyMatrix, drafter: TemplateDrafter, eos_ids: Sequence[int] = (),
                             ahead: bool | None = None, fixed: bool = False) -> Iterator[Step]:
    """Greedy Token Recycling over `drafter`'s template with every step on the model's device: the tokens,
    records and matrix rows of `tr.decoding.token_recycling` (pair rows aside); `ahead` and `fixed` as above."""
    yield from _decode(model, prompt_ids, max_new_tokens, matrix, drafter, eos_ids, ahead, fixed)


def _decode(model: torch.nn.Module, prompt_ids: Sequence[int], max_new_tokens: int, matrix: AdjacencyMatrix | None,
            drafter: TemplateDrafter | None, eos_ids: Sequence[int], ahead: bool | None, fixed: bool
            ) -> Iterator[Step]:
    ids = checked_ids(model, prompt_ids, max_new_tokens, matrix)
    eos = set(eos_ids)
    if len(eos) > MAX_EOS:
        raise ValueError(f"a request may name at most {MAX_EOS} end-of-sequence ids, got {len(eos)}")
    device, tree = ids.device, drafter.tree if drafter else ROOT_ONLY
    size = drafter.max_size if drafter else 1
    passes = GraphedPasses(model, reserved_positions(len(ids), max_new_tokens, size, fixed))
    request = Request(device, passes, Clock(device), GREEDY, None, eos, max_new_tokens)
    try:
        step = prefill(request, list(prompt_ids), ids, None, False)
        yield request.totals.record(step, request.clock)
        if step.finished:
            return
        runner = device_step(passes.workspace, tree, matrix, fixed, size)
        runner.begin(passes.length, step.tokens[-1], request.room, sorted(eos))
        if runner.rows is not None:
            runner.rows.load(matrix)
        try:
            yield from _steps(runner, request, device.type == "cuda" if ahead is None else ahead, drafter, matrix)
        finally:
            if runner.rows is not None:
                runner.rows.store(matrix)
    finally:
        passes.close()


def _steps(runner: DeviceStep, request: Request, ahead: bool, drafter: TemplateDrafter | None = None,
           matrix: AdjacencyMatrix | None = None) -> Iterator[Step]:
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
        step = runner.unpack(launch, request, index, drafter, matrix)
        yield request.totals.record(step, request.clock)
        if step.finished:
            return
