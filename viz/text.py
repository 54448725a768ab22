"""The generated text as HTML, each model call's share coloured by where its tokens came from.

In a drafting lane's pane every call is one band: its accepted drafts on the accepted tint and the
model's own (bonus) token on the bonus tint (`viz.style.Meaning`), so green text came free from the
drafts. The guess the model rejected at that point is kept, struck through, hidden until the pane's
"show rejected guesses" box is ticked (the band's tooltip names it too). In the app, clicking a band
opens that step (`data-step`). Text is decoded incrementally with a little context so each share reads
exactly as it does inside the whole text (spaces a tokenizer only renders after a previous token,
characters split across tokens), without re-decoding the whole output per step.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from tr.records import Step

from .style import Meaning
from .tree import has_tree

CONTAINER_STYLE = ("white-space:pre-wrap;word-break:break-word;line-height:1.55;font-size:14px;"
                   "padding:8px 10px;border:1px solid #e5e7eb;border-radius:8px;min-height:3em")
TINT_STYLE = "background:{color};color:#111827;border-radius:3px;padding:1px 0"
ACCEPTED_STYLE = TINT_STYLE.format(color=Meaning.ACCEPTED.tint)
BONUS_STYLE = TINT_STYLE.format(color=Meaning.BONUS.tint)
# Hidden until the pane's toggle shows it (assets/app.css and the replay's CSS override `display`).
REJECTED_STYLE = f"display:none;color:{Meaning.REJECTED.strong};text-decoration:line-through"
TOGGLE = '<label class="rej-toggle"><input type="checkbox"> show rejected guesses</label>'

LEGEND_STYLE = "font-size:12px;color:#6b7280;margin:0 0 4px 0"
CONTEXT_TOKENS = 4  # tokens decoded before a piece so it renders as it does mid-text
INCOMPLETE = "\ufffd"  # what a byte-level tokenizer decodes half a UTF-8 character to


def pieces_of(groups: list[list[int]], decode: Callable[[list[int]], str]) -> list[str]:
    """The text each group of tokens added; joined, they equal `decode` of all tokens.

    A group whose tokens end inside a multi-byte character adds nothing; its tokens are carried into
    the next group's piece so no piece ever shows a broken character.
    """
    ids: list[int] = []
    pieces: list[str] = []
    start = 0  # first token whose text is in no piece yet
    for n, group in enumerate(groups):
        ids.extend(group)
        left = max(start - CONTEXT_TOKENS, 0)
        before = decode(ids[left:start]) if start > left else ""
        text = decode(ids[left:])
        if text.endswith(INCOMPLETE) and n < len(groups) - 1:
            pieces.append("")
            continue
        # Context that itself decodes differently once followed by more tokens: fall back to no context.
        pieces.append(text[len(before):] if text.startswith(before) else decode(ids[start:]))
        start = len(ids)
    return pieces


def step_pieces(steps: list[Step], decode: Callable[[list[int]], str]) -> list[str]:
    """The text each step added; joined, they equal `decode` of all tokens."""
    return pieces_of([step.tokens for step in steps], decode)


def _container(body: str, legend: str = "", toggle: bool = False) -> str:
    legend_html = f'<p style="{LEGEND_STYLE}">{legend}{" " + TOGGLE if toggle else ""}</p>' if legend else ""
    return f'<div class="tr-output">{legend_html}<div style="{CONTAINER_STYLE}">{body}</div></div>'


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def rejected_guess(step: Step) -> int | None:
    """The draft the model turned down where the accepted path ended: the first-drafted child of the
    last accepted node (None when the step drafted nothing there)."""
    if not has_tree(step):
        return None
    last = step.accepted[-1] if step.accepted else 0
    return next((token for token, parent in zip(step.draft.tokens, step.draft.parents) if parent == last), None)


def banded_html(steps: list[Step], decode: Callable[[list[int]], str], selectable: bool = False) -> str:
    """The output, one band per model call: accepted drafts and the bonus token on their tints, the
    rejected guess struck through (hidden until asked for); hover any band for its step, and with
    `selectable` each band carries its step index for a click to open."""
    groups: list[list[int]] = []
    for step in steps:
        accepted = min(step.accepted_drafts, len(step.tokens)) if step.draft is not None else 0
        groups += [step.tokens[:accepted], step.tokens[accepted:]]
    pieces = pieces_of(groups, decode)
    bands = []
    for n, step in enumerate(steps):
        accepted, bonus = pieces[2 * n], pieces[2 * n + 1]
        if not (accepted or bonus):
            continue
        guess = rejected_guess(step)
        title = f"step {step.index}: {_plural(len(step.tokens), 'token')}"
        title += f", {step.accepted_drafts} of {step.drafted} drafts accepted" if step.draft is not None else ""
        body = f'<span style="{ACCEPTED_STYLE}">{html.escape(accepted)}</span>' if accepted else ""
        if guess is not None:
            title += f"; rejected guess: {decode([guess])!r}"
            body += f'<del class="rej" style="{REJECTED_STYLE}">{html.escape(decode([guess]))}</del>'
        body += f'<span style="{BONUS_STYLE}">{html.escape(bonus)}</span>' if bonus else ""
        data = f' data-step="{step.index}"' if selectable else ""
        bands.append(f'<span class="tr-band"{data} title="{html.escape(title)}">{body}</span>')
    legend = "green: accepted drafts · amber: the model's own tokens" + (" · click text to open its step"
                                                                         if selectable else "")
    return _container("".join(bands), legend, toggle=True)


def plain_html(steps: list[Step], decode: Callable[[list[int]], str]) -> str:
    """The output in the same box as `banded_html`, without bands (for the baseline)."""
    text = decode([t for step in steps for t in step.tokens]) if steps else ""
    return _container(html.escape(text), "one token per model call: nothing drafted")


def pane_html(title: str, steps: list[Step], decode: Callable[[list[int]], str], banded: bool,
              selectable: bool = False) -> str:
    """One decoder's text so far under a heading with its own compute clock (`selectable`: see
    `banded_html`)."""
    clock = f"{steps[-1].elapsed_s:.2f} s of its own compute" if steps else "waiting"
    done = ", done" if steps and steps[-1].finished else ""
    body = banded_html(steps, decode, selectable) if banded else plain_html(steps, decode)
    return f'<p class="pane-title">{html.escape(title)}: {clock}{done}</p>{body}'
