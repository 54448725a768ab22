"""The adjacency matrix: for each token, the top-k tokens the model last predicted after it.

Rows are overwritten, never averaged: the matrix always holds the most recent "trash" candidates,
which is what the paper recycles. Beside each candidate it keeps the probability the model gave it,
which the dynamic drafter uses to decide which branches are worth verifying, and it keeps a second
table keyed by pairs of tokens (see `pair_row`). It persists across calls (hot start) until `reset`.

It lives on the CPU whatever the model's device: drafting reads it row by row, which on a GPU would
cost one synchronisation per row, while a step's write needs only one copy of its top-k back.

`save` and `load` keep a matrix in a safetensors file (filled rows and pair rows only), so a primed
matrix (`tools.priming`) can ship with the app.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .acceptance import AcceptanceStats
from .records import RowWrite

MAX_K = 32
MAX_PAIRS = 1 << 18  # pair rows kept (about 100 MB of Python lists at k=8); the oldest go first


def latest(tokens: list[int]) -> dict[int, int]:
    """Each token's last index in a pass, in order of first occurrence: a token drafted twice keeps the row
    its deepest occurrence wrote, so a matrix does not depend on how a device orders duplicate writes."""
    return {token: i for i, token in enumerate(tokens)}


def top_candidates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k most likely tokens and their probabilities, in float32 on the logits' device: what a
    row of the matrix holds (the host's matrix and the device's copy compute them alike)."""
    rows = logits.float()
    top = rows.topk(k, dim=-1)
    return top.indices, (top.values - rows.logsumexp(-1, keepdim=True)).exp()


class AdjacencyMatrix:
    def __init__(self, vocab_size: int, k: int = 8, max_pairs: int = MAX_PAIRS):
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
        self.max_pairs = max_pairs
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

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write the filled rows and the pair rows (oldest first) to a safetensors file."""
        rows = self.filled.nonzero().flatten()
        keys = list(self.pairs)
        tensors = {
            "rows": rows.int(), "table": self.table[rows].int(), "probs": self.probs[rows],
            "pair_keys": torch.tensor(keys, dtype=torch.int32).reshape(-1, 2),
            "pair_table": torch.tensor([self.pairs[key][0] for key in keys], dtype=torch.int32).reshape(-1, self.k),
            "pair_probs": torch.tensor([self.pairs[key][1] for key in keys], dtype=torch.float32).reshape(-1, self.k),
        }
        save_file(tensors, str(path), {**(metadata or {}), "vocab_size": str(self.vocab_size), "k": str(self.k)})

    @classmethod
    def load(cls, path: str | Path, vocab_size: int, k: int = 8) -> AdjacencyMatrix:
        """A matrix with the rows of a `save`d file. A file with more candidates per row than `k` gives
        its first `k`; one with fewer leaves the rest of each row empty (probability 0, never drafted
        before a real candidate). Raises ValueError when the file belongs to another vocabulary."""
        with safe_open(str(path), "pt") as file:
            saved_vocab = int((file.metadata() or {}).get("vocab_size", -1))
            if saved_vocab != vocab_size:
                raise ValueError(f"{path} holds a matrix for a vocabulary of {saved_vocab} tokens, not {vocab_size}")
            saved = {name: file.get_tensor(name) for name in file.keys()}
        matrix = cls(vocab_size, k)
        rows, width = saved["rows"].long(), min(k, saved["table"].shape[1])
        matrix.table[rows, :width] = saved["table"][:, :width].long()
        matrix.probs[rows, :width] = saved["probs"][:, :width]
        matrix.filled[rows] = True
        pad = [0] * (k - width), [0.0] * (k - width)
        for key, row, p in zip(saved["pair_keys"].tolist(), saved["pair_table"].tolist(), saved["pair_probs"].tolist()):
            matrix.pairs[tuple(key)] = (row[:width] + pad[0], p[:width] + pad[1])
        return matrix

    def fill_from(self, other: AdjacencyMatrix) -> int:
        """Copy into every row still empty here the row `other` has, and the pair rows this matrix
        lacks, its latest as many as fit under `max_pairs` (as this matrix's oldest, the first to go);
        rows already written here are fresher and stay. Returns how many rows it filled. Pair rows are
        shared, not copied: a matrix replaces its pair rows and never changes one in place."""
        if other.vocab_size != self.vocab_size or other.k != self.k:
            raise ValueError("fill_from needs a matrix of the same vocabulary size and k")
        rows = (other.filled & ~self.filled).nonzero().flatten()
        self.table[rows], self.probs[rows], self.filled[rows] = other.table[rows], other.probs[rows], True
        missing = [key for key in other.pairs if key not in self.pairs]
        room = max(self.max_pairs - len(self.pairs), 0)
        if missing and room:
            self.pairs = {**{key: other.pairs[key] for key in missing[-room:]}, **self.pairs}
        return len(rows)

    def write(self, tokens: list[int], logits: torch.Tensor, previous: list[int] | None = None) -> list[RowWrite]:
        """Overwrite the row of each token with the top-k of the logits at its position (on any
        device), and, where `previous` names the token before it (-1: unknown), the row of that pair.

        A token that occurs several times keeps its last occurrence (`latest`).
        """
        candidates, probs = (part.cpu() for part in top_candidates(logits, self.k))
        if previous is not None:
            self._write_pairs(previous, tokens, candidates.tolist(), probs.tolist())
        last = latest(tokens)
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
        if len(self.pairs) > self.max_pairs:  # forget the least recently written quarter
            for key in list(itertools.islice(self.pairs, len(self.pairs) - self.max_pairs * 3 // 4)):
                del self.pairs[key]
