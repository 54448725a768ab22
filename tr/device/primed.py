"""Primed matrices: a model's adjacency rows built once (`tools.priming`) and loaded by the `primed` start.

A primed matrix is found by the model's tokenizer, not by its name: its rows are token ids, and any
matrix is only a source of drafts (verification decides every emitted token), so the rows one model
wrote serve every model with the same tokenizer, exactly as losslessly. The bundled 4-bit SmolLM2 and
its full-precision original on the hub (what a HuggingFace Space loads) share the shipped file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import weakref
from pathlib import Path

from safetensors import safe_open

from ..matrix import AdjacencyMatrix
from .model import LoadedModel, cache_dir

SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "primed"


# Fingerprints by tokenizer, with the vocabulary size they were taken at: hashing a vocabulary takes about
# 0.2 s, and a primed start looks its matrix up on every request.
_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the tokenizer's vocabulary (every token and its id); taken again when tokens are added."""
    size = len(tokenizer)
    known = _fingerprints.get(tokenizer)
    if known is None or known[0] != size:
        vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
        known = _fingerprints[tokenizer] = (size, hashlib.sha256(vocab.encode()).hexdigest()[:16])
    return known[1]


@functools.lru_cache(maxsize=32)
def _metadata(path: str, mtime: float) -> dict[str, str]:
    with safe_open(path, "pt") as file:
        return file.metadata() or {}


def metadata(path: Path) -> dict[str, str]:
    """The metadata a primed file was written with (model, tokenizer, prompts, command)."""
    return _metadata(str(path), path.stat().st_mtime)


def build_target(lm: LoadedModel) -> Path:
    """Where `tools.priming` writes a model's primed matrix unless told otherwise."""
    return cache_dir() / "primed" / f"{tokenizer_fingerprint(lm.tokenizer)}.safetensors"


def find_primed(lm: LoadedModel) -> Path | None:
    """The primed matrix for this model's tokenizer: one shipped in assets/primed, else one built into
    the cache folder; None when there is none."""
    fingerprint = tokenizer_fingerprint(lm.tokenizer)
    for path in sorted(SHIPPED.glob("*.safetensors")):
        if metadata(path).get("tokenizer") == fingerprint:
            return path
    built = build_target(lm)
    return built if built.is_file() else None


def describe_primed(lm: LoadedModel) -> str:
    """One line for a page or a log: which primed matrix this model gets, or why none."""
    path = find_primed(lm)
    if path is None:
        return (f"no primed matrix for this model's tokenizer (build one with `python -m tools.priming --model "
                f"{lm.name}`)")
    source = metadata(path).get("model", "?")
    return f"primed matrix {path.name}, written by {source} (same tokenizer)"


def load_primed(lm: LoadedModel, k: int) -> AdjacencyMatrix:
    """The model's primed matrix with k candidates per row (read once, then shared: do not change it);
    ValueError, with the command that builds one, when there is none."""
    path = find_primed(lm)
    if path is None:
        raise ValueError(f"there is no primed matrix for {lm.name!r}: build one with "
                         f"`python -m tools.priming --model {lm.name}`, or use the hot start")
    return _read(str(path), path.stat().st_mtime, lm.vocab_size, k)


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime: float, vocab_size: int, k: int) -> AdjacencyMatrix:
    return AdjacencyMatrix.load(path, vocab_size, k)
