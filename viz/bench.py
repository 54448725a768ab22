"""The benchmark plot: speed-up and MAT per category and method, from a `python -m tools.bench` JSON file.

    python -m viz.bench benchmarks/results.json benchmarks/results.png

Speed-up is each method's tokens/s over the fastest of plain decoding (``ar``) and transformers'
greedy ``generate`` (``hf`` on our kernels, ``stock`` as shipped) in that category, as the bench table
computes it; 1.0 is drawn as a line.
MAT is shown for the methods that expose their steps (``ar``, at 1.0, and the Token Recycling variants).
"""

from __future__ import annotations

import sys
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tr.records import read_bench

from .style import FONT, TEMPLATE

PALETTE = ("#6b7280", "#9ca3af", "#2563eb", "#f59e0b", "#16a34a", "#db2777", "#7c3aed", "#0891b2")


def benchmark_figure(table: list[dict], title: str = "") -> go.Figure:
    """Grouped bars: speed-up (top) and MAT (bottom) for every category (overall last) and method."""
    categories = list(dict.fromkeys(row["category"] for row in table))
    methods = list(dict.fromkeys(row["method"] for row in table))
    cell = {(row["category"], row["method"]): row for row in table}
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("speed-up over the fastest baseline", "mean accepted tokens per step (MAT)"))
    for i, method in enumerate(methods):
        color = PALETTE[i % len(PALETTE)]
        for row_index, key in ((1, "speedup"), (2, "mat")):
            values = [cell.get((c, method), {}).get(key) for c in categories]
            if all(v is None for v in values):
                continue
            fig.add_bar(x=categories, y=values, name=method, legendgroup=method, showlegend=row_index == 1,
                        marker_color=color, row=row_index, col=1,
                        hovertemplate=f"{method}<br>%{{x}}: %{{y:.2f}}<extra></extra>")
    fig.add_hline(y=1.0, line=dict(color="#111827", width=1, dash="dot"), row=1, col=1)
    fig.update_layout(template=TEMPLATE, font=FONT, barmode="group", height=640, width=1200,
                      title=dict(text=title, x=0.02), legend=dict(orientation="h", y=1.13, x=0),
                      margin=dict(l=60, r=20, t=130, b=60))
    return fig


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m viz.bench RESULTS.json OUT.png", file=sys.stderr)
        return 2
    try:
        document = read_bench(args[0])
        machine, settings = document["machine"], document["settings"]
        title = (f"{Path(args[0]).name}: {machine.get('gpu') or machine['cpu']}, {machine['device']}, "
                 f"{machine['dtype']}, {settings['max_new_tokens']} new tokens")
    except (ValueError, KeyError) as err:
        print(f"viz.bench: error: cannot read a bench file from {args[0]}: {err}", file=sys.stderr)
        return 2
    try:  # static export goes through kaleido, which drives a Chrome or Chromium found on the machine
        benchmark_figure(document["table"], title).write_image(args[1], scale=1)
    except (RuntimeError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"viz.bench: error: cannot write {args[1]} ({reason}); a PNG needs Chrome or Chromium "
              "(e.g. apt-get install chromium)", file=sys.stderr)
        return 2
    print(f"wrote {args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
