"""Shared timing and reporting helpers for every benchmark script.

On a CUDA device times come from `triton.testing.do_bench` (median); on CPU from a median of
`time.perf_counter` runs, and the scripts run a small smoke configuration. Results are printed
as a table and written as JSON under `benchmarks/results/`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

# SPIFFY_BENCH_RESULTS_DIR redirects every script's results (run_all's --out-dir, tests).
RESULTS_DIR = Path(
    os.environ.get("SPIFFY_BENCH_RESULTS_DIR") or Path(__file__).resolve().parent / "results"
)


def on_gpu() -> bool:
    return torch.cuda.is_available()


def median_ms(fn: Callable[[], object], *, warmup: int = 3, reps: int = 10) -> float:
    """Median wall time of `fn()` in milliseconds (do_bench on CUDA)."""
    if on_gpu():
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def machine_info() -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if on_gpu() else "cpu",
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of `rows` (dicts) with the given column order."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_results(
    name: str, rows: Sequence[dict], *, meta: dict | None = None, out_dir: Path | None = None
) -> Path:
    """Write `{"benchmark", "machine", "meta", "rows"}` to `<out_dir>/<name>.json`."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), "meta": meta or {}, "rows": list(rows)}
    # write then rename: a run killed mid-write leaves the previous complete file
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(partial, path)
    return path


def report(
    name: str,
    rows: Sequence[dict],
    columns: Sequence[str] | None = None,
    *,
    meta: dict | None = None,
    out_dir: Path | None = None,
) -> Path:
    """Print the table and write the JSON; returns the JSON path."""
    print(f"== {name} ==")
    print(format_table(rows, columns))
    path = write_results(name, rows, meta=meta, out_dir=out_dir)
    print(f"wrote {path}")
    return path


class Results:
    """Rows of one benchmark, written to its JSON after every row, so that a run cut short
    (a time limit, a crash) still leaves what it measured. `finish` prints the table."""

    def __init__(self, name: str, columns: Sequence[str] | None = None, *, meta=None, out_dir=None):
        self.name, self.columns, self.meta, self.out_dir = name, columns, meta, out_dir
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print("  ".join(f"{k}={_cell(v)}" for k, v in row.items()), flush=True)
        write_results(self.name, self.rows, meta=self.meta, out_dir=self.out_dir)

    def finish(self) -> Path:
        return report(self.name, self.rows, self.columns, meta=self.meta, out_dir=self.out_dir)
