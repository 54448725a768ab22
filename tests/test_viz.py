"""Tests of the figures and HTML in `viz/`, on hand-built step records and on a real Token Recycling run
of a tiny random model (no download, a few seconds)."""

from __future__ import annotations

import html
import json
import math
import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tr.decoding import autoregressive, token_recycling
from tr.matrix import AdjacencyMatrix
from tr.drafts import PromptLookupDrafter, TemplateDrafter
from tr.records import LOOKUP, ROOT_ORIGIN, Draft, Origin, OriginKind, RowWrite, Step, speedup, summarize
from tr.trees import DraftTree, best_first_template, validate_paths
from viz import (
    accepted_histogram, banded_html, mat_over_steps, matrix_summary, plain_html, row_lookup_html,
    rows_table_html, speedup_over_steps, tokens_vs_time, tree_figure,
)
import viz
from viz.explain import GLOSSARY, howto_charts, run_summary
from viz.race import MIN_STEPS, compare, history_markdown, stats_html, verdict_html
from viz.style import LANE_COLORS, Meaning, lane_name, note_of
from viz.text import step_pieces
from viz.tree import (
    ACCEPTED, BONUS_KIND, MAX_HEIGHT, MIN_ROW_PX, REJECTED, ROOT, ROW_GAP, interesting_step, marks_for,
)

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
    pld_steps = list(token_recycling(model, PROMPT, 24, None, PromptLookupDrafter(PROMPT)))
    return {"ar": ar_steps, "tr": tr_steps, "pld": pld_steps}


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
        parent = tree.parents[node]
        assert (f"node {node}, depth {tree.depths[node]}, from the row of 't{tree.tokens[parent]}', "
                f"rank {tree.ranks[node]}") in hover


def test_tree_hover_says_where_each_node_came_from():
    step = Step(3, [11, 4], draft([10, 11, 12, 13], [-1, 0, 0, 1], [-1, 0, LOOKUP, 2]), choices=[11, 4, 5, 5],
                accepted=[0, 1])
    step.draft.origins[3] = Origin(OriginKind.PAIR, 3)
    fig = tree_figure(step, token_text)
    hovers = {n: h for t in fig.data if t.customdata is not None for n, h in zip(t.customdata, t.hovertext)}
    assert "from the row of 't10', rank 0 (given 50-60% when written)" in hovers[1]
    assert "copied from the text" in hovers[2] and "last 2 token(s)" in hovers[2]
    assert "from the row of ('t10', 't11'), rank 2 (given 30-40% when written)" in hovers[3]
    step.draft.origins[1] = Origin(OriginKind.PAIR, 3)  # a pair row under the root: its first key is not held
    hovers = {n: h for t in tree_figure(step, token_text).data if t.customdata is not None
              for n, h in zip(t.customdata, t.hovertext)}
    assert "from the row of (the token before, 't10'), rank 0" in hovers[1]


def test_tree_legend_explains_rejected_nodes_even_when_there_are_none():
    all_accepted = Step(3, [11, 12, 7], draft([10, 11, 12], [-1, 0, 1]), choices=[11, 12, 7], accepted=[0, 1, 2])
    for step in (small_step(), all_accepted):
        fig = tree_figure(step, token_text)
        rejected = trace(fig, REJECTED.name)
        assert rejected.showlegend is not False and len(rejected.x) >= 1 and "rejected" in REJECTED.name
        assert rejected.marker.color == REJECTED.color != ACCEPTED.color
    assert list(trace(tree_figure(all_accepted, token_text), REJECTED.name).customdata) == []


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
    # The widest layer (22) keeps a row of text per node, squeezed at most to MIN_ROW_PX to share one screen.
    assert 22 * MIN_ROW_PX <= fig.layout.height <= MAX_HEIGHT
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
    before = re.findall(r'<tr class="before">(.*?)</tr>', page)
    after = re.findall(r'<tr class="after">(.*?)</tr>', page)
    assert len(before) == len(after) == 3
    assert 'class="root"' in before[0] and ">t7" in before[0] and 'class="root"' not in "".join(before[1:])
    expected = [("t7", {"t1", "t2"}, {"t6", "t8"}), ("t3", {"t4"}, {"t9"}), ("t5", set(), {"t0", "t2", "t1"})]
    for old, new, (head, dropped, changed) in zip(before, after, expected):
        assert re.search(r'<th[^>]*rowspan="2"[^>]*>' + head, old) and ">before</td>" in old
        assert set(re.findall(r'<td class="dropped"[^>]*>(.*?)</td>', old)) == dropped
        assert ">after</td>" in new and set(re.findall(r'<td class="changed"[^>]*>(.*?)</td>', new)) == changed
        assert len(re.findall(r"<td", new)) == 4  # "after" and the k = 3 candidates
    assert "first written at this step" in before[2] and 'colspan="3"' in before[2]
    assert "overwrote 3 rows, each shown before → after the overwrite" in page and "showing" not in page
    # Columns share the table's width: k = 8 fits a 600 px panel without a scroll bar.
    wide = Step(2, [5], draft([7], [-1]), rows_written=[RowWrite(7, list(range(8)), list(range(1, 9)), True)])
    width = int(re.search(r"min-width:(\d+)px", rows_table_html(wide, token_text)).group(1))
    assert "table-layout:fixed;width:100%" in page and width <= 600


