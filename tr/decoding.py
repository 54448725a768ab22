"""Plain autoregressive decoding, Token Recycling and prompt lookup decoding, as iterators of step records.

Both share one machinery: `tr.passes` (one request's forward passes over its KV cache, with explicit
positions and, for trees, which nodes each node sees; eager, or CUDA graphs) and `Clock` (forward time
vs. the rest, synchronised on CUDA). A step of Token Recycling:

1. draft: a drafter (`tr.drafts`) builds a tree rooted at the last committed token from the adjacency
   matrix: the paper's fixed template filled breadth-first, or a dynamic best-first tree;
2. verify: one forward pass over the tree with tree attention;
3. accept: the longest root path whose every token is the model's own choice at its parent, plus
   the model's choice after it (the bonus token, always correct);
4. recycle: overwrite the row of every token in the pass with its new top-k.

Prompt lookup decoding is the same loop with a drafter that reads no matrix
(`tr.drafts.PromptLookupDrafter`) and no matrix to recycle into: the same passes, clocks and acceptance,
so the two methods differ only in where drafts come from.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .drafts import Drafter
from .matrix import AdjacencyMatrix
from .passes import EagerPasses, Passes, PassesFactory
from .records import Draft, RowWrite, Step
from .sampling import GREEDY, Sampling, choose
from .trees import ancestor_mask


class Clock:
    """Splits a step's wall time into forward pass and everything else; syncs so CUDA time is real.
    `timer` is the time source (seconds): tests pass a fake one."""

    def __init__(self, device: torch.device, timer: Callable[[], float] = time.perf_counter):
        self.cuda = device.type == "cuda"
        self.timer = timer
        self.forward_s = 0.0
        self.start = self.now()

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return self.timer()

    def timed(self, passes: Passes, *args, **kwargs) -> torch.Tensor:
        """One forward pass (`passes(*args, **kwargs)`), its time counted as forward time."""
        begin = self.now()
        logits = passes(*args, **kwargs)
        self.forward_s += self.now() - begin
        return logits

    def split(self) -> tuple[float, float]:
        """(forward, overhead) seconds since the last split or resume. Forward time counted for work that
        partly ran before (a step queued ahead) is capped at the interval, so the two always add up to it."""
        end = self.now()
        forward_s = min(self.forward_s, end - self.start)
        overhead_s = end - self.start - forward_s
        self.start, self.forward_s = end, 0.0
        return forward_s, overhead_s

    def resume(self) -> None:
        """Restart after a yield: what the consumer did meanwhile is not this decoder's time."""
        self.start, self.forward_s = self.now(), 0.0


def clip(tokens: list[int], room: int, eos: set[int]) -> tuple[list[int], bool]:
    """Cut a step's tokens after the first EOS and to the room left; say whether decoding is over."""
    for i, token in enumerate(tokens[:room]):
        if token in eos:
            return tokens[: i + 1], True
    return tokens[:room], len(tokens) >= room


class _Totals:
    def __init__(self) -> None:
        self.tokens = 0
        self.forward_s = 0.0
        self.overhead_s = 0.0

    def record(self, step: Step, clock: Clock) -> Step:
        step.forward_s, step.overhead_s = clock.split()
        self.tokens += len(step.tokens)
        self.forward_s += step.forward_s
        self.overhead_s += step.overhead_s
        step.total_tokens, step.total_forward_s, step.total_overhead_s = self.tokens, self.forward_s, self.overhead_s
        return step


def _check_request(prompt_ids: Sequence[int], max_new_tokens: int, vocab_size: int) -> torch.Tensor:
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    ids = torch.as_tensor(list(prompt_ids), dtype=torch.long)
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(f"prompt token ids must lie in 0..{vocab_size - 1}")
    return ids


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _vocab_size(model: torch.nn.Module) -> int:
    return model.get_output_embeddings().weight.shape[0]


def checked_ids(model: torch.nn.Module, prompt_ids: Sequence[int], max_new_tokens: int,
                matrix: AdjacencyMatrix | None = None) -> torch.Tensor:
    """The prompt's ids on the model's device, once the request (and a matrix) are checked against the model."""
    if matrix is not None and matrix.vocab_size != _vocab_size(model):
        raise ValueError(f"matrix has {matrix.vocab_size} rows but the model has {_vocab_size(model)} logits")
    return _check_request(prompt_ids, max_new_tokens, _vocab_size(model)).to(_device(model))


