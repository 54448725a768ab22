"""Token Recycling (Luo et al., arXiv 2408.08696): lossless, train-free speculative decoding that
drafts from an adjacency matrix of the model's own recent top-k predictions.

Importing `tr` loads nothing and changes no setting: each name below is imported from its module
when first used (`tr.load_model`, `tr.generate`, ...), so `tr.records` can be read without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AdjacencyMatrix": "matrix", "BUILTIN_TEMPLATES": "trees", "DEFAULT_TEMPLATE": "trees", "DraftTree": "trees",
    "TreeError": "trees", "Draft": "records", "DynamicDrafter": "drafts",
    "TemplateDrafter": "drafts", "autoregressive": "decoding", "token_recycling": "decoding", "race": "race",
    "GREEDY": "sampling", "Sampling": "sampling", "Step": "records", "Stats": "records", "summarize": "records",
    "token_ids": "records", "first_divergence": "records", "Method": "specs", "Start": "specs", "TreeSpec": "specs",
    "parse_tree": "specs", "parse_start": "specs", "Generation": "generate", "decode_steps": "generate",
    "generate": "generate", "make_drafter": "generate", "BUNDLED": "device.model", "LoadedModel": "device.model",
    "ModelLoadError": "device.model", "load_model": "device.model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tr' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
