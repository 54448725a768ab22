"""The adjacency matrix as HTML: the rows one step overwrote, a single row looked up, a size summary.

Every row a step writes replaces the token's k candidates with the model's latest top-k at that
token. The table shows each such row twice, before and after the overwrite: dropped candidates struck
through, new ones highlighted, which is how much the matrix "learned" in that step. Columns share the
table's width, so k = 8 fits a 600 px panel; a long token wraps inside its cell, never cut. Drafts read from
pair rows (keyed by two tokens in a row) are explained in the note above the table. All token text
goes through `html.escape`.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from tr.records import OriginKind, RowWrite, Step

from .style import Meaning

TABLE_STYLE = ("border-collapse:collapse;font-size:12px;font-family:ui-monospace,Menlo,Consolas,monospace;"
               "table-layout:fixed;width:100%;min-width:{width}px")
COLUMN_PX = 44  # narrowest readable candidate column: wider tables scroll rather than squeeze
CELL_STYLE = ("border:1px solid #e5e7eb;padding:1px 3px;white-space:pre-wrap;overflow-wrap:anywhere;"
              "color:#111827")
HEAD_STYLE = CELL_STYLE + ";background:#f3f4f6;font-weight:600"
CHANGED_STYLE = CELL_STYLE + f";background:{Meaning.NEW.tint};font-weight:600"
ROOT_STYLE = CELL_STYLE + ";background:#f3f4f6;font-weight:700;border:2px solid #111827"
BEFORE_STYLE = CELL_STYLE + ";color:#6b7280;background:#fafafa"
DROPPED_STYLE = BEFORE_STYLE + ";text-decoration:line-through"
WHEN_STYLE = CELL_STYLE + ";color:#6b7280;font-family:Inter,Segoe UI,Helvetica,Arial,sans-serif"
NOTE_STYLE = "font-size:13px;color:#4b5563;margin:4px 0"


def _cell(text: str, style: str = CELL_STYLE, cls: str = "", tag: str = "td", title: str = "", rows: int = 1) -> str:
    attrs = f' class="{cls}"' if cls else ""
    attrs += f' rowspan="{rows}"' if rows > 1 else ""
    attrs += f' title="{html.escape(title)}"' if title else ""
    return f'<{tag}{attrs} style="{style}">{html.escape(text)}</{tag}>'


def _table_style(columns: int) -> str:
    return TABLE_STYLE.format(width=columns * COLUMN_PX)


def _header(k: int, when: bool = False) -> str:
    """Column heads: the row's token, (with `when`) before/after, then ranks 0 to k-1."""
    # Fixed widths for the label columns; the candidates share the rest of the table equally.
    heads = [_cell("token", HEAD_STYLE + ";width:6.5em", tag="th")]
    heads += [_cell("", HEAD_STYLE + ";width:3.6em", tag="th")] if when else []
    heads += [_cell(f"#{rank}", HEAD_STYLE, tag="th", title=f"candidate rank {rank}") for rank in range(k)]
    return "<thead><tr>" + "".join(heads) + "</tr></thead>"


def changed_candidates(write: RowWrite) -> set[int]:
    """The new candidates the old row did not hold (all of them for a row written the first time)."""
    return set(write.new) if not write.was_filled else set(write.new) - set(write.old)


def ordered_writes(step: Step) -> list[RowWrite]:
    """The step's row writes with the root's row first: it is the row that drafted the first layer."""
    root = step.draft.tokens[0] if step.draft else None
    return sorted(step.rows_written, key=lambda w: w.token != root)  # stable: the rest keep their order


def _before(write: RowWrite, token_text: Callable[[int], str]) -> str:
    """The row as it was: struck-through candidates are the ones the overwrite dropped."""
    if not write.was_filled:
        return f'<td colspan="{len(write.new)}" style="{BEFORE_STYLE}">(empty: first written at this step)</td>'
    kept = set(write.new)
    return "".join(_cell(token_text(c), BEFORE_STYLE, title=f"id {c}, kept") if c in kept
                   else _cell(token_text(c), DROPPED_STYLE, "dropped", title=f"id {c}, dropped")
                   for c in write.old)


def _after(write: RowWrite, token_text: Callable[[int], str]) -> str:
    changed = changed_candidates(write)
    return "".join(_cell(token_text(c), CHANGED_STYLE, "changed", title=f"id {c}, new in this row") if c in changed
                   else _cell(token_text(c), title=f"id {c}, already in the old row")
                   for c in write.new)


def _row(write: RowWrite, token_text: Callable[[int], str], is_root: bool) -> str:
    """Two table rows for one written row: before the overwrite, then after it."""
    label = token_text(write.token) + (" (root)" if is_root else "")
    tip = "root: this row drafted the tree's first layer" if is_root else f"token id {write.token}"
    head = _cell(label, ROOT_STYLE if is_root else HEAD_STYLE, "root" if is_root else "", "th", tip, rows=2)
    return (f'<tr class="before">{head}{_cell("before", WHEN_STYLE)}{_before(write, token_text)}</tr>'
            f'<tr class="after">{_cell("after", WHEN_STYLE)}{_after(write, token_text)}</tr>')