# As a decorator, inference mode holds only while a step is computed: a `with` block spanning the
# yields would leave it on in the caller between steps (its tensors then become inference tensors).
@torch.inference_mode()
def autoregressive(
    model: torch.nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    eos_ids: Sequence[int] = (),
    passes: PassesFactory = EagerPasses,
) -> Iterator[Step]:
    """Plain decoding, one token per forward pass: the baseline. `passes` runs the forward passes."""
    ids = checked_ids(model, prompt_ids, max_new_tokens)
    device = ids.device
    eos, generator, totals = set(eos_ids), sampling.generator(device), _Totals()
    run = passes(model, len(ids) + max_new_tokens)
    try:
        clock = Clock(device)
        greedy = sampling.greedy
        logits = clock.timed(run, ids, torch.arange(len(ids), device=device), last_only=True, greedy=greedy)
        token = choose(logits[-1], sampling, generator)
        emitted, finished = clip([int(token)], max_new_tokens, eos)
        yield totals.record(Step(0, emitted, finished=finished), clock)
        index = 0
        while not finished:
            clock.resume()
            index += 1
            position = torch.tensor([run.length], device=device)
            logits = clock.timed(run, token.view(1), position, greedy=greedy)
            token = choose(logits[-1], sampling, generator)
            emitted, finished = clip([int(token)], max_new_tokens - totals.tokens, eos)
            yield totals.record(Step(index, emitted, accepted=[0], finished=finished), clock)
    finally:
        run.close()


@dataclass(frozen=True)
class TreeBuffers:
    """What verification needs of a tree's shape, as tensors on the CPU."""

    parents: torch.Tensor  # (n,) parent index, the root its own parent (0)
    depths: torch.Tensor  # (n,) position offset behind the cache
    ancestors: torch.Tensor  # (n, n) bool: ancestors[i, j] when j is i or an ancestor of i


@functools.lru_cache(maxsize=8)
def tree_buffers(parents: tuple[int, ...]) -> TreeBuffers:
    """Buffers of one tree shape, built once: a template's on its first step, then reused every step."""
    depths = [0]
    for parent in parents[1:]:
        depths.append(depths[parent] + 1)
    return TreeBuffers(torch.tensor([max(p, 0) for p in parents]), torch.tensor(depths),
                       ancestor_mask(list(parents), max(depths)))


@dataclass
class Verdict:
    """What verification found: the accepted path and the token after it."""

    path: list[int]  # accepted node indices, root first
    choices: list[int]  # the model's token after each node (-1: not drawn)
    bonus: int  # the model's token after the last accepted node: the next root


class Picker(Protocol):
    """Another rule for the model's token than a `Sampling`: one that reads the text before it, such as
    transformers' logits processors (`tr.hf`). Verification then walks the tree node by node, as sampling does."""

    def __call__(self, logits: torch.Tensor, before: list[int]) -> int:
        """The token after `before` (the prompt, the tokens emitted, the drafted path) from its logits (vocab,)."""
        ...


@dataclass
class Request:
    """What every step of one request shares."""

    device: torch.device
    passes: Passes
    clock: Clock
    sampling: Sampling
    generator: torch.Generator | None
    eos: set[int]
    max_new_tokens: int
    totals: _Totals = field(default_factory=_Totals)
    picker: Picker | None = None  # when set, it picks every token instead of `sampling`
    text: list[int] = field(default_factory=list)  # the prompt and the tokens emitted so far, for `picker`

    @property
    def room(self) -> int:
        """Tokens this request may still emit."""
        return self.max_new_tokens - self.totals.tokens

    @property
    def greedy(self) -> bool:
        """Whether every token is the argmax of the raw logits: passes may then be exact only there."""
        return self.picker is None and self.sampling.greedy

    def pick(self, logits: torch.Tensor, drafted: Sequence[int] = ()) -> int:
        """The model's token from one row of logits, `drafted` being the tree's tokens between the text and it."""
        if self.picker is not None:
            return self.picker(logits, [*self.text, *drafted])
        return int(choose(logits, self.sampling, self.generator))


def _greedy_path(tokens: torch.Tensor, tree: TreeBuffers, logits: torch.Tensor) -> Verdict:
    """The deepest node whose path the model agrees with, vectorised on the CPU beside the draft."""
    choices = logits.argmax(-1).cpu()  # the step's one wait for the device
    correct = tokens == choices[tree.parents]
    correct[0] = True
    ok = ~(tree.ancestors & ~correct).any(1)
    best = int(torch.argmax(ok * (tree.depths + 1)))  # first of the deepest fully correct nodes
    path = tree.ancestors[best].nonzero().flatten()
    choice_list = choices.tolist()
    return Verdict(path.tolist(), choice_list, choice_list[best])


def _sampled_path(request: Request, parents: list[int], tokens: list[int], logits: torch.Tensor) -> Verdict:
    """Walk down the tree drawing from the model at each node; stop at the first draw no child carries."""
    children: list[list[int]] = [[] for _ in parents]
    for node, parent in enumerate(parents[1:], start=1):
        children[parent].append(node)
    node, path, choices = 0, [0], [-1] * len(parents)
    while True:
        drawn = request.pick(logits[node], [tokens[i] for i in path[1:]])
        choices[node] = drawn
        child = next((c for c in children[node] if tokens[c] == drawn), None)
        if child is None:
            return Verdict(path, choices, drawn)
        node = child
        path.append(node)


