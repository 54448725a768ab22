"""Token Recycling (Luo et al., arXiv 2408.08696): lossless, train-free speculative decoding that
drafts from an adjacency matrix of the model's own recent top-k predictions."""

from .decoding import Step, autoregressive, token_recycling
from .generate import (
    AUTO, METHODS, START_MODES, Generation, Stats, decode_steps, first_divergence, generate, make_tree, summarize,
)
from .matrix import AdjacencyMatrix, RowWrite
from .model import BUNDLED, LoadedModel, ModelLoadError, load_model
from .race import race
from .sampling import GREEDY, Sampling
from .trees import BUILTIN_TEMPLATES, DEFAULT_TEMPLATE, DraftTree, TreeError, load_template

__all__ = [
    "AdjacencyMatrix", "BUILTIN_TEMPLATES", "BUNDLED", "DEFAULT_TEMPLATE", "DraftTree", "GREEDY", "Generation",
    "LoadedModel", "METHODS", "ModelLoadError", "RowWrite", "START_MODES", "Sampling", "Stats", "Step",
    "TreeError", "AUTO", "autoregressive", "decode_steps", "first_divergence", "make_tree", "generate", "load_model", "load_template", "race",
    "summarize", "token_recycling",
]
