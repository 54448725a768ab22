"""The draft tree of one Token Recycling step, as a plotly figure.

The tree is held as a networkx graph (node 0 is the root, the last committed token; the bonus token
is an extra node hanging off the last accepted one) and drawn with a layered layout: depth on the x
axis, siblings spread vertically in rank order and kept near their parent, so an 81-node tree with
layers of 8, 18, 22, 14, 11 and 7 nodes stays readable. Hovering a node says which matrix cell it
was drafted from; `interesting_step` and `marks_for` pick the steps worth opening on.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx
import plotly.graph_objects as go

from tr.records import OriginKind, Step

from .style import Meaning, base_layout, empty_figure

BONUS = "bonus"  # graph key of the bonus node; draft nodes are keyed by their index
ROW_GAP = 1.0  # vertical distance between neighbouring nodes of one layer, in y units
ROW_PX = 26  # pixels per y unit: room for one line of label text
MIN_ROW_PX = 13  # squeezed this far to keep a wide tree within MAX_HEIGHT (hover still shows each label)
MAX_HEIGHT = 400  # the tree shares the first screen with the text panes and the numbers
LABEL_CHARS = 12  # longer token texts are cut in labels (hover shows them whole)


@dataclass(frozen=True)
class Kind:
    """How one category of node is drawn."""

    name: str  # legend entry
    color: str
    symbol: str
    size: int
    label_color: str
    opacity: float = 1.0


# Colours from the page's palette (`viz.style.Meaning`); the root is black: it is committed, not a guess.
ROOT = Kind("root (last committed token)", "#111827", "square", 13, "#111827")
ACCEPTED = Kind("accepted draft", Meaning.ACCEPTED.strong, "circle", 12, "#14532d")
REJECTED = Kind("rejected draft (or on a branch the model left)", Meaning.REJECTED.strong, "circle", 9, "#991b1b",
                0.55)
BONUS_KIND = Kind("bonus token (model's own choice)", Meaning.BONUS.strong, "star", 18, "#92400e")
KINDS = (ROOT, ACCEPTED, REJECTED, BONUS_KIND)
PATH_EDGE = dict(color=Meaning.ACCEPTED.strong, width=3.5)
BONUS_EDGE = dict(color=Meaning.BONUS.strong, width=2.5, dash="dot")
OTHER_EDGE = dict(color="#d4d4d8", width=1)


def has_tree(step: Step) -> bool:
    """Whether the step verified a draft tree (prefill and autoregressive steps do not)."""
    return step.draft is not None and step.draft.size > 1


def most_accepted_step(steps: list[Step]) -> int:
    """The step that accepted the most drafts (the first of them): the most telling tree to show first."""
    decoding = range(1, len(steps)) if len(steps) > 1 else range(len(steps))  # step 0 (prefill) has no tree
    return max(decoding, key=lambda i: (steps[i].accepted_drafts, -i)) if steps else 0


def interesting_step(steps: list[Step]) -> int:
    """A step to open on that shows both outcomes: the most accepted (the first of them) among steps
    with accepted and rejected drafts; else `most_accepted_step`."""
    mixed = [i for i, s in enumerate(steps) if i and has_tree(s) and 0 < s.accepted_drafts < s.drafted]
    return max(mixed, key=lambda i: (steps[i].accepted_drafts, -i)) if mixed else most_accepted_step(steps)


def failed_step(steps: list[Step]) -> int | None:
    """The first step whose whole tree was rejected (it wrote only the model's own token)."""
    return next((i for i, s in enumerate(steps) if i and has_tree(s) and not s.accepted_drafts), None)


def marks_for(steps: list[Step]) -> dict[int, str]:
    """Steps worth a look, by index, in words for slider labels: the most accepted (a good step), the
    first with a rejected draft, the first rejected outright (a failed step), the largest tree. One step
    can earn several names."""
    trees = [i for i, s in enumerate(steps) if i and has_tree(s)]
    if not trees:
        return {}
    picks = {
        "good: most accepted": most_accepted_step(steps),
        "failed: all rejected": failed_step(steps),
        "first rejection": next((i for i in trees if steps[i].accepted_drafts < steps[i].drafted), None),
        "largest tree": max(trees, key=lambda i: (steps[i].drafted, -i)),
    }
    marks: dict[int, str] = {}
    for name, i in picks.items():
        if i is not None:
            marks[i] = f"{marks[i]}, {name}" if i in marks else name
    return marks


def bonus_token(step: Step) -> int:
    """The model's choice after the last accepted node (the token emitted on top of the drafts)."""
    choice = step.choices[step.accepted[-1]] if step.accepted and step.choices else -1
    return choice if choice >= 0 else step.tokens[-1]


def quoted(token: int, token_text: Callable[[int], str]) -> str:
    """Token text quoted and escaped: plotly renders a subset of HTML, so a token like "<b>" must not act as a tag."""
    return html.escape(f"'{token_text(token)}'", quote=False)


def agreement(step: Step, node: int, token_text: Callable[[int], str]) -> str:
    """Did the model, at this node's parent, choose this node's token? In words, for hover text."""
    choice = step.choices[step.draft.parents[node]]
    if choice < 0:
        return "not checked (the model's choice was not drawn here)"
    if choice == step.draft.tokens[node]:
        return "yes"
    return f"no: it chose {quoted(choice, token_text)}"


def cell_text(step: Step, node: int, token_text: Callable[[int], str]) -> str:
    """Which matrix cell a drafted node was read from ("row of 'the', rank 2"; a pair row is keyed by the
    grandparent and parent tokens), or that it was copied from the text."""
    draft = step.draft
    origin, parent = draft.origins[node], draft.parents[node]
    if origin.kind is OriginKind.LOOKUP:
        return f"copied from the text: what followed an earlier occurrence of its last {origin.level} token(s)"
    key = quoted(draft.tokens[parent], token_text)
    if origin.kind is OriginKind.PAIR:
        # The root's pair row is keyed by the committed token before it, which the step does not hold.
        before = quoted(draft.tokens[draft.parents[parent]], token_text) if parent else "the token before"
        key = f"({before}, {key})"
    low = origin.level * 10
    return f"row of {key}, rank {draft.ranks[node]} (given {low}-{low + 10}% when written)"


def tree_graph(step: Step, token_text: Callable[[int], str]) -> nx.DiGraph:
    """The step's draft tree plus the bonus node; every node carries depth, rank, kind and hover text."""
    graph, draft = nx.DiGraph(), step.draft
    accepted = set(step.accepted)
    for node, token in enumerate(draft.tokens):
        depth = draft.depths[node]
        if node == 0:
            kind = ROOT
            hover = f"node 0 (root), depth 0<br>token {quoted(token, token_text)}<br>the last committed token"
        else:
            kind = ACCEPTED if node in accepted else REJECTED
            chance = f"<br>estimated chance: {draft.scores[node]:.0%}" if draft.scores else ""
            hover = (f"node {node}, depth {depth}, from the {cell_text(step, node, token_text)}"
                     f"<br>token {quoted(token, token_text)}{chance}"
                     f"<br>model agreed: {agreement(step, node, token_text)}")
        graph.add_node(node, token=token, depth=depth, rank=draft.ranks[node], kind=kind, hover=hover)
        if node:
            graph.add_edge(draft.parents[node], node, on_path=node in accepted)
    last = step.accepted[-1]
    token = bonus_token(step)
    hover = (f"bonus token {quoted(token, token_text)}<br>the model's own choice after node {last};"
             "<br>always correct, emitted without drafting")
    # Rank past every real candidate so the bonus sits below its siblings in the layout.
    graph.add_node(BONUS, token=token, depth=draft.depths[last] + 1, rank=draft.size,
                   kind=BONUS_KIND, hover=hover)
    graph.add_edge(last, BONUS, on_path=False)
    return graph


def layered_layout(graph: nx.DiGraph, gap: float = ROW_GAP) -> dict:
    """(x, y) per node: x = depth; y grows downwards, layer by layer.

    Each node first wants to sit next to its parent (siblings centred on it, in rank order); then the
    layer is swept top to bottom to keep `gap` between neighbours and shifted back so it stays centred
    on where its nodes wanted to be. Ordering by (parent y, rank) means edges never cross.
    """
    layers: dict[int, list] = {}
    for node, data in graph.nodes(data=True):
        layers.setdefault(data["depth"], []).append(node)
    pos = {}
    for depth in sorted(layers):
        nodes = layers[depth]
        if depth == 0:
            pos.update({node: (0.0, i * gap) for i, node in enumerate(nodes)})
            continue
        parent = {node: next(iter(graph.predecessors(node))) for node in nodes}
        nodes.sort(key=lambda n: (pos[parent[n]][1], graph.nodes[n]["rank"]))
        wanted = []
        for node in nodes:
            siblings = sorted(graph.successors(parent[node]), key=lambda n: graph.nodes[n]["rank"])
            offset = siblings.index(node) - (len(siblings) - 1) / 2
            wanted.append(pos[parent[node]][1] + offset * gap)
        placed = []
        for y in wanted:
            placed.append(y if not placed else max(y, placed[-1] + gap))
        shift = sum(w - p for w, p in zip(wanted, placed)) / len(placed)
        pos.update({node: (float(depth), y + shift) for node, y in zip(nodes, placed)})
    return pos


def short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _edge_trace(pos: dict, edges: list, line: dict, name: str) -> go.Scatter:
    xs: list = []
    ys: list = []
    for a, b in edges:
        xs += [pos[a][0], pos[b][0], None]
        ys += [pos[a][1], pos[b][1], None]
    return go.Scatter(x=xs, y=ys, mode="lines", line=line, hoverinfo="skip", showlegend=False, name=name)


def _node_trace(graph: nx.DiGraph, pos: dict, kind: Kind) -> go.Scatter:
    nodes = [n for n, data in graph.nodes(data=True) if data["kind"] is kind]
    # plotly drops a trace without points from the legend: a blank point keeps every kind explained.
    xs, ys = ([pos[n][0] for n in nodes], [pos[n][1] for n in nodes]) if nodes else ([None], [None])
    return go.Scatter(
        x=xs, y=ys, mode="markers", name=kind.name,
        marker=dict(color=kind.color, symbol=kind.symbol, size=kind.size, opacity=kind.opacity,
                    line=dict(color="white", width=1)),
        customdata=nodes, hovertext=[graph.nodes[n]["hover"] for n in nodes], hoverinfo="text",
    )


def _labels(graph: nx.DiGraph, pos: dict, token_text: Callable[[int], str]) -> list[dict]:
    """One boxed label right of each node; the opaque box keeps text readable over crossing edges."""
    return [
        dict(x=pos[n][0], y=pos[n][1], text=html.escape(short(token_text(data["token"])), quote=False),
             showarrow=False, xanchor="left", xshift=9, font=dict(size=11, color=data["kind"].label_color),
             bgcolor="rgba(255,255,255,0.9)", borderpad=1, hovertext=data["hover"])
        for n, data in graph.nodes(data=True)
    ]


def title_of(step: Step) -> str:
    title = f"Step {step.index}: drafted {step.drafted}, accepted {step.accepted_drafts} + bonus"
    if len(step.tokens) < step.accepted_drafts + 1:
        title += f" (output cut to {len(step.tokens)} by end of text or length limit)"
    return title


def tree_figure(step: Step, token_text: Callable[[int], str]) -> go.Figure:
    """The step's draft tree: accepted path, bonus token as a star, rejected drafts faded, in the page's
    palette."""
    if not has_tree(step):
        if step.index == 0:
            what = "the prefill over the prompt"
        elif step.draft is not None and step.draft.probe:
            what = "a timing probe (the root alone, a plain decoding step: it keeps the cost curve honest)"
        elif step.draft is not None:
            what = "a step with nothing to draft (no match to copy, or an empty row): one call, one token"
        else:
            what = "a step without drafting"
        return empty_figure(f"Step {step.index}", f"No draft tree: this is {what}.")
    graph = tree_graph(step, token_text)
    pos = layered_layout(graph)
    path_edges = [(a, b) for a, b, on_path in graph.edges(data="on_path") if on_path]
    other_edges = [(a, b) for a, b, on_path in graph.edges(data="on_path") if not on_path and b != BONUS]
    traces = [
        _edge_trace(pos, other_edges, OTHER_EDGE, "draft edges"),
        _edge_trace(pos, path_edges, PATH_EDGE, "accepted path"),
        _edge_trace(pos, [(step.accepted[-1], BONUS)], BONUS_EDGE, "bonus edge"),
    ]
    traces += [_node_trace(graph, pos, kind) for kind in KINDS]
    ys = [y for _, y in pos.values()]
    # One row of text per gap over the whole y extent: at least the widest layer, more where the
    # sweep pushed a layer beyond its node count.
    rows = (max(ys) - min(ys)) / ROW_GAP + 1
    row_px = max(MIN_ROW_PX, min(ROW_PX, (MAX_HEIGHT - 90) / rows))
    fig = base_layout(go.Figure(traces), title_of(step), height=int(min(MAX_HEIGHT, max(260, rows * row_px + 90))))
    max_depth = max(x for x, _ in pos.values())
    # The page's legend (`viz.style.legend_html`) explains the colours: no plotly legend to crowd the title.
    fig.update_layout(annotations=_labels(graph, pos, token_text), hovermode="closest", showlegend=False,
                      margin=dict(l=20, r=20, t=40, b=40))
    fig.update_xaxes(title="depth (tokens after the root)", range=[-0.3, max_depth + 0.9],
                     tickmode="linear", dtick=1, showgrid=False, zeroline=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    return fig
