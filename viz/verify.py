"""The verification of one Token Recycling step, shown: the tree attention mask of its forward pass, and
a node-by-node account of what the model chose where and which drafted tokens counted.

Greedy steps record the model's choice after every node; sampled steps draw only along the path the
walk followed (`tr.decoding._sampled_path`) and record -1 elsewhere, so "the model's choice after the
parent" becomes "the draw at this depth", and a node below an undrawn parent was never looked at.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

import plotly.graph_objects as go

from tr.records import Step

from .style import Meaning, base_layout, empty_figure
from .tree import bonus_token, cell_text, has_tree, short

HIDDEN_COLOR = "#eef0f3"
SEEN_COLOR = "#94a3b8"  # neutral: blue means a new matrix candidate
MASK_LEGEND = ("hidden", "may see", "may see (a row on the accepted path)")
TABLE_CHARS = 14  # token text longer than this is cut in table cells (the cell's tooltip shows it whole)


@dataclass(frozen=True)
class Mark:
    """One kind of verdict: its row class, symbol and legend line (`{what}` is the model's choice or the
    draw, by mode)."""

    css: str
    symbol: str
    name: str
    meaning: str


ROOT_MARK = Mark("v-root", "●", "root", "the last committed token: the pass starts here, it is not a guess")
ACCEPTED_MARK = Mark("v-accepted", "✓", "accepted",
                     "on the accepted path: its token is {what} after its parent, and so is every token above it")
REJECTED_MARK = Mark("v-rejected", "✗", "first disagreement",
                     "the first node on its branch whose token is not {what} after its parent: the branch ends here")
UNKEPT_MARK = Mark("v-unkept", "=", "matched, not kept",
                   "its token is {what}, but a sibling with the same token carried the accepted path")
CUT_MARK = Mark("v-cut", "–", "cut", "below a rejected node: it never counted, whatever its token")
BONUS_MARK = Mark("v-bonus", "★", "bonus",
                  "{what} after the last accepted node: not drafted, always correct, committed with the drafts")
MARKS = (ROOT_MARK, ACCEPTED_MARK, REJECTED_MARK, UNKEPT_MARK, CUT_MARK, BONUS_MARK)


@dataclass(frozen=True)
class Verdict:
    """What verification made of one node. `other` is, for a cut node, the rejected (or unkept) ancestor
    its branch ends at; for an unkept one, the sibling that was kept; -1 otherwise."""

    mark: Mark
    other: int = -1


def is_sampled(step: Step, sampling: bool | None = None) -> bool:
    """Whether the step drew its tokens; None infers it: only sampling leaves choices undrawn (-1). A
    sampled step whose whole tree was accepted drew everywhere and reads as greedy: pass the mode."""
    return sampling if sampling is not None else any(c < 0 for c in step.choices)


def visibility(parents: list[int]) -> list[list[bool]]:
    """The tree attention mask: row i, column j is True when j is i or an ancestor of i (parents come
    before children, so each row extends its parent's)."""
    n = len(parents)
    rows: list[list[bool]] = []
    for node, parent in enumerate(parents):
        row = list(rows[parent]) if parent >= 0 else [False] * n
        row[node] = True
        rows.append(row)
    return rows


def verdicts(step: Step) -> list[Verdict]:
    """One verdict per draft node: only a child of the accepted path can be where its branch failed;
    everything below such a child is cut."""
    draft, on_path = step.draft, set(step.accepted)
    found: list[Verdict] = []
    for node, parent in enumerate(draft.parents):
        if node == 0:
            found.append(Verdict(ROOT_MARK))
        elif node in on_path:
            found.append(Verdict(ACCEPTED_MARK))
        elif parent in on_path:
            found.append(_branch_end(step, node, parent, on_path))
        else:
            above = found[parent]
            found.append(Verdict(CUT_MARK, above.other if above.mark is CUT_MARK else parent))
    return found


def _branch_end(step: Step, node: int, parent: int, on_path: set[int]) -> Verdict:
    """A child of the accepted path that is off it: wrong, or right but beaten by a same-token sibling
    (only a duplicate token can match and still lose: the model makes one choice per node)."""
    if step.draft.tokens[node] != step.choices[parent]:
        return Verdict(REJECTED_MARK)
    kept = next(c for c, p in enumerate(step.draft.parents) if p == parent and c in on_path)
    return Verdict(UNKEPT_MARK, kept)


def _said(token: int, token_text: Callable[[int], str]) -> str:
    """A token quoted as plain text (escape it before it goes into HTML)."""
    return f"'{token_text(token)}'"


def _either(tokens: list[int], token_text: Callable[[int], str], shown: int = 3) -> str:
    """"'a', 'b' or 'c'", or "'a', 'b', 'c' or 4 more"; each token once (cold rows repeat token 0)."""
    said = [_said(t, token_text) for t in dict.fromkeys(tokens)]
    if len(said) > shown:
        return f"{', '.join(said[:shown])} or {len(said) - shown} more"
    return said[0] if len(said) == 1 else f"{', '.join(said[:-1])} or {said[-1]}"


def _plural(n: int, word: str, plural: str = "") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


def verification_summary(step: Step, token_text: Callable[[int], str], sampling: bool | None = None) -> str:
    """One sentence on the step's verification, as plain text (escape it for HTML), e.g. "drafted 7
    tokens on 3 branches; the model agreed with 2 in a row, then chose 'x' where the tree had 'y'; 3
    tokens committed (2 accepted + 1 bonus)"."""
    if not has_tree(step):
        return f"step {step.index} drafted nothing: it committed {_plural(len(step.tokens), 'token')} without a tree"
    draft, sampled = step.draft, is_sampled(step, sampling)
    branches = sum(1 for node in range(1, draft.size) if node not in draft.parents)
    last, agreed = step.accepted[-1], step.accepted_drafts
    children = [draft.tokens[c] for c, p in enumerate(draft.parents) if p == last]
    bonus, verb = _said(bonus_token(step), token_text), "drew" if sampled else "chose"
    lead = (f"the draws matched {agreed} in a row, then the model" if sampled
            else f"the model agreed with {agreed} in a row, then") if agreed else "the model"
    if children:
        verdict = f"{lead} {verb} {bonus} where the tree had {_either(children, token_text)}"
    else:  # the whole branch was accepted: only a leaf has no children
        verdict = f"{lead} reached the end of its branch and {verb} {bonus} as the bonus"
    committed = f"{_plural(len(step.tokens), 'token')} committed ({agreed} accepted + 1 bonus"
    if len(step.tokens) < agreed + 1:
        committed += ", cut short by the end of the text or the length limit"
    shape = f"drafted {_plural(step.drafted, 'token')} on {_plural(branches, 'branch', 'branches')}"
    return f"{shape}; {verdict}; {committed})"


def caption_html(step: Step, token_text: Callable[[int], str], sampling: bool | None = None) -> str:
    """The step's verdict in one sentence, as the tree's caption (escaped: token text is anyone's)."""
    summary = verification_summary(step, token_text, sampling)
    if not has_tree(step):  # the summary names the step itself
        return f'<p class="caption">{html.escape(summary[:1].upper() + summary[1:])}.</p>'
    return f'<p class="caption"><b>Step {step.index}:</b> {html.escape(summary)}.</p>'


# --- the attention mask ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Scale:
    """Sizes that keep a mask of n nodes legible: fewer pixels and characters as n grows."""

    font: int
    row_px: int
    chars: int  # token characters in a row label
    column_step: int  # label every column_step-th column
    column_text: bool  # column labels carry the token too (not just the index)

    @staticmethod
    def of(n: int) -> Scale:
        if n <= 20:
            return Scale(11, 24, 10, 1, True)
        if n <= 40:
            return Scale(9, 15, 8, 1, False)
        return Scale(8, 11, 6, 5, False)


def _label(node: int, token: int, token_text: Callable[[int], str], chars: int, prefix: str = "node ") -> str:
    return html.escape(f"{prefix}{node}: '{short(token_text(token), chars)}'", quote=False)


def _mask_hover(step: Step, mask: list[list[bool]], token_text: Callable[[int], str]) -> list[list[str]]:
    names = [html.escape(f"node {i} '{token_text(t)}'", quote=False) for i, t in enumerate(step.draft.tokens)]
    return [[f"{names[i]} {'may see' if seen else 'cannot see'} {names[j]}" for j, seen in enumerate(row)]
            for i, row in enumerate(mask)]


MASK_COLORS = (HIDDEN_COLOR, SEEN_COLOR, Meaning.ACCEPTED.strong)  # z = 0, 1, 2, named by MASK_LEGEND


def _mask_colorscale() -> list[list]:
    """Three flat bands over z = 0, 1, 2 (zmin -0.5, zmax 2.5)."""
    return [[edge, color] for i, color in enumerate(MASK_COLORS) for edge in (i / 3, (i + 1) / 3)]


def _mask_legend() -> list[go.Scatter]:
    """A legend entry per cell colour: a horizontal legend reads better than a colour bar of three bands
    and leaves the panel's width to the cells."""
    return [go.Scatter(x=[None], y=[None], mode="markers", name=name, hoverinfo="skip",
                       marker=dict(symbol="square", size=12, color=color, line=dict(color="#9ca3af", width=1)))
            for name, color in zip(MASK_LEGEND, MASK_COLORS)]


def attention_mask_figure(step: Step, token_text: Callable[[int], str]) -> go.Figure:
    """The tree attention mask of the step's pass: row = a drafted token (the query), column = a token of
    the same pass; a cell is coloured where the row may attend to the column (itself and its ancestors),
    in green on the accepted path's rows."""
    if not has_tree(step):
        return empty_figure(f"Step {step.index}", "No draft tree: this step verified no tree, so no tree mask.")
    draft, n = step.draft, step.draft.size
    mask, on_path, scale = visibility(draft.parents), set(step.accepted), Scale.of(n)
    z = [[(2 if i in on_path else 1) if seen else 0 for seen in row] for i, row in enumerate(mask)]
    gap = 1 if n <= 40 else 0  # cell borders help small masks; on large ones they eat the cells
    heat = go.Heatmap(z=z, x=list(range(n)), y=list(range(n)), zmin=-0.5, zmax=2.5, colorscale=_mask_colorscale(),
                      showscale=False, xgap=gap, ygap=gap, hoverinfo="text",
                      hovertext=_mask_hover(step, mask, token_text), name="mask", showlegend=False)
    rows = [_label(i, t, token_text, scale.chars) for i, t in enumerate(draft.tokens)]
    # Bold row labels mark the accepted path even where a printout loses the colours.
    rows = [f"<b>{label}</b>" if i in on_path else label for i, label in enumerate(rows)]
    columns = list(range(0, n, scale.column_step))
    column_text = [_label(i, draft.tokens[i], token_text, scale.chars, "") if scale.column_text else str(i)
                   for i in columns]
    fig = base_layout(go.Figure([heat, *_mask_legend()]),
                      f"Step {step.index}: what each drafted token may see in the verification pass",
                      height=n * scale.row_px + (260 if scale.column_text else 220))
    fig.update_layout(
        title=dict(font=dict(size=14), yref="container", y=1, yanchor="top", pad=dict(t=12), subtitle=dict(
            text="Row: a drafted token. Coloured: the tokens it may attend to, itself and its ancestors."
                 "<br>Every row also sees the committed text before the pass (not drawn).", font=dict(size=11))),
        margin=dict(t=105, l=10, r=10, b=10), font=dict(size=scale.font), hovermode="closest",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0, font=dict(size=11), itemclick=False,
                    itemdoubleclick=False))
    fig.update_xaxes(tickmode="array", tickvals=columns, ticktext=column_text, tickangle=-90, automargin=True,
                     title=dict(text="may attend to (node)", font=dict(size=11)), showgrid=False, zeroline=False,
                     range=[-0.5, n - 0.5])
    fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=list(range(n)), ticktext=rows,
                     title=dict(text="drafted token (query)", font=dict(size=11)), showgrid=False, zeroline=False,
                     automargin=True)
    return fig