def rows_read(step: Step, token_text: Callable[[int], str]) -> list[tuple[str, str, list[str]]]:
    """The rows the step's drafts were read from, in draft order: (key, kind, ["#rank token", ...]). A pair
    row's key is the two tokens before the draft (for the root's children, the committed token before the
    root, which the step does not hold)."""
    draft = step.draft
    rows: dict[tuple, tuple[str, str, list[str]]] = {}
    for node in range(1, draft.size if draft else 0):
        origin, parent = draft.origins[node], draft.parents[node]
        if origin.kind not in (OriginKind.ROW, OriginKind.PAIR):
            continue
        key = repr(token_text(draft.tokens[parent]))
        if origin.kind is OriginKind.PAIR:
            before = repr(token_text(draft.tokens[draft.parents[parent]])) if parent else "(the token before)"
            key = f"{before}, {key}"
        entry = rows.setdefault((origin.kind, parent), (key, origin.kind.value, []))
        entry[2].append(f"#{draft.ranks[node]} {token_text(draft.tokens[node])!r}")
    return list(rows.values())


def rows_read_html(step: Step, token_text: Callable[[int], str]) -> str:
    """A table of the rows the step's drafts came from, pair rows (keyed by two tokens) explained once."""
    rows = rows_read(step, token_text)
    if not rows:
        return ""
    body = "".join(f"<tr>{_cell(key, HEAD_STYLE, tag='th')}{_cell(kind, WHEN_STYLE)}{_cell(', '.join(drafted))}</tr>"
                   for key, kind, drafted in rows)
    pairs = sum(1 for _, kind, _ in rows if kind == OriginKind.PAIR.value)
    note = (f"Step {step.index} drafted from {len(rows)} rows" +
            (f", {pairs} of them <b>pair rows</b>: keyed by the two tokens before the draft, not one, so they "
             "know one more token of context; the matrix keeps them beside the one-token rows" if pairs else ""))
    head = "".join(_cell(text, HEAD_STYLE, tag="th") for text in ("row of", "kind", "candidates drafted (rank, token)"))
    style = TABLE_STYLE.format(width=300) + ";table-layout:auto"  # three columns of any width: let them size
    return (f'<div class="tr-rows-read"><p style="{NOTE_STYLE}">{note}.</p><table style="{style}">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def rows_table_html(step: Step, token_text: Callable[[int], str], max_rows: int | None = None) -> str:
    """The rows `step` read its drafts from (`rows_read_html`), then a table of every row it overwrote
    (or the first `max_rows`): each token's row before the overwrite (dropped candidates struck through)
    and after it (new candidates highlighted), the root's row first."""
    writes = ordered_writes(step)
    if not writes:
        return f'<p style="{NOTE_STYLE}">Step {step.index} wrote no rows of the adjacency matrix.</p>'
    root = step.draft.tokens[0] if step.draft else None
    k = len(writes[0].new)
    shown = writes[:max_rows] if max_rows else writes
    changed = sum(len(changed_candidates(w)) for w in writes)
    rows = f"{len(writes):,} row{'' if len(writes) == 1 else 's'}"
    note = (f"Step {step.index} overwrote {rows}, each shown before → after the overwrite "
            f"({changed:,} of {len(writes) * k:,} candidates new, <span style=\"{CHANGED_STYLE}\">highlighted</span>; "
            f"dropped ones <span style=\"{DROPPED_STYLE}\">struck through</span>; · is a space)")
    if len(shown) < len(writes):
        note += f"; showing the first {max_rows:,}"
    body = "".join(_row(w, token_text, w.token == root) for w in shown)
    return (f'{rows_read_html(step, token_text)}<div class="tr-rows"><p style="{NOTE_STYLE}">{note}.</p>'
            f'<table style="{_table_style(k + 2)}">{_header(k, when=True)}<tbody>{body}</tbody></table></div>')


def row_lookup_html(token: int, candidates: list[int] | None, token_text: Callable[[int], str]) -> str:
    """One row of the matrix: the token's candidates by rank, or a note that it was never written."""
    name = html.escape(token_text(token))
    if candidates is None:
        return (f'<p style="{NOTE_STYLE}">The row of <code>{name}</code> (id {token}) has not been written yet: '
                "a tree rooted here would draft token id 0 everywhere.</p>")
    cells = _cell(token_text(token), HEAD_STYLE, tag="th") + "".join(
        _cell(token_text(c), title=f"id {c}") for c in candidates)
    return (f'<div class="tr-row"><p style="{NOTE_STYLE}">Candidates after <code>{name}</code> (id {token}), '
            f'best first:</p><table style="{_table_style(len(candidates) + 1)}">{_header(len(candidates))}'
            f"<tbody><tr>{cells}</tr></tbody></table></div>")


def token_lookup_html(query: int | str, encode: Callable[[str], list[int]],
                      row_of: Callable[[int], list[int] | None], token_text: Callable[[int], str]) -> str:
    """The row of token id `query`, or of the first token of the text `query`: what a user looks up (the
    id already checked against the vocabulary where it was typed)."""
    if isinstance(query, int):
        return row_lookup_html(query, row_of(query), token_text)
    if not query:
        return f'<p style="{NOTE_STYLE}">Type a word (or <code>#id</code> for a token id) to see its row.</p>'
    ids = encode(query)
    if not ids:
        return f'<p style="{NOTE_STYLE}">That text has no tokens.</p>'
    token, note = ids[0], ""
    if len(ids) > 1:
        note = (f'<p style="{NOTE_STYLE}">"{html.escape(query)}" is {len(ids)} tokens; showing the first, '
                f"<code>{html.escape(token_text(token))}</code>. (A leading space makes a different token.)</p>")
    return note + row_lookup_html(token, row_of(token), token_text)


def human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def matrix_summary(rows_filled: int, vocab_size: int, nbytes: int) -> str:
    """E.g. "1,234 of 49,152 rows filled · 3.1 MB"."""
    return f"{rows_filled:,} of {vocab_size:,} rows filled · {human_bytes(nbytes)}"
