"""Forward passes over one request's KV cache: the one way a decoder calls the model.

A decoder opens one `Passes` per request (a `PassesFactory` given the model and the cache capacity) and
calls it with the new tokens, their positions and, for a tree, which nodes each node sees. Afterwards it
keeps only the accepted entries (`keep`). `EagerPasses` calls the model over the filled prefix of a
`PreallocatedCache`; `tr.device.graphs.GraphedPasses` replays CUDA graphs over a static cache. Both give
a token the same context, so a decoder's tokens do not depend on which one runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Protocol

import torch
from transformers.cache_utils import Cache

from .kv_cache import PreallocatedCache


class Passes(Protocol):
    """One request's forward passes over its cache."""

    @property
    def length(self) -> int:
        """Positions the cache holds."""
        ...

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, ancestors: torch.Tensor | None = None, *,
                 last_only: bool = False, greedy: bool = False) -> torch.Tensor:
        """Logits (n, vocab) for `ids` at `positions` (on the model's device) behind the cached tokens, their
        keys and values appended to the cache. `ancestors` (n, n) bool, on the CPU: which new tokens each
        one sees (itself included); None: each sees those before it. With `last_only`, only the last row's
        logits; with `greedy`, exact only at each row's argmax (`argmax_only`). Valid until the next call."""
        ...

    def keep(self, start: int, offsets: Sequence[int]) -> None:
        """After a tree pass written at `start`: keep the entries at the given node offsets (increasing)."""
        ...

    def truncate(self, length: int) -> None:
        ...

    def close(self) -> None:
        """The request is over: what it held may serve another."""
        ...


PassesFactory = Callable[[torch.nn.Module, int], Passes]  # (model, cache capacity) -> one request's passes


@contextmanager
def argmax_only(model: torch.nn.Module) -> Iterator[None]:
    """Within: an output head that offers it (an `argmax_only` attribute, as `tr.device.kernels.ScreenedHead`
    does) may return logits exact at each row's argmax only, which is all greedy decoding reads."""
    head = model.get_output_embeddings()
    if not hasattr(head, "argmax_only"):
        yield
        return
    before, head.argmax_only = head.argmax_only, True
    try:
        yield
    finally:
        head.argmax_only = before


def forward(
    model: torch.nn.Module,
    cache: Cache,
    ids: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor | None = None,
    last_only: bool = False,
    greedy: bool = False,
) -> torch.Tensor:
    """Logits (n, vocab) for `ids` at `positions`, appending their keys and values to the cache. With
    `greedy`, exact only at each row's argmax (`argmax_only`): enough for greedy decoding."""
    with argmax_only(model) if greedy else nullcontext():
        out = model(
            input_ids=ids[None],
            position_ids=positions[None],
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
        )
    return out.logits[0]


def additive(sees: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An additive attention mask from a boolean one, on its device: 0 where a query sees a key, the dtype's
    lowest elsewhere."""
    return torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill_(~sees, torch.finfo(dtype).min)


def tree_mask(ancestors: torch.Tensor, start: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The additive attention mask of a tree pass behind `start` cached tokens: each node sees the cache,
    itself and its ancestors. Built on the CPU beside the tree, then copied over once."""
    n = ancestors.shape[0]
    tree = additive(ancestors, dtype)
    mask = torch.zeros(n, start + n, dtype=dtype, device=device)
    mask[:, start:] = tree.to(device)
    return mask[None, None]


def chain(n: int) -> torch.Tensor:
    """The ancestors of a chain of `n` tokens: each sees itself and those before it."""
    return torch.ones(n, n, dtype=torch.bool).tril()


def seen_among(ancestors: torch.Tensor | None, start: int, n: int) -> torch.Tensor | None:
    """Which of a pass's `n` tokens, behind `start` cached ones, each sees: `ancestors` as given; where none
    are given, a chain once a cache lies before them (the model's causal attention would not see the
    cache); None for a prompt's own pass, which runs the model's causal attention."""
    return chain(n) if ancestors is None and start and n > 1 else ancestors


def pass_mask(ancestors: torch.Tensor, start: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """The mask eager passes give attention: the tree mask, and none for one token, which then runs as a
    plain decoding step (attention kernels differ with a mask)."""
    return tree_mask(ancestors, start, dtype, device) if len(ancestors) > 1 else None


class OwnCache:
    """The part every `Passes` over a cache of its own (`self.cache`, with `length`, `keep` and `truncate`)
    shares: the cache answers for its length, what is kept and truncated; closing frees nothing another
    request could take."""

    @property
    def length(self) -> int:
        return self.cache.length

    def keep(self, start: int, offsets: Sequence[int]) -> None:
        self.cache.keep(start, offsets)

    def truncate(self, length: int) -> None:
        self.cache.truncate(length)

    def close(self) -> None:
        pass


class EagerPasses(OwnCache):
    """The model called on each pass as it comes, over the filled prefix of a `PreallocatedCache`. A pass
    with `ancestors` gets `pass_mask`; one without, the model's own causal attention."""

    def __init__(self, model: torch.nn.Module, capacity: int):
        parameter = next(model.parameters())
        self.model, self.dtype, self.device = model, parameter.dtype, parameter.device
        self.cache = PreallocatedCache(capacity)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, ancestors: torch.Tensor | None = None, *,
                 last_only: bool = False, greedy: bool = False) -> torch.Tensor:
        ancestors = seen_among(ancestors, self.cache.length, len(ids))
        mask = None if ancestors is None else pass_mask(ancestors, self.cache.length, self.dtype, self.device)
        return forward(self.model, self.cache, ids, positions, mask, last_only, greedy)