def test_rows_table_truncates_escapes_and_handles_no_rows(runs, best_step):
    page = rows_table_html(best_step, nasty_text, max_rows=5)
    read, written = page.split('<div class="tr-rows">')  # the rows it drafted from, then the rows it wrote
    assert f"Step {best_step.index} drafted from " in read
    assert f"overwrote {len(best_step.rows_written):,} rows" in written and "showing the first 5" in written
    assert written.count("<tr") == 11  # the header, then before and after for each of 5 rows
    assert "<b>" not in page and "&lt;b&gt;" in page
    first = written.split("<tbody>")[1].split("</tr>")[0]  # the root's row, before
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

    def lookup(query):
        return viz.token_lookup_html(query, lambda t: [7, 9][: len(t.split())], rows.get, nasty_text)

    assert "Type a word" in lookup("")
    assert "Candidates after" in lookup("one") and "is 2 tokens" not in lookup("one")
    assert "is 2 tokens; showing the first" in lookup("one two")
    assert "has not been written yet" in lookup(9) and "(id 9)" in lookup(9)
    assert "&lt;b&gt;" in lookup("<b>x</b> two") and "<b>x" not in lookup("<b>x</b> two")
    assert "no tokens" in viz.token_lookup_html("x", lambda t: [], rows.get, nasty_text)


def test_panes_and_the_step_to_open_on():
    steps = [Step(0, [1]), Step(1, [2, 3], accepted=[0, 4]), Step(2, [4, 5], accepted=[0, 1]), Step(3, [6])]
    assert viz.most_accepted_step(steps) == 1  # the first of the steps that accepted the most
    assert viz.most_accepted_step(steps[:1]) == 0 and viz.most_accepted_step([]) == 0
    pane = viz.pane_html("A <b>", steps, lambda ids: " ".join(map(str, ids)), banded=True)
    assert pane.startswith('<p class="pane-title">A &lt;b&gt;: ') and pane.count('class="tr-band"') == 4
    assert "waiting" in viz.pane_html("A", [], str, banded=False)


def test_interesting_step_shows_accepted_and_rejected_drafts(runs):
    chain = draft([10, 11, 12], [-1, 0, 1])
    steps = [Step(0, [1]),
             Step(1, [11, 12, 5], chain, choices=[11, 12, 5], accepted=[0, 1, 2]),  # all accepted
             Step(2, [11, 4], chain, choices=[11, 4, 5], accepted=[0, 1]),  # one accepted, one rejected
             Step(3, [7], chain, choices=[7, 4, 5], accepted=[0])]  # all rejected
    assert viz.most_accepted_step(steps) == 1 and interesting_step(steps) == 2
    assert interesting_step(steps[:2]) == 1  # nothing mixed: the most accepted
    assert marks_for(steps) == {1: "good: most accepted, largest tree", 2: "first rejection",
                                3: "failed: all rejected"}
    assert marks_for([Step(0, [1])]) == {}
    real = runs["tr"][interesting_step(runs["tr"])]
    assert 0 < real.accepted_drafts < real.drafted


# --- charts ------------------------------------------------------------------------------------------

