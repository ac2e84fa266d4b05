"""PNG plots of benchmark results (matplotlib, Agg backend), used by `benchmarks/run_all.py`.

Each function takes a results payload (`{"benchmark", "machine", "meta", "rows"}` as written by
`benchmarks/timing.py`) and returns the PNG path, or None when the rows hold nothing it can
plot. Scripts that draw their own figure (perf_model, wallclock) are left to do so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DRAFT_KEYS = ("D", "drafts", "num_drafts", "max_drafts", "budget")
ACCEPTANCE_KEYS = ("steps_per_forward", "steps_per_nfe", "nfe_speedup")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _first_key(rows: Sequence[dict], keys: Sequence[str]) -> str | None:
    return next((k for k in keys if rows and all(_is_number(r.get(k)) for r in rows)), None)


def plot_acceptance(payload: dict, out_path: Path) -> Path | None:
    """Steps advanced per forward against the draft budget, one line per configuration (the
    rows' non-numeric columns)."""
    rows = payload.get("rows") or []
    x_key = _first_key(rows, DRAFT_KEYS)
    y_key = _first_key(rows, ACCEPTANCE_KEYS)
    if x_key is None or y_key is None:
        return None
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        label = ", ".join(
            f"{k}={v}" for k, v in r.items() if isinstance(v, (str, bool)) and k != "benchmark"
        )
        series.setdefault(label or y_key, []).append((r[x_key], r[y_key]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, points in series.items():
        points.sort()
        ax.plot(*zip(*points), "o-", label=label)
    ax.set(xlabel=x_key, ylabel=y_key, title=f"{payload.get('benchmark', '')}: measured")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def plot_timings(payload: dict, out_path: Path) -> Path | None:
    """Grouped bars of every millisecond column (`ms` or `*_ms`) per row: kernel benchmarks."""
    rows = (payload.get("rows") or [])[:24]
    columns = [c for c in (rows[0].keys() if rows else []) if c == "ms" or c.endswith("_ms")]
    columns = [c for c in columns if all(_is_number(r.get(c)) or r.get(c) is None for r in rows)]
    if not columns:
        return None
    labels = [
        " ".join(
            f"{k}={v}" if isinstance(v, (bool, int)) else str(v)
            for k, v in r.items()
            if k not in columns and not isinstance(v, float) and len(str(v)) <= 24
        )[:48]
        for r in rows
    ]
    values = [r.get(c) for r in rows for c in columns if r.get(c)]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(rows) * len(columns)), 4.5))
    width = 0.8 / len(columns)
    for i, column in enumerate(columns):
        xs = [j + i * width for j in range(len(rows))]
        ax.bar(xs, [r.get(column) or 0.0 for r in rows], width, label=column)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], labels, rotation=60, ha="right")
    ax.tick_params(axis="x", labelsize=6)
    if values and max(values) > 100 * min(values):
        ax.set_yscale("log")
    device = (payload.get("machine") or {}).get("device", "?")
    where = "CPU smoke run, not a GPU performance number" if device == "cpu" else device
    ax.set(ylabel="ms", title=f"{payload.get('benchmark', '')} ({where})")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
