"""Token Recycling (Luo et al., arXiv 2408.08696): lossless, train-free speculative decoding that
drafts from an adjacency matrix of the model's own recent top-k predictions."""

# Kernel settings first: MKL reads them at its first matrix product.
from . import kernels  # noqa: F401  isort: skip
from .decoding import Step, autoregressive, token_recycling
from .drafts import Draft, DynamicDrafter, TemplateDrafter
from .generate import (
    AUTO, AUTO_NO_LOOKUP, METHODS, START_MODES, Generation, Stats, decode_steps, first_divergence, generate,
    make_drafter, summarize,
)
from .matrix import AdjacencyMatrix, RowWrite
from .model import BUNDLED, LoadedModel, ModelLoadError, load_model
from .priming import load_primed, primed_path
from .race import race
from .sampling import GREEDY, Sampling
from .trees import BUILTIN_TEMPLATES, DEFAULT_TEMPLATE, DraftTree, TreeError, load_template

__all__ = [
    "AUTO", "AUTO_NO_LOOKUP", "AdjacencyMatrix", "BUILTIN_TEMPLATES", "BUNDLED", "DEFAULT_TEMPLATE", "Draft",
    "DraftTree", "DynamicDrafter", "GREEDY", "Generation", "LoadedModel", "METHODS", "ModelLoadError", "RowWrite",
    "START_MODES", "Sampling", "Stats", "Step", "TemplateDrafter", "TreeError", "autoregressive", "decode_steps",
    "first_divergence", "generate", "load_model", "load_primed", "load_template", "make_drafter", "primed_path",
    "race", "summarize",
    "token_recycling",
]