# --- the table -------------------------------------------------------------------------------------

def _token_cell(token: int, token_text: Callable[[int], str]) -> str:
    full = html.escape(f"'{token_text(token)}' (id {token})")
    return f'<td title="{full}"><code>{html.escape(short(token_text(token), TABLE_CHARS))}</code></td>'


def _choice_cell(step: Step, node: int, token_text: Callable[[int], str]) -> str:
    parent = step.draft.parents[node]
    if parent < 0:
        return "<td>—</td>"
    choice = step.choices[parent]
    return _token_cell(choice, token_text) if choice >= 0 else '<td class="v-none">not drawn</td>'


def _verdict_text(step: Step, node: int, verdict: Verdict, sampled: bool, token_text: Callable[[int], str]) -> str:
    mark = verdict.mark
    if mark is ROOT_MARK:
        return "root: already committed"
    if mark is ACCEPTED_MARK:
        return "accepted: matched the draw" if sampled else "accepted"
    if mark is UNKEPT_MARK:
        return f"matched, but node {verdict.other} was kept"
    if mark is CUT_MARK:
        return f"cut: below node {verdict.other}" + (", not drawn" if sampled else "")
    drafted, chosen = step.draft.tokens[node], step.choices[step.draft.parents[node]]
    why = "the draw was" if sampled else "the model chose"
    return f"first disagreement: {why} {_said(chosen, token_text)}, the tree had {_said(drafted, token_text)}"


