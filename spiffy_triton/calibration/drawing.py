"""A picture of a draft graph (PNG through matplotlib's Agg canvas; no graphviz needed).

The root (the real state) is at the top; below it one row per formula size (number of pairs).
Each node shows its formula as ``(position rank, token rank)`` pairs, its index, and, for
calibrated graphs, how often the formula was on a true path of the calibration traces. An
edge goes from each direct parent (largest strict-subset parent in the graph) to the child;
nodes without a parent in the graph hang from the root.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..decoding.pruning import direct_parents
from ..graph import DraftGraph


def _rows(graph: DraftGraph) -> dict[int, list[int]]:
    rows: dict[int, list[int]] = {}
    for k, formula in enumerate(graph.nodes):
        rows.setdefault(len(formula), []).append(k)
    return rows


def layout_positions(graph: DraftGraph) -> tuple[dict[int, tuple[float, float]], dict]:
    """Node centres ``{node: (x, y)}`` and edges ``{child: parents}`` (-1 is the root at
    ``(0, 0)``). Rows are ordered by the mean x of their parents to limit crossings."""
    present = set(range(len(graph)))
    parents = {k: direct_parents(graph, k, present) or (-1,) for k in present}
    x = {-1: 0.0}
    centres = {}
    for depth, nodes in sorted(_rows(graph).items()):
        nodes = sorted(nodes, key=lambda k: (sum(x[p] for p in parents[k]) / len(parents[k]), k))
        width = len(nodes)
        for i, k in enumerate(nodes):
            x[k] = i - (width - 1) / 2
            centres[k] = (x[k], -float(depth))
    return centres, parents


def draw_graph(
    graph: DraftGraph,
    path: str | Path,
    *,
    counts: Sequence[int] | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Write a PNG of `graph` to `path` (see the module docstring); returns the path."""
    if counts is not None and len(counts) != len(graph):
        raise ValueError(f"counts has {len(counts)} entries, the graph {len(graph)} nodes")
    try:
        from matplotlib.figure import Figure  # Figure, not pyplot: no global state, no display
    except ImportError:
        raise ImportError(
            "drawing a graph needs matplotlib: pip install 'spiffy-triton[bench]' "
            "(or pip install matplotlib)"
        ) from None

    centres, parents = layout_positions(graph)
    rows = _rows(graph)
    widest = max(len(v) for v in rows.values())
    max_pairs = graph.depth
    label_chars = max(len(" ".join(f"({p},{t})" for p, t in f)) for f in graph.nodes)
    box_w = max(1.6, 0.11 * label_chars)
    fig = Figure(figsize=(max(4.0, widest * box_w * 1.15 + 1), 1.6 * (max_pairs + 1) + 0.8))
    ax = fig.add_subplot()
    ax.set_axis_off()
    # Spread columns so that boxes never overlap.
    scale = box_w * 1.15
    points = {k: (cx * scale, cy) for k, (cx, cy) in centres.items()}
    points[-1] = (0.0, 0.0)

    for child, ps in parents.items():
        for p in ps:
            (x0, y0), (x1, y1) = points[p], points[child]
            ax.annotate(
                "",
                xy=(x1, y1 + 0.22),
                xytext=(x0, y0 - 0.22),
                arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 1.0},
            )
    box = {"boxstyle": "round,pad=0.35", "fc": "#e8f0fe", "ec": "#3367d6"}
    ax.text(0.0, 0.0, "root", ha="center", va="center", fontsize=9, bbox={**box, "fc": "#ffffff"})
    for k, formula in enumerate(graph.nodes):
        label = " ".join(f"({p},{t})" for p, t in formula)
        lines = [f"#{k}  {label}"]
        if counts is not None:
            lines.append(f"count {counts[k]}")
        ax.text(*points[k], "\n".join(lines), ha="center", va="center", fontsize=8, bbox=box)
    half = (widest - 1) / 2 * scale + box_w
    ax.set_xlim(-half, half)
    ax.set_ylim(-max_pairs - 0.6, 0.6)
    heading = title or graph.name or f"draft graph ({len(graph)} nodes)"
    ax.set_title(f"{heading}\nnode: (position rank, token rank) pairs", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path