CHARTS = (tokens_vs_time, speedup_over_steps, accepted_histogram, mat_over_steps)


def test_speedup_matches_a_hand_computation():
    ar = [timed(i, i + 1, 0.5 * (i + 1)) for i in range(4)]  # 1..4 tokens at 0.5 s each: 2 s for 4
    tr = [timed(0, 1, 0.5), timed(1, 3, 1.0, 2), timed(2, 8, 1.6, 5)]
    fig = speedup_over_steps({"ar": ar, "tr": tr})
    line = trace(fig, lane_name("tr"))
    assert list(line.x) == [1, 3, 8]  # tokens written so far
    # 1 token: AR 0.5 s / 0.5; 3 tokens: AR 1.5 s / 1.0; 8 tokens: beyond AR, 8 * (2 s / 4) = 4 s / 1.6.
    assert list(line.y) == pytest.approx([1.0, 1.5, 2.5])
    baseline = [t for t in fig.data if t.name.startswith(lane_name("ar"))][0]
    assert list(baseline.y) == [1, 1] and baseline.line.dash == "dash"
    assert "(×" in fig.layout.yaxis.title.text and "2.50×" in fig.layout.title.subtitle.text


def test_histogram_and_mat_skip_the_prefill():
    steps = [timed(0, 1, 0.1, 1), timed(1, 4, 0.2, 3), timed(2, 5, 0.3, 1), timed(3, 8, 0.4, 3)]
    bars = trace(accepted_histogram({"tr": steps}), lane_name("tr"))
    assert list(bars.x) == [1, 2, 3] and list(bars.customdata) == [1, 0, 2]
    assert list(bars.y) == pytest.approx([100 / 3, 0, 200 / 3])  # shares of the lane's calls
    line = trace(mat_over_steps({"tr": steps}), lane_name("tr"))
    assert list(line.x) == [1, 2, 3] and list(line.y) == pytest.approx([3.0, 2.0, 7 / 3])


def test_tokens_vs_time_draws_one_line_per_lane(runs):
    fig = tokens_vs_time(runs)
    assert len(fig.data) == 3
    for t, steps in zip(fig.data, runs.values()):
        assert list(t.x) == [s.elapsed_s for s in steps] and list(t.y) == [s.total_tokens for s in steps]
    assert "(s)" in fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_every_chart_has_a_legend_entry_per_lane_in_its_colour_and_a_takeaway(runs):
    for chart in CHARTS:
        fig = chart(runs)
        for lane in runs:
            drawn = [t for t in fig.data if t.name.startswith(lane_name(lane)) and t.showlegend is not False]
            assert len(drawn) == 1, (chart.__name__, lane)
            color = drawn[0].marker.color if drawn[0].type == "bar" else drawn[0].line.color
            assert color == LANE_COLORS[lane]
        assert fig.layout.title.subtitle.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_real_run_charts_are_consistent(runs):
    for lane in ("tr", "pld"):
        steps = runs[lane]
        mat = trace(mat_over_steps(runs), lane_name(lane))
        assert mat.y[-1] == pytest.approx(summarize(steps).mat)
        assert f"{summarize(steps).mat:.2f}" in mat_over_steps(runs).layout.title.subtitle.text
        bars = trace(accepted_histogram(runs), lane_name(lane))
        assert sum(bars.customdata) == len(steps) - 1 and sum(bars.y) == pytest.approx(100)
        assert len(trace(speedup_over_steps(runs), lane_name(lane)).y) == len(steps)
    plain = trace(accepted_histogram(runs), lane_name("ar"))
    assert plain.x[0] == 1 and plain.y[0] == 100 and sum(plain.y) == 100  # every plain call wrote one token


def test_the_mat_chart_says_what_a_running_average_does():
    fig = mat_over_steps({"tr": [timed(0, 1, 0.1), timed(1, 6, 0.2, 5), timed(2, 7, 0.3, 1)]})
    assert list(trace(fig, lane_name("tr")).y) == pytest.approx([5.0, 3.0])  # falls: early calls weigh most
    text = fig.layout.title.text + fig.layout.title.subtitle.text
    assert "running average" in text and "warms up" not in text and "rises" not in text


