"""Tests of the figures and HTML in `viz/`, on hand-built step records and on a real Token Recycling run
of a tiny random model (no download, a few seconds)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tr.decoding import autoregressive, token_recycling
from tr.matrix import AdjacencyMatrix
from tr.drafts import TemplateDrafter
from tr.records import LOOKUP, ROOT_ORIGIN, Draft, Origin, OriginKind, RowWrite, Step
from tr.trees import DraftTree, best_first_template, validate_paths
from viz import (
    accepted_histogram, banded_html, mat_over_steps, matrix_summary, plain_html, row_lookup_html,
    rows_table_html, speedup_over_steps, tokens_vs_time, tree_figure,
)
import viz
from viz.style import note_of
from viz.text import step_pieces
from viz.tree import ACCEPTED, BONUS_KIND, REJECTED, ROOT, ROW_GAP, ROW_PX

PROMPT = [1, 2, 3, 4, 5]


def token_text(token: int) -> str:
    return f"t{token}"


def nasty_text(token: int) -> str:
    """Token text that breaks HTML unless escaped."""
    return "<b>" if token % 2 else f"a&{token}"


def draft(tokens: list[int], parents: list[int], ranks: list[int] | None = None, **fields) -> Draft:
    """A hand-built draft: depths follow the parents; candidates come from rows at 50-60%, LOOKUP ranks
    from a 2-token match."""
    ranks = ranks if ranks is not None else [-1] + [0] * (len(tokens) - 1)
    depths = [0]
    for parent in parents[1:]:
        depths.append(depths[parent] + 1)
    origins = [ROOT_ORIGIN] + [Origin(OriginKind.LOOKUP, 2) if r == LOOKUP else Origin(OriginKind.ROW, 5)
                               for r in ranks[1:]]
    scores = fields.pop("scores", [1.0] * len(tokens))
    return Draft(tokens, parents, depths, ranks, origins, scores, **fields)


def trace(fig, name: str):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, f"expected one trace named {name!r}"
    return matches[0]


@pytest.fixture(scope="module")
def runs() -> dict[str, list[Step]]:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).to(torch.float64).eval()
    drafter = TemplateDrafter(DraftTree.from_paths(best_first_template("paper-80", 8)))
    tr_steps = list(token_recycling(model, PROMPT, 24, AdjacencyMatrix(64, 8), drafter))
    ar_steps = list(autoregressive(model, PROMPT, 24))
    return {"ar": ar_steps, "tr": tr_steps}


@pytest.fixture(scope="module")
def best_step(runs) -> Step:
    """The real step that accepted the most drafts (a random model repeats itself, so some do)."""
    step = max(runs["tr"][1:], key=lambda s: s.accepted_drafts)
    assert step.accepted_drafts >= 1 and step.draft.size == 81
    return step


def small_step(choices: list[int] | None = None, tokens: list[int] | None = None) -> Step:
    """Root 10 with children 11 (rank 0) and 12 (rank 1); 11 has children 13 and 14.
    By default the model chose 11 after the root, 13 after 11 and 7 after 13: nodes 0, 1, 3 accepted."""
    choices = choices if choices is not None else [11, 13, 5, 7, 8]
    return Step(
        index=3, tokens=tokens if tokens is not None else [11, 13, 7],
        draft=draft([10, 11, 12, 13, 14], [-1, 0, 0, 1, 1], [-1, 0, 1, 0, 1]), choices=choices, accepted=[0, 1, 3],
    )


def timed(index: int, total_tokens: int, elapsed: float, n_tokens: int = 1) -> Step:
    return Step(index, [0] * n_tokens, total_tokens=total_tokens, total_forward_s=elapsed)


# --- draft tree -------------------------------------------------------------------------------------

def test_tree_colours_exactly_the_accepted_path(best_step):
    fig = tree_figure(best_step, token_text)
    assert list(trace(fig, ROOT.name).customdata) == [0]
    assert list(trace(fig, ACCEPTED.name).customdata) == best_step.accepted[1:]
    rejected = set(range(81)) - set(best_step.accepted)
    assert set(trace(fig, REJECTED.name).customdata) == rejected
    assert trace(fig, ACCEPTED.name).marker.color != trace(fig, REJECTED.name).marker.color
    assert fig.layout.title.text == f"Step {best_step.index}: drafted 80, accepted {best_step.accepted_drafts} + bonus"


def test_tree_bonus_node_hangs_off_the_last_accepted_node(best_step):
    fig = tree_figure(best_step, token_text)
    bonus = trace(fig, BONUS_KIND.name)
    last = best_step.accepted[-1]
    assert len(bonus.x) == 1 and bonus.marker.symbol == "star"
    assert bonus.x[0] == best_step.draft.depths[last] + 1
    assert best_step.tokens[-1] == best_step.choices[last]
    assert f"'t{best_step.tokens[-1]}'" in bonus.hovertext[0]
    edge = trace(fig, "bonus edge")
    nodes = {(x, y) for t in fig.data if t.mode == "markers" for x, y in zip(t.x, t.y)}
    assert (edge.x[0], edge.y[0]) in nodes and (edge.x[1], edge.y[1]) == (bonus.x[0], bonus.y[0])


def test_tree_hover_says_whether_the_model_agreed(best_step):
    fig = tree_figure(best_step, token_text)
    accepted = trace(fig, ACCEPTED.name)
    assert all("model agreed: yes" in h for h in accepted.hovertext)
    rejected = trace(fig, REJECTED.name)
    for node, hover in zip(rejected.customdata, rejected.hovertext):
        tree = best_step.draft
        agreed = tree.tokens[node] == best_step.choices[tree.parents[node]]
        assert ("model agreed: yes" in hover) == agreed
        assert f"node {node}, depth {tree.depths[node]}, candidate rank {tree.ranks[node]} of the parent's row" in hover


def test_tree_hover_says_where_each_node_came_from():
    step = Step(3, [11, 4], draft([10, 11, 12, 13], [-1, 0, 0, 1], [-1, 0, LOOKUP, 2]), choices=[11, 4, 5, 5],
                accepted=[0, 1])
    step.draft.origins[3] = Origin(OriginKind.PAIR, 3)
    fig = tree_figure(step, token_text)
    hovers = {n: h for t in fig.data if t.customdata is not None for n, h in zip(t.customdata, t.hovertext)}
    assert "candidate rank 0 of the parent's row, given 50-60% when written" in hovers[1]
    assert "copied by prompt lookup (a 2-token match)" in hovers[2]
    assert "candidate rank 2 of the pair row" in hovers[3] and "30-40%" in hovers[3]


def test_tree_layout_is_layered_legible_and_uncrossed(best_step):
    fig = tree_figure(best_step, token_text)
    position = {}
    for t in fig.data:
        if t.mode == "markers" and t.name != BONUS_KIND.name:
            position.update({node: (x, y) for node, x, y in zip(t.customdata, t.x, t.y)})
    assert sorted(position) == list(range(81))
    layers: dict[int, list[int]] = {}
    for node, depth in enumerate(best_step.draft.depths):
        assert position[node][0] == depth
        layers.setdefault(depth, []).append(node)
    assert [len(layers[d]) for d in range(1, 7)] == [8, 18, 22, 14, 11, 7]
    for nodes in layers.values():
        nodes.sort(key=lambda n: position[n][1])
        ys = [position[n][1] for n in nodes]
        assert all(b - a >= ROW_GAP - 1e-9 for a, b in zip(ys, ys[1:])), "labels of one layer overlap"
        parent_ys = [position[best_step.draft.parents[n]][1] for n in nodes if n]
        assert parent_ys == sorted(parent_ys), "edges cross"
    assert fig.layout.height >= 22 * ROW_PX
    assert len(fig.layout.annotations) == 82  # one label per draft node plus the bonus
    data = json.loads(fig.to_json())
    coordinates = [v for t in data["data"] for v in t["x"] + t["y"] if v is not None]
    assert coordinates and all(math.isfinite(v) for v in coordinates)


def test_tree_layout_orders_siblings_by_rank_for_any_template_order():
    # A custom template need only be sorted by depth: here rank 1 comes before rank 0 in each layer.
    tree = DraftTree.from_paths(validate_paths([[1], [0], [1, 0], [0, 1], [0, 0]], 2))
    step = Step(5, [20], draft([10, 11, 12, 13, 14, 15], tree.parents.tolist(), tree.ranks.tolist()),
                choices=[20] * 6, accepted=[0])
    fig = tree_figure(step, token_text)
    y = dict(zip(trace(fig, REJECTED.name).customdata, trace(fig, REJECTED.name).y))
    assert y[2] < y[1]  # rank 0 above rank 1
    assert y[5] < y[4] < y[3]  # children of node 2 (rank 0, 1) above the child of node 1


def test_tree_escapes_token_text_and_reports_disagreement():
    fig = tree_figure(small_step(), nasty_text)
    labels = [a.text for a in fig.layout.annotations]
    assert "&lt;b&gt;" in labels and "a&amp;10" in labels and "<b>" not in labels
    hovers = [h for t in fig.data if t.hovertext for h in t.hovertext]
    assert not any("<b>" in h for h in hovers)
    rejected = trace(fig, REJECTED.name)
    by_node = dict(zip(rejected.customdata, rejected.hovertext))
    assert "no: it chose" in by_node[2] and "no: it chose" in by_node[4]


def test_tree_sampling_mode_marks_undrawn_choices_not_checked():
    # Sampling draws only along the walked path: the choices at off-path nodes are -1.
    fig = tree_figure(small_step(choices=[11, 13, -1, 7, -1]), token_text)
    rejected = dict(zip(trace(fig, REJECTED.name).customdata, trace(fig, REJECTED.name).hovertext))
    assert "not checked" not in rejected[2] and "no: it chose 't11'" in rejected[2]
    accepted = dict(zip(trace(fig, ACCEPTED.name).customdata, trace(fig, ACCEPTED.name).hovertext))
    assert "model agreed: yes" in accepted[3]
    step = Step(4, [9], draft([10, 11, 12], [-1, 0, 1]), choices=[9, -1, -1], accepted=[0])
    fig = tree_figure(step, token_text)
    hovers = dict(zip(trace(fig, REJECTED.name).customdata, trace(fig, REJECTED.name).hovertext))
    assert "not checked" in hovers[2] and "no: it chose 't9'" in hovers[1]
    assert list(trace(fig, ACCEPTED.name).customdata) == []
    assert trace(fig, BONUS_KIND.name).x[0] == 1


def test_tree_title_notes_a_cut_output():
    fig = tree_figure(small_step(tokens=[11]), token_text)
    assert "accepted 2 + bonus" in fig.layout.title.text and "cut to 1" in fig.layout.title.text


def test_tree_of_prefill_and_autoregressive_steps_is_a_note(runs):
    for step in (runs["tr"][0], runs["ar"][1]):
        fig = tree_figure(step, token_text)
        assert not fig.data and "No draft tree" in note_of(fig)
    probe = Step(4, [7], draft([3], [-1], probe=True), accepted=[0])
    assert "timing probe" in note_of(tree_figure(probe, token_text))


# --- matrix ------------------------------------------------------------------------------------------

def test_rows_table_marks_exactly_the_new_candidates():
    step = Step(2, [5], draft([7, 3], [-1, 0]), rows_written=[
        RowWrite(3, old=[1, 2, 4], new=[2, 9, 1], was_filled=True),
        RowWrite(7, old=[1, 2, 4], new=[4, 6, 8], was_filled=True),  # the root: must come first
        RowWrite(5, old=[0, 0, 0], new=[0, 2, 1], was_filled=False),  # never filled: all new
    ])
    page = rows_table_html(step, token_text)
    rows = re.findall(r"<tr>(.*?)</tr>", page.split("<tbody>")[1])
    assert len(rows) == 3
    assert 'class="root"' in rows[0] and ">t7" in rows[0] and 'class="root"' not in page.split(rows[0])[1]
    expected = [("t7", {"t6", "t8"}), ("t3", {"t9"}), ("t5", {"t0", "t2", "t1"})]
    for row, (head, changed) in zip(rows, expected):
        assert re.search(r"<th[^>]*>" + head, row)
        assert set(re.findall(r'<td class="changed"[^>]*>(.*?)</td>', row)) == changed
        assert len(re.findall(r"<td", row)) == 3
    assert "overwrote 3 rows" in page and "showing" not in page


def test_rows_table_truncates_escapes_and_handles_no_rows(runs, best_step):
    page = rows_table_html(best_step, nasty_text, max_rows=5)
    assert f"overwrote {len(best_step.rows_written):,} rows" in page and "showing the first 5" in page
    assert page.count("<tr>") == 6  # header + 5
    assert "<b>" not in page and "&lt;b&gt;" in page
    first = page.split("<tbody>")[1].split("</tr>")[0]
    assert 'class="root"' in first and re.search(r"<th[^>]*>" + re.escape(nasty_text(best_step.draft.tokens[0])
                                                                           .replace("&", "&amp;").replace("<", "&lt;")
                                                                           .replace(">", "&gt;")), first)
    assert "wrote no rows" in rows_table_html(runs["tr"][0], token_text)


def test_row_lookup_and_summary():
    page = row_lookup_html(3, [4, 5, 6], nasty_text)
    assert page.count("<td") == 3 and "<b>" not in page and "&lt;b&gt;" in page
    assert "not been written" in row_lookup_html(3, None, nasty_text)
    assert matrix_summary(1234, 49152, 49152 * 8 * 8) == "1,234 of 49,152 rows filled · 3.1 MB"
    assert matrix_summary(0, 64, 900) == "0 of 64 rows filled · 900 B"


def test_token_lookup_reads_a_word_or_an_id():
    rows = {7: [1, 2], 9: None}

    def lookup(text):
        return viz.token_lookup_html(text, 10, lambda t: [7, 9][: len(t.split())], rows.get, nasty_text)

    assert "Type a word" in lookup("  ") and "Type a word" in lookup(None)
    assert "Candidates after" in lookup("one") and "is 2 tokens" not in lookup("one")
    assert "is 2 tokens; showing the first" in lookup("one two")
    assert "has not been written yet" in lookup("#9") and "(id 9)" in lookup("#9")
    for bad in ("#10", "#" + "9" * 5000, "#²", "#-1", "#"):  # int() of the first two would raise
        assert "# followed by a whole number from 0 to 9" in lookup(bad)
    assert "no tokens" in viz.token_lookup_html("x", 10, lambda t: [], rows.get, nasty_text)


def test_panes_and_the_step_to_open_on():
    steps = [Step(0, [1]), Step(1, [2, 3], accepted=[0, 4]), Step(2, [4, 5], accepted=[0, 1]), Step(3, [6])]
    assert viz.most_accepted_step(steps) == 1  # the first of the steps that accepted the most
    assert viz.most_accepted_step(steps[:1]) == 0 and viz.most_accepted_step([]) == 0
    pane = viz.pane_html("A <b>", steps, lambda ids: " ".join(map(str, ids)), banded=True)
    assert pane.startswith('<p class="pane-title">A &lt;b&gt; · ') and pane.count('class="tr-band"') == 4
    assert "waiting" in viz.pane_html("A", [], str, banded=False)


# --- charts ------------------------------------------------------------------------------------------

def test_speedup_matches_a_hand_computation():
    ar = [timed(i, i + 1, 0.5 * (i + 1)) for i in range(4)]  # 1..4 tokens at 0.5 s each: 2 s for 4
    tr = [timed(0, 1, 0.5), timed(1, 3, 1.0, 2), timed(2, 8, 1.6, 5)]
    fig = speedup_over_steps(ar, tr)
    line = trace(fig, "speed-up")
    assert list(line.x) == [0, 1, 2]
    # 1 token: AR 0.5 s / 0.5; 3 tokens: AR 1.5 s / 1.0; 8 tokens: beyond AR, 8 * (2 s / 4) = 4 s / 1.6.
    assert list(line.y) == pytest.approx([1.0, 1.5, 2.5])
    assert fig.layout.shapes[0].y0 == 1 and fig.layout.shapes[0].line.dash == "dash"
    assert fig.layout.yaxis.title.text == "speed-up (×)"


def test_histogram_and_mat_skip_the_prefill():
    steps = [timed(0, 1, 0.1, 1), timed(1, 4, 0.2, 3), timed(2, 5, 0.3, 1), timed(3, 8, 0.4, 3)]
    bars = accepted_histogram(steps).data[0]
    assert list(bars.x) == [1, 2, 3] and list(bars.y) == [1, 0, 2]
    line = mat_over_steps(steps).data[0]
    assert list(line.x) == [1, 2, 3] and list(line.y) == pytest.approx([3.0, 2.0, 7 / 3])


def test_tokens_vs_time_draws_one_line_per_method(runs):
    fig = tokens_vs_time(runs)
    assert len(fig.data) == 2
    for t, steps in zip(fig.data, runs.values()):
        assert list(t.x) == [s.elapsed_s for s in steps] and list(t.y) == [s.total_tokens for s in steps]
    assert "(s)" in fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_real_run_charts_are_consistent(runs):
    tr_steps = runs["tr"]
    mat = mat_over_steps(tr_steps).data[0]
    decoded = sum(len(s.tokens) for s in tr_steps[1:])
    assert mat.y[-1] == pytest.approx(decoded / (len(tr_steps) - 1))
    bars = accepted_histogram(tr_steps).data[0]
    assert sum(bars.y) == len(tr_steps) - 1
    assert len(speedup_over_steps(runs["ar"], tr_steps).data[0].y) == len(tr_steps)


@pytest.mark.parametrize("steps", [[], [timed(0, 1, 0.1)]])
def test_charts_of_nothing_are_notes(steps):
    for fig in (speedup_over_steps(steps, steps), accepted_histogram(steps), mat_over_steps(steps),
                speedup_over_steps([], [timed(0, 1, 0.1)])):
        assert not fig.data and note_of(fig)
    assert note_of(tokens_vs_time({})) and note_of(tokens_vs_time({"ar": [], "tr": []}))


# --- text --------------------------------------------------------------------------------------------

def byte_decode(ids: list[int]) -> str:
    """A byte-level 'tokenizer': each id is one byte, so a character can straddle two steps."""
    return bytes(ids).decode("utf-8", errors="replace")


def test_banded_html_has_one_escaped_band_per_step():
    text = "a <b> & é\nnext line"
    data = list(text.encode())
    cut = data.index(0xC3) + 1  # end the second step inside "é" (two bytes)
    steps = [Step(0, data[:2]), Step(1, data[2:cut]), Step(2, data[cut:cut + 3]), Step(3, data[cut + 3:])]
    pieces = step_pieces(steps, byte_decode)
    assert "".join(pieces) == text and pieces[1] == "" and not any("\ufffd" in p for p in pieces)
    page = banded_html(steps, byte_decode)
    bands = re.findall(r'<span class="tr-band" style="([^"]*)" title="([^"]*)">(.*?)</span>', page, re.S)
    assert [title for _, title, _ in bands] == ["step 0: 2 tokens", "step 2: 3 tokens", "step 3: 8 tokens"]
    assert len({style for style, _, _ in bands}) == 3  # neighbouring bands differ in colour
    assert "<b>" not in page and "&lt;b&gt; &amp; é\nn" in "".join(body for _, _, body in bands)
    assert "white-space:pre-wrap" in page and "band" in page.split("<div style")[0]


def test_step_pieces_keep_context_dependent_spaces(runs):
    # Like sentencepiece: a word renders with its leading space only after another token.
    words = {i: f"w{i}" for i in range(64)}

    def decode(ids):
        return " ".join(words[i] for i in ids)

    steps = runs["tr"]
    all_ids = [t for s in steps for t in s.tokens]
    assert "".join(step_pieces(steps, decode)) == decode(all_ids)


def test_plain_html_shares_the_container():
    steps = [Step(0, list(b"x<y")), Step(1, list(b"\n"))]
    page = plain_html(steps, byte_decode)
    assert "x&lt;y\n" in page and "white-space:pre-wrap" in page and "tr-band" not in page
    for empty in (banded_html([], byte_decode), plain_html([], byte_decode)):
        assert "white-space:pre-wrap" in empty


def test_tree_size_figure_marks_the_chosen_size_at_the_ratio_peak():
    from tr.costs import CostCurve

    curve = CostCurve([1, 2, 8, 32], [1.0, 1.1, 1.4, 2.5], 64, "cpu")
    step = Step(3, [5], draft([1, 2, 3], [-1, 0, 1], considered=[0.8, 0.5, 0.05, 0.01]))
    fig = viz.tree_size_figure(curve, step)
    cost, expected, ratio = (trace.y for trace in fig.data)
    assert expected[:3] == pytest.approx((1.0, 1.8, 2.3))
    assert list(ratio) == pytest.approx([e / c for e, c in zip(expected, cost)])
    assert int(max(range(len(ratio)), key=ratio.__getitem__)) == 2  # the peak is the tree's 2 drafts
    assert fig.layout.shapes[0].x0 == 2
    assert len(viz.tree_size_figure(curve).data) == 1  # no step yet: the device's curve alone
    assert note_of(viz.tree_size_figure(None)) is not None
    timed = CostCurve([1, 2, 8], [1.0, 1.05, 1.4], 64, "cpu", measured=[1.0, 1.1, 1.4])
    markers = [trace for trace in viz.tree_size_figure(timed).data if trace.mode == "markers"]
    assert len(markers) == 1 and list(markers[0].x) == [0, 1, 7]
    assert list(markers[0].y) == pytest.approx([1.0, 1.1, 1.4])
    assert markers[0].name == "timed"
    learned = CostCurve([1, 2, 8], [1.0, 1.05, 1.4], 64, "cpu", measured=[1.0, 1.1, 1.4], steps=212.4)
    assert "corrected by ~212 decoding steps" in viz.tree_size_figure(learned).data[1].name


def test_benchmark_figure_draws_every_method_and_category():
    from viz.bench import benchmark_figure

    table = [dict(category=c, method=m, speedup=s, mat=mat) for c, m, s, mat in [
        ("qa", "ar", 1.0, 1.0), ("qa", "pld", 1.1, None), ("qa", "tr:auto", 1.4, 1.9),
        ("overall", "ar", 1.0, 1.0), ("overall", "pld", 1.05, None), ("overall", "tr:auto", 1.3, 1.8)]]
    fig = benchmark_figure(table)
    speed = {t.name: list(t.y) for t in fig.data if t.yaxis == "y"}
    mat = {t.name: list(t.y) for t in fig.data if t.yaxis == "y2"}
    assert speed == {"ar": [1.0, 1.0], "pld": [1.1, 1.05], "tr:auto": [1.4, 1.3]}
    assert mat == {"ar": [1.0, 1.0], "tr:auto": [1.9, 1.8]}  # pld exposes no steps: no MAT bars
    assert list(fig.data[0].x) == ["qa", "overall"]


def test_benchmark_plot_cli_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    from viz import bench

    assert bench.main(["only-one.json"]) == 2
    missing = tmp_path / "missing.json"
    assert bench.main([str(missing), str(tmp_path / "out.png")]) == 2
    assert "cannot read a bench file" in capsys.readouterr().err
    good = tmp_path / "bench.json"
    good.write_text(json.dumps({"machine": {"cpu": "CPU", "device": "cpu", "dtype": "float32"},
                                "settings": {"max_new_tokens": 8},
                                "table": [{"category": "overall", "method": "ar", "speedup": 1.0, "mat": 1.0}]}))

    def no_browser(*args, **kwargs):
        raise RuntimeError("\nKaleido requires Google Chrome to be installed.")

    monkeypatch.setattr(bench.go.Figure, "write_image", no_browser)
    assert bench.main([str(good), str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err
    assert "Kaleido requires Google Chrome" in err and "chromium" in err and "Traceback" not in err
