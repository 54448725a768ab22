"""The race's settings as the app receives them: one table of named fields, checked once, where a
request enters (the page, the API), into typed values (`tr.specs`).

Adding a control means adding its name to `FIELDS`, its widget to `webapp.layout` under the same name,
and its check to `parse_settings`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tr.matrix import MAX_K
from tr.sampling import MIN_TEMPERATURE, Sampling
from tr.specs import (
    CUSTOM_EXAMPLE, MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, TREE_NAMES, Method, Start, TreeSpec, parse_start, parse_tree,
)
from tr.trees import TreeError

CUSTOM = "custom JSON"
TEMPLATES = (*TREE_NAMES, CUSTOM)  # the first, auto, is the default
DECODING = ("greedy", "sampling")
# A cheap bound before the tokenizer runs: no tokenizer makes fewer than one token per 32 characters of
# text a visitor types, so a longer text cannot be under the token limit.
MAX_PROMPT_CHARS = 32 * MAX_PROMPT_TOKENS
MAX_LOOKUP_CHARS = 200
TOP_TEMPERATURE = 2.0  # the highest the page and its API take (the library takes more)
# The race's fields, in the order the API lists them.
FIELDS = ("prompt", "max_new_tokens", "template", "custom_json", "k", "decoding", "temperature", "top_p", "seed",
          "start", "prompt_lookup")


@dataclass(frozen=True)
class Settings:
    """One checked request."""

    prompt: str
    max_new_tokens: int
    tree: TreeSpec
    k: int
    sampling: Sampling
    start: Start
    prompt_lookup: bool = False  # a third lane: prompt lookup decoding

    @property
    def sampled(self) -> bool:
        return not self.sampling.greedy

    @property
    def lanes(self) -> tuple[Method, ...]:
        """The decoders in the race, the baseline first."""
        return (Method.AR, Method.TR, Method.PLD) if self.prompt_lookup else (Method.AR, Method.TR)

    def record(self) -> dict[str, Any]:
        """The settings as a visitor set them, for the run's JSON download."""
        return {
            "prompt": self.prompt, "max_new_tokens": self.max_new_tokens, "template": self.tree.label,
            "tree_paths": [list(p) for p in self.tree.paths], "k": self.k,
            "decoding": DECODING[self.sampled], "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p, "seed": self.sampling.seed, "start": self.start.value,
            "prompt_lookup": self.prompt_lookup,
        }


def _whole(name: str, value: Any, low: int, high: int) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value != int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {_shown(value)}")
    return int(value)


def _number(name: str, value: Any, low: float, high: float, low_included: bool = False) -> float:
    """A number in (low, high], or [low, high] when `low_included`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (low <= value if low_included else low < value) or not value <= high:
        interval = f"{'[' if low_included else '('}{low}, {high}]"
        raise ValueError(f"{name} must be a number in {interval}, got {_shown(value)}")
    return float(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {_shown(value)}")
    return value


def _unicode(name: str, text: str) -> None:
    """Text that is Unicode through and through: JSON can carry half of a surrogate pair, which no
    tokenizer can read."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{name} holds a character that is not valid Unicode (a lone surrogate, "
                         f"{text[err.start]!r}) at position {err.start:,}") from None


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {_shown(value)}")
    return value


def _sampling(values: Mapping[str, Any]) -> Sampling:
    """Sampling parameters only matter (and are only checked) when sampling."""
    if _choice("Decoding", values["decoding"], DECODING) == "greedy":
        return Sampling()
    return Sampling(temperature=_number("Temperature", values["temperature"], MIN_TEMPERATURE, TOP_TEMPERATURE,
                                        low_included=True),
                    top_p=_number("Top-p", values["top_p"], 0.0, 1.0),
                    seed=_whole("Seed", values["seed"], 0, 2**31 - 1))


def _custom_tree(value: Any, k: int) -> TreeSpec:
    """The custom tree box: a JSON list of rank paths (or a tree's name); the message names the field."""
    if not isinstance(value, str):
        raise ValueError(f"Custom tree must be text, a JSON list of paths such as {CUSTOM_EXAMPLE}, got "
                         f"{_shown(value)}")
    try:
        return parse_tree(value, k)
    except TreeError as err:
        raise ValueError(f"Custom tree: {err}") from None


def parse_settings(values: Mapping[str, Any]) -> Settings:
    """Check every field by name (the API can send anything) and say exactly what is wrong."""
    missing = [name for name in FIELDS if name not in values]
    if missing:
        raise ValueError(f"missing settings: {', '.join(missing)}")
    prompt = values["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("The prompt is empty: type some text or pick one of the examples.")
    _unicode("The prompt", prompt)
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"The prompt is too long: {len(prompt):,} characters is far more than the "
                         f"{MAX_PROMPT_TOKENS:,} tokens accepted.")
    k = _whole("k", values["k"], 1, MAX_K)
    template = _choice("Draft tree", values["template"], TEMPLATES)
    return Settings(
        prompt=prompt,
        max_new_tokens=_whole("Max new tokens", values["max_new_tokens"], 1, MAX_NEW_TOKENS),
        tree=_custom_tree(values["custom_json"], k) if template == CUSTOM else parse_tree(template, k),
        k=k,
        sampling=_sampling(values),
        start=parse_start(_choice("Start", values["start"], tuple(s.value for s in Start))),
        prompt_lookup=_flag("Prompt lookup lane", values["prompt_lookup"]),
    )


Lookup = int | str  # what the token lookup box asks for: a token id, or text whose first token it means


def parse_lookup(text: Any, vocab_size: int) -> Lookup:
    """The token lookup box: `#id` (a whole number, read whole) or text, of which only the start matters."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"Look up must be text (a word or #id), got {type(text).__name__}")
    text = text.strip()
    _unicode("Look up", text)
    if not text.startswith("#"):
        return text[:MAX_LOOKUP_CHARS]
    # ASCII digits only (int() takes other digits and underscores too); leading zeros do not count, so a
    # long id is refused by its length before it is converted.
    digits = text[1:]
    significant = digits.lstrip("0") or "0"
    if not (digits.isascii() and digits.isdigit()) or len(significant) > len(str(vocab_size)) or \
            int(significant) >= vocab_size:
        raise ValueError(f"Look up: a token id is # followed by a whole number from 0 to {vocab_size - 1}, "
                         f"got {_shown(text)}")
    return int(significant)


def _shown(value: Any, limit: int = 60) -> str:
    """A value as a message quotes it: its repr, cut after `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def parse_step(value: Any) -> int:
    """The step slider: a whole number of 0 or more (views clamp it to the run's last step)."""
    return _whole("Step", value, 0, 1 << 30)
