"""Sampling settings and the model's next-token distribution under them.

Both decoders draw every emitted token from `next_token_probs` of the model's logits at that
position, which is what makes sampled Token Recycling lossless: a draft is only followed when the
token drawn from the model's own distribution happens to equal it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The lowest sampling temperature. The distribution is computed from logits minus their maximum, so any
# positive temperature stays finite; below this one it is greedy decoding in all but name, and a number
# such as 5e-324 is zero once it reaches float32.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0


@dataclass(frozen=True)
class Sampling:
    """temperature 0 means greedy decoding; top_k 0 and top_p 1 switch those filters off."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (self.temperature == 0.0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            raise ValueError(f"temperature must be 0 (greedy) or from {MIN_TEMPERATURE} to {MAX_TEMPERATURE:g}, "
                             f"got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 (off) or positive, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.greedy:
            return None
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed if self.seed is not None else torch.seed())
        return generator


GREEDY = Sampling()


def next_token_probs(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Probabilities over the vocabulary (last dim) after temperature, top-k and top-p."""
    logits = logits.float()
    # Shifted so that the largest logit is 0: divided by a small temperature, the rest only head for -inf
    # (probability 0), never to +inf, whose softmax would be NaN.
    logits = (logits - logits.amax(-1, keepdim=True)) / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= sampling.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """The model's token for each row of `logits`: argmax when greedy, else a draw."""
    if sampling.greedy:
        return logits.argmax(-1)
    probs = next_token_probs(logits, sampling)
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(probs.shape[:-1])