def _node_row(step: Step, node: int, verdict: Verdict, sampled: bool, token_text: Callable[[int], str]) -> str:
    draft = step.draft
    # `cell_text` escapes its token text already.
    source = cell_text(step, node, token_text) if node else "the text so far"
    verdict_text = html.escape(_verdict_text(step, node, verdict, sampled, token_text))
    parent = draft.parents[node]
    return (f'<tr class="{verdict.mark.css}" data-node="{node}"><td class="num">{node}</td>'
            f'<td class="num">{draft.depths[node]}</td><td class="num">{parent if parent >= 0 else "—"}</td>'
            f"{_token_cell(draft.tokens[node], token_text)}"
            f"<td>{source}</td>{_choice_cell(step, node, token_text)}"
            f'<td class="verdict">{verdict.mark.symbol} {verdict_text}</td></tr>')


def _bonus_row(step: Step, token_text: Callable[[int], str]) -> str:
    last = step.accepted[-1]
    return (f'<tr class="{BONUS_MARK.css}" data-node="bonus"><td class="num">+</td>'
            f'<td class="num">{step.draft.depths[last] + 1}</td><td class="num">{last}</td><td>—</td>'
            f"<td>not drafted</td>{_token_cell(bonus_token(step), token_text)}"
            f'<td class="verdict">{BONUS_MARK.symbol} bonus: always correct</td></tr>')