@pytest.mark.parametrize("steps", [[], [timed(0, 1, 0.1)]])
def test_charts_of_nothing_are_notes(steps):
    for chart in CHARTS[1:]:
        assert note_of(chart({"ar": steps, "tr": steps})) and note_of(chart({}))
    assert note_of(speedup_over_steps({"ar": [], "tr": [timed(0, 1, 0.1)]}))
    assert note_of(tokens_vs_time({})) and note_of(tokens_vs_time({"ar": [], "tr": []}))


# --- the race: numbers, verdict, summary, history --------------------------------------------------------

def test_run_summary_arithmetic_gives_the_speed_up(runs):
    for lane in ("tr", "pld"):
        c = compare(runs["ar"], runs[lane])
        assert c.speedup == pytest.approx(speedup(runs["ar"], runs[lane]))
        assert c.tokens_per_call / c.base_tokens_per_call / c.cost_ratio == pytest.approx(c.speedup)
        text = run_summary(lane_name(lane), c, finished=True)
        numbers = re.search(r"so ([\d.,]+) / ([\d.,]+) / ([\d.]+) ([=≈]) <b>([\d.]+)×</b>", text)
        assert numbers, text
        a, b, cost, sign, shown = numbers.groups()
        assert shown == f"{c.speedup:.2f}" and cost == f"{c.cost_ratio:.2f}"
        a, b, cost = float(a.replace(",", "")), float(b.replace(",", "")), float(cost)
        # Each shown number is off by at most half its last digit: so is their quotient, relatively summed.
        assert a / b / cost == pytest.approx(c.speedup, rel=0.005 * (1 / a + 1 / b + 1 / cost) * 1.01)
        assert (sign == "=") == (f"{a / b / cost:.2f}" == shown)
    assert compare([], runs["tr"]) is None and compare(runs["ar"], []) is None


def test_run_summary_of_unequal_token_counts_divides_tokens_per_call():
    ar = [timed(0, 1, 0.1)] + [timed(i, i + 1, 0.1 * (i + 1)) for i in range(1, 4)]  # 4 tokens, 4 calls, 0.4 s
    tr = [timed(0, 1, 0.1), timed(1, 6, 0.3, 5)]  # 6 tokens, 2 calls, 0.3 s
    c = compare(ar, tr)
    assert c.speedup == pytest.approx(speedup(ar, tr)) == pytest.approx((6 / 0.3) / (4 / 0.4))
    text = run_summary("TR", c, finished=False)
    # MAT counts after the prefill, spelled out; the speed-up's arithmetic counts the prefill as a call.
    assert ("has written 6 tokens in 2 model calls (the prefill wrote 1, then MAT 5 / 1 = 5.00), plain decoding 4 "
            "in 4") in text
    assert "so 3.00 / 1.00 / 1.50 = <b>2.00×</b>" in text


def test_stats_has_a_column_per_lane_baseline_first(runs):
    titles = {"ar": "Plain", "tr": "TR", "pld": "PLD"}
    page = stats_html({"tr": runs["tr"], "ar": runs["ar"], "pld": runs["pld"]}, titles, True, False, False)
    assert re.findall(r"<th>(.*?)</th>", page) == ["", "Plain", "TR", "PLD"]
    speedups = re.findall(r"<tr><td>speed-up over plain decoding</td>(.*?)</tr>", page)[0]
    def shown(lane: str) -> str:  # a speed-up over too few calls is not shown as a figure
        steps = runs[lane]
        return (f"too early to tell ({len(steps) - 1} of {MIN_STEPS} calls)" if len(steps) - 1 < MIN_STEPS
                else f"{speedup(runs['ar'], steps):.2f}×")

    assert re.findall(r"<td>(.*?)</td>", speedups) == ["1.00× (baseline)", shown("tr"), shown("pld")]
    sentences = [lane for lane in ("tr", "pld") if "too early" not in shown(lane)]
    assert page.count('class="note"') == len(sentences) >= 1
    assert all(f"<b>{titles[lane]}</b>" in page for lane in sentences)
    assert "MAT" in page and page.count('class="metric') == 3  # one per drafting lane, and the verdict
    alone = stats_html({"ar": runs["ar"]}, {}, False, True, False)
    assert "<th>plain decoding</th>" in alone and 'class="note"' not in alone