def prefill(request: Request, prompt: list[int], ids: torch.Tensor, matrix: AdjacencyMatrix | None,
            seed_from_prompt: bool) -> Step:
    """Step 0: the prompt (`ids` on the model's device) in one pass; with `seed_from_prompt`, its logits
    (computed anyway) also write the rows of the prompt tokens."""
    positions = torch.arange(len(ids), device=request.device)
    logits = request.clock.timed(request.passes, ids, positions, last_only=not seed_from_prompt,
                                 greedy=request.greedy)
    rows = matrix.write(prompt, logits, [-1, *prompt[:-1]]) if seed_from_prompt else []
    root = request.pick(logits[-1])
    emitted, finished = clip([root], request.max_new_tokens, request.eos)
    return Step(0, emitted, rows_written=rows, finished=finished)


def verify(request: Request, draft: Draft, tree: TreeBuffers) -> torch.Tensor:
    """One forward pass over the tree behind the cache, with tree attention: logits (n, vocab)."""
    device, start = request.device, request.passes.length
    positions = (tree.depths + start).to(device)
    tokens = torch.tensor(draft.tokens).to(device)
    return request.clock.timed(request.passes, tokens, positions, tree.ancestors, greedy=request.greedy)


def accept(request: Request, draft: Draft, tree: TreeBuffers, logits: torch.Tensor, start: int) -> Verdict:
    """The longest root path the model agrees with (greedy) or draws (sampling), plus the model's token
    after it; the cache keeps that path's entries from `start` and drops the rest of the tree."""
    if request.greedy:
        verdict = _greedy_path(torch.tensor(draft.tokens), tree, logits)
    else:
        verdict = _sampled_path(request, draft.parents, draft.tokens, logits)
    request.passes.keep(start, verdict.path)
    return verdict


def recycle(matrix: AdjacencyMatrix, draft: Draft, logits: torch.Tensor, before_root: int) -> list[RowWrite]:
    """Overwrite the row of every token in the pass (and of its pair with the token before it) with the
    model's new top-k there."""
    previous = [before_root, *(draft.tokens[p] for p in draft.parents[1:])]
    return matrix.write(draft.tokens, logits, previous)


@torch.inference_mode()  # per step, as for `autoregressive`
def token_recycling(
    model: torch.nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    matrix: AdjacencyMatrix | None,
    drafter: Drafter,
    sampling: Sampling = GREEDY,
    eos_ids: Sequence[int] = (),
    seed_from_prompt: bool = False,
    passes: PassesFactory = EagerPasses,
    picker: Picker | None = None,
) -> Iterator[Step]:
    """Token Recycling. `matrix` is read and updated in place (keep it for a hot start); `drafter` is
    one of `tr.drafts`, made for this request. With `seed_from_prompt`, the prefill also writes the rows
    of the prompt tokens before the first draft. With `matrix` None, nothing is recycled: for a drafter
    that reads no matrix (prompt lookup decoding). `passes` runs the forward passes; `picker`, when given,
    picks every token in place of `sampling`."""
    if matrix is None and seed_from_prompt:
        raise ValueError("seed_from_prompt writes the prompt's rows: it needs a matrix")
    ids = checked_ids(model, prompt_ids, max_new_tokens, matrix)
    device = ids.device
    request = Request(device, passes(model, len(ids) + max_new_tokens + drafter.max_size), Clock(device),
                      sampling, sampling.generator(device), set(eos_ids), max_new_tokens, picker=picker,
                      text=list(prompt_ids))
    try:
        yield from _recycling_steps(request, list(prompt_ids), ids, matrix, drafter, seed_from_prompt)
    finally:
        request.passes.close()


def _recycling_steps(request: Request, prompt: list[int], ids: torch.Tensor, matrix: AdjacencyMatrix | None,
                     drafter: Drafter, seed_from_prompt: bool) -> Iterator[Step]:
    learn = getattr(drafter, "observe", None)  # the drafter's optional feedback hook
    step = prefill(request, prompt, ids, matrix, seed_from_prompt)
    request.text += step.tokens
    root, before_root = step.tokens[-1], int(prompt[-1])
    while True:
        if learn:
            learn(step)  # before the split: its time counts as the step's overhead
        yield request.totals.record(step, request.clock)
        if step.finished:
            return
        request.clock.resume()
        draft = drafter.draft(root, matrix)
        tree, start = tree_buffers(tuple(draft.parents)), request.passes.length
        logits = verify(request, draft, tree)
        verdict = accept(request, draft, tree, logits, start)
        rows = recycle(matrix, draft, logits, before_root) if matrix is not None else []
        root, before_root = verdict.bonus, draft.tokens[verdict.path[-1]]
        emitted, finished = clip([draft.tokens[i] for i in verdict.path[1:]] + [root], request.room, request.eos)
        step = Step(step.index + 1, emitted, draft, verdict.choices, verdict.path, rows,
                    forward_s=request.clock.forward_s, finished=finished)
        request.text += emitted
        if matrix is not None:
            matrix.stats.observe(step)
