"""The adjacency matrix: for each token, the top-k tokens the model last predicted after it.

Rows are overwritten, never averaged: the matrix always holds the most recent "trash" candidates,
which is what the paper recycles. Beside each candidate it keeps the probability the model gave it,
which the dynamic drafter uses to decide which branches are worth verifying, and it keeps a second
table keyed by pairs of tokens (see `pair_row`). It persists across calls (hot start) until `reset`.

It lives on the CPU whatever the model's device: drafting reads it row by row, which on a GPU would
cost one synchronisation per row, while a step's write needs only one copy of its top-k back.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from .acceptance import AcceptanceStats

MAX_K = 32
MAX_PAIRS = 1 << 18  # pair rows kept (about 100 MB of Python lists at k=8); the oldest go first


@dataclass
class RowWrite:
    """One row overwritten during a step: the candidates before and after."""

    token: int
    old: list[int]
    new: list[int]
    was_filled: bool


class AdjacencyMatrix:
    def __init__(self, vocab_size: int, k: int = 8):
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        if vocab_size < k:
            raise ValueError(f"k={k} exceeds the vocabulary size {vocab_size}")
        self.k = k
        self.vocab_size = vocab_size
        # A cold row drafts token 0 everywhere: harmless, verification rejects what the model disagrees with.
        self.table = torch.zeros(vocab_size, k, dtype=torch.long)
        self.probs = torch.zeros(vocab_size, k, dtype=torch.float32)
        self.filled = torch.zeros(vocab_size, dtype=torch.bool)
        # Rows keyed by two tokens: what the model predicted after `b` when `b` followed `a`. A second
        # order of the same recycling, which the dynamic drafter prefers where it has one.
        self.pairs: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
        self.stats = AcceptanceStats(k)

    def reset(self) -> None:
        self.table.zero_()
        self.probs.zero_()
        self.filled.zero_()
        self.pairs.clear()
        self.stats.reset()

    @property
    def rows_filled(self) -> int:
        return int(self.filled.sum())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.table, self.probs, self.filled))

    def row(self, token: int) -> list[int] | None:
        """The current candidates of `token`, or None while its row has never been written."""
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"token id {token} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self.table[token].tolist() if bool(self.filled[token]) else None

    def pair_row(self, previous: int, token: int) -> tuple[list[int], list[float]] | None:
        """Candidates and probabilities last seen after the two tokens `previous`, `token`, if any."""
        return self.pairs.get((previous, token))

    def write(self, tokens: list[int], logits: torch.Tensor, previous: list[int] | None = None) -> list[RowWrite]:
        """Overwrite the row of each token with the top-k of the logits at its position (on any
        device), and, where `previous` names the token before it (-1: unknown), the row of that pair.

        A token that occurs several times keeps its last occurrence (deepest in the tree), so the
        result does not depend on how a device orders duplicate writes.
        """
        rows = logits.float()
        top = rows.topk(self.k, dim=-1)
        candidates = top.indices.cpu()
        probs = (top.values - rows.logsumexp(-1, keepdim=True)).exp().cpu()
        if previous is not None:
            self._write_pairs(previous, tokens, candidates.tolist(), probs.tolist())
        last = {token: i for i, token in enumerate(tokens)}
        index = torch.tensor(list(last.values()))
        unique, new = torch.tensor(list(last)), candidates[index]
        old = self.table[unique]
        was_filled = self.filled[unique]
        self.table[unique] = new
        self.probs[unique] = probs[index]
        self.filled[unique] = True
        return [
            RowWrite(token, o, n, f)
            for token, o, n, f in zip(last, old.tolist(), new.tolist(), was_filled.tolist())
        ]

    def _write_pairs(self, previous: list[int], tokens: list[int], candidates: list[list[int]],
                     probs: list[list[float]]) -> None:
        for before, token, row, p in zip(previous, tokens, candidates, probs):
            if before >= 0:
                self.pairs.pop((before, token), None)  # re-insert: the dict's order is last-written order
                self.pairs[(before, token)] = (row, p)
        if len(self.pairs) > MAX_PAIRS:  # forget the least recently written quarter
            for key in list(itertools.islice(self.pairs, MAX_PAIRS // 4)):
                del self.pairs[key]