def test_verdict_is_identical_only_when_every_lane_matches(runs):
    titles = {"pld": "Prompt lookup"}
    assert "identical</span> (" in verdict_html(runs, titles, True, False)
    changed = list(runs["pld"])
    last = changed[-1]
    changed[-1] = Step(last.index, [*last.tokens[:-1], (last.tokens[-1] + 1) % 64], total_tokens=last.total_tokens)
    position = sum(len(s.tokens) for s in changed) - 1
    verdict = verdict_html({**runs, "pld": changed}, titles, True, False)
    assert "not identical" in verdict and f"Prompt lookup first differs at token #{position}" in verdict
    assert "Token Recycling" not in verdict
    assert "identical so far" in verdict_html({"ar": runs["ar"][:3], "tr": runs["tr"]}, {}, False, False)


def test_history_wraps_escapes_and_caps_prompts():
    row = dict(run=1, template="auto", k=8, start="hot", tokens=9, mat=2.0, speedup="1.50×", identical="yes")
    long = "Why | is *the* sky <b>blue</b>?\n" + "word " * 100
    table = history_markdown([dict(row, prompt=long)])
    cell = table.splitlines()[2].split(" | ")[1]
    assert "\n" not in cell and "<b>" not in cell and "&lt;b&gt;" in cell and "\\*the\\*" in cell
    assert "Why \\| is" in cell and cell.endswith("…") and len(cell) < 330
    assert "word word word" in cell  # not cut at 48 characters
    short = history_markdown([dict(row, prompt="Hi")]).splitlines()[2]
    assert "| Hi |" in short


# --- texts ---------------------------------------------------------------------------------------------

def test_texts_explain_the_words_they_use():
    for term in ("Speculative decoding", "Draft", "Verification", "Forward pass / model call", "Prefill",
                 "Committed token", "Accepted token", "Bonus token", "MAT", "Tree attention", "Adjacency matrix",
                 "Row", "Rank", "k", "Hot / cold / seeded / primed start", "Prompt lookup decoding", "Speed-up",
                 "Compute clock vs wall time", "Lossless"):
        assert f"- **{term}**" in GLOSSARY
    assert "speculative decoding" in viz.explain.ABOUT and "guess, then check" in viz.explain.ABOUT
    assert "wall time" in viz.explain.HOWTO_RACE and "since win" not in viz.explain.HOWTO_CONTROLS
    assert "80 drafts + the root = 81" in viz.explain.HOWTO_CONTROLS


def test_howto_charts_uses_the_runs_own_tree_and_cost():
    text = howto_charts("cpu", 12.4, 1.37)
    assert "12.4 drafts + the root = 13.4 tokens" in text and "1.37×" in text and "81" not in text
    assert "mean accepted tokens" in text and "MAT − 1" in text and "τ" in text
    assert "80 drafts + the root = 81 tokens" in howto_charts("cpu") and "GPU" in howto_charts("cuda")


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
    page = banded_html(steps, byte_decode, selectable=True)
    bands = re.findall(r'<span class="tr-band" data-step="(\d+)" title="([^"]*)">(.*?)</span></span>', page, re.S)
    assert [title for _, title, _ in bands] == ["step 0: 2 tokens", "step 2: 3 tokens", "step 3: 8 tokens"]
    assert [step for step, _, _ in bands] == ["0", "2", "3"]  # a click opens the band's step
    assert "<b>" not in page and "&lt;b&gt; &amp; é\nn" in re.sub(r"<[^>]+>", "", "".join(b for _, _, b in bands))
    assert "white-space:pre-wrap" in page and "show rejected guesses" in page