def _header(sampled: bool) -> str:
    choice = ("draw at this depth", "the token drawn from the model's distribution after the parent") if sampled \
        else ("model's choice after parent", "the model's most likely token after the parent node")
    columns = [("node", "index in the draft tree"), ("depth", "tokens after the root"),
               ("parent", "the node it follows"), ("drafted", "the token the tree guessed"),
               ("drafted from", "the matrix row and rank it was read from, or the text it was copied from"),
               choice, ("verdict", "what verification made of it")]
    return "<thead><tr>" + "".join(f'<th title="{html.escape(tip)}">{html.escape(name)}</th>'
                                   for name, tip in columns) + "</tr></thead>"


def _legend(marks: list[Mark], sampled: bool) -> str:
    what = "the draw" if sampled else "the model's choice"
    lines = "".join(f'<li><span class="swatch {m.css}">{m.symbol}</span><b>{html.escape(m.name)}</b>: '
                    f"{html.escape(m.meaning.format(what=what))}</li>" for m in marks)
    if sampled:
        lines += ('<li><span class="v-none">not drawn</span>: sampling draws only at the nodes the walk reached, '
                  "so nodes below a rejected one were never compared</li>")
    return f'<ul class="tr-verify-legend">{lines}</ul>'


def verification_html(step: Step, token_text: Callable[[int], str], sampling: bool | None = None) -> str:
    """A table of the step's verification, one row per draft node and one for the bonus token: where each
    drafted token came from, what the model chose (or drew) after its parent, and the verdict. `sampling`
    None infers the mode from the step (`is_sampled`)."""
    if not has_tree(step):
        return (f'<div class="tr-verify"><p class="tr-verify-summary">Step {step.index} verified no draft tree: '
                "nothing to check.</p></div>")
    sampled, found = is_sampled(step, sampling), verdicts(step)
    body = "".join(_node_row(step, node, v, sampled, token_text) for node, v in enumerate(found))
    body += _bonus_row(step, token_text)
    shown = [m for m in MARKS if m is BONUS_MARK or any(v.mark is m for v in found)]
    summary = html.escape(verification_summary(step, token_text, sampled))
    return (f'<div class="tr-verify"><p class="tr-verify-summary">Step {step.index}: {summary}.</p>'
            f'<div class="tr-verify-scroll"><table>{_header(sampled)}<tbody>{body}</tbody></table></div>'
            f"{_legend(shown, sampled)}</div>")
