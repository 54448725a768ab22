"""The generated text as HTML, with the tokens of each model call that wrote more than one on a tinted band.

A band holds the tokens one step emitted together (accepted drafts plus the bonus token), so long
bands are where the drafts paid off. Two tints alternate only so that neighbouring bands can be told
apart; text on no tint came one token per call. Text is decoded incrementally with a little context so
a step's share reads exactly as it does inside the whole text (spaces a tokenizer only renders after
a previous token, characters split across tokens), without re-decoding the whole output per step.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from tr.records import Step

# Light enough for dark text; they alternate, so neighbouring bands never look alike.
TINTS = ("#fde68a", "#bfdbfe")
CONTAINER_STYLE = ("white-space:pre-wrap;word-break:break-word;line-height:1.7;font-size:15px;"
                   "padding:8px 10px;border:1px solid #e5e7eb;border-radius:8px;min-height:3em")
BAND_STYLE = "background:{color};color:#111827;border-radius:3px;padding:1px 0"
LEGEND_STYLE = "font-size:12px;color:#6b7280;margin:0 0 4px 0"
CONTEXT_TOKENS = 4  # tokens decoded before a piece so it renders as it does mid-text
INCOMPLETE = "\ufffd"  # what a byte-level tokenizer decodes half a UTF-8 character to


def step_pieces(steps: list[Step], decode: Callable[[list[int]], str]) -> list[str]:
    """The text each step added; joined, they equal `decode` of all tokens.

    A step whose tokens end inside a multi-byte character adds nothing; its tokens are carried into
    the next step's piece so no band ever shows a broken character.
    """
    ids: list[int] = []
    pieces: list[str] = []
    start = 0  # first token whose text is in no piece yet
    for n, step in enumerate(steps):
        ids.extend(step.tokens)
        left = max(start - CONTEXT_TOKENS, 0)
        before = decode(ids[left:start]) if start > left else ""
        text = decode(ids[left:])
        if text.endswith(INCOMPLETE) and n < len(steps) - 1:
            pieces.append("")
            continue
        # Context that itself decodes differently once followed by more tokens: fall back to no context.
        pieces.append(text[len(before):] if text.startswith(before) else decode(ids[start:]))
        start = len(ids)
    return pieces


def _container(body: str, legend: str = "") -> str:
    legend_html = f'<p style="{LEGEND_STYLE}">{legend}</p>' if legend else ""
    return f'<div class="tr-output">{legend_html}<div style="{CONTAINER_STYLE}">{body}</div></div>'


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def banded_html(steps: list[Step], decode: Callable[[list[int]], str]) -> str:
    """The output with each multi-token model call on a band of alternating tint; hover any piece for its
    step and token count."""
    bands, tinted = [], 0
    for step, piece in zip(steps, step_pieces(steps, decode)):
        if not piece:
            continue
        title = f"step {step.index}: {_plural(len(step.tokens), 'token')}"
        style = ""
        if len(step.tokens) > 1:
            style = f' style="{BAND_STYLE.format(color=TINTS[tinted % len(TINTS)])}"'
            tinted += 1
        bands.append(f'<span class="tr-band"{style} title="{title}">{html.escape(piece)}</span>')
    legend = ("A tinted band is the text one model call wrote at once: its accepted drafts plus the model's own "
              "bonus token. The two tints only alternate to keep neighbouring calls apart; they mean nothing "
              "else. Untinted text came one token per call. Hover any piece for its step.")
    return _container("".join(bands), legend)


def plain_html(steps: list[Step], decode: Callable[[list[int]], str]) -> str:
    """The output in the same box as `banded_html`, without bands (for the baseline)."""
    text = decode([t for step in steps for t in step.tokens]) if steps else ""
    return _container(html.escape(text), "One token per model call: nothing is drafted.")


def pane_html(title: str, steps: list[Step], decode: Callable[[list[int]], str], banded: bool) -> str:
    """One decoder's text so far under a heading with its own compute clock."""
    clock = f"{steps[-1].elapsed_s:.2f} s of its own compute" if steps else "waiting"
    done = ", done" if steps and steps[-1].finished else ""
    body = banded_html(steps, decode) if banded else plain_html(steps, decode)
    return f'<p class="pane-title">{html.escape(title)}: {clock}{done}</p>{body}'