def test_bands_tint_accepted_drafts_and_the_models_own_token_and_keep_the_rejected_guess():
    chain = draft([10, 11, 12], [-1, 0, 1])
    steps = [Step(0, [65]), Step(1, [11, 66], chain, choices=[11, 66, 5], accepted=[0, 1])]
    page = banded_html(steps, lambda ids: "".join(chr(i) if i > 20 else f"<{i}>" for i in ids))
    accepted, bonus = Meaning.ACCEPTED.tint, Meaning.BONUS.tint
    assert re.search(rf'background:{accepted}[^"]*">&lt;11&gt;</span>', page)  # the accepted draft
    assert re.search(rf'background:{bonus}[^"]*">B</span>', page)  # the model's own token
    assert re.search(rf'background:{bonus}[^"]*">A</span>', page)  # the prefill's token is the model's own too
    # The guess the model turned down after the accepted path, struck through and hidden until asked for.
    assert re.search(r'<del class="rej" style="display:none;[^"]*line-through">&lt;12&gt;</del>', page)
    assert html.escape("rejected guess: '<12>'") in page and "data-step" not in page


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
    assert "x&lt;y\n" in page and "white-space:pre-wrap" in page and "tr-band" not in page and "rej" not in page
    for empty in (banded_html([], byte_decode), plain_html([], byte_decode)):
        assert "white-space:pre-wrap" in empty


def test_tree_size_figure_marks_the_chosen_size_at_the_ratio_peak():
    from tr.costs import CostCurve

    curve = CostCurve([1, 2, 8, 32], [1.0, 1.1, 1.4, 2.5], 64, "cpu")
    step = Step(3, [5], draft([1, 2, 3], [-1, 0, 1], considered=[0.8, 0.5, 0.05, 0.01]))
    fig = viz.tree_size_figure(curve, step)
    cost, expected, ratio = (trace.y for trace in fig.data)
    assert [t.name for t in fig.data] == ["measured cost (one-token passes)", "expected tokens per call",
                                          "expected speed-up = tokens ÷ cost"]
    assert expected[:3] == pytest.approx((1.0, 1.8, 2.3))
    assert list(ratio) == pytest.approx([e / c for e, c in zip(expected, cost)])
    assert int(max(range(len(ratio)), key=ratio.__getitem__)) == 2  # the peak is the tree's 2 drafts
    assert {shape.x0 for shape in fig.layout.shapes} == {2}
    assert fig.data[2].yaxis != fig.data[1].yaxis == fig.data[0].yaxis  # the speed-up has its own axis
    assert f"drafted 2, where the expected speed-up peaks at {max(ratio):.2f}×" in fig.layout.title.subtitle.text
    template = Step(3, [5], draft([1, 2, 3, 4], [-1, 0, 1, 2], scores=[1.0, 0.9, 0.02, 0.01]))
    assert "the peak is at 1 draft (" in viz.tree_size_figure(curve, template).layout.title.subtitle.text
    assert len(viz.tree_size_figure(curve).data) == 1  # no step yet: the device's curve alone
    assert note_of(viz.tree_size_figure(None)) is not None
    timed = CostCurve([1, 2, 8], [1.0, 1.05, 1.4], 64, "cpu", measured=[1.0, 1.1, 1.4])
    markers = [trace for trace in viz.tree_size_figure(timed).data if trace.mode == "markers"]
    assert len(markers) == 1 and list(markers[0].x) == [0, 1, 7]
    assert list(markers[0].y) == pytest.approx([1.0, 1.1, 1.4])
    assert markers[0].name == "timings the cost is fitted to"


@pytest.mark.parametrize("considered", [[0.8, 0.5, 0.05, 0.01], [0.9] * 40])
def test_tree_size_lines_share_one_x_range(considered):
    from tr.costs import CostCurve

    curve = CostCurve([1, 2, 8, 32, 64], [1.0, 1.1, 1.4, 2.5, 4.0], 64, "cpu", measured=[1.0, 1.1, 1.4, 2.5, 4.0])
    step = Step(3, [5], draft([1, 2, 3], [-1, 0, 1], considered=considered))
    fig = viz.tree_size_figure(curve, step)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 3 and {(t.x[0], t.x[-1]) for t in lines} == {(0, len(considered))}
    markers = [t for t in fig.data if t.mode == "markers"]
    assert all(0 <= x <= len(considered) for t in markers for x in t.x)


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


def test_a_race_stopped_before_its_first_step_is_identical_so_far():
    """Stop can come before any step: nothing differs yet, and the verdict says so (not a dash)."""
    assert "identical so far" in viz.verdict_html({"ar": [], "tr": []}, {}, finished=False, sampling=False)
    assert viz.verdict_html({}, {}, finished=False, sampling=False) == "–"  # no race at all
