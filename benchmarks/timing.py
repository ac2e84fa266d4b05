"""Shared timing and reporting helpers of the benchmark harness (benchmarks/harness.py).

On a CUDA device times come from `triton.testing.do_bench` (quantiles 0.2 / 0.5 / 0.8); on CPU
from the same quantiles of `time.perf_counter` runs, and the studies run a small smoke
configuration. Results are printed as a table and written as JSON under `benchmarks/results/`.
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


QUANTILES = (0.2, 0.5, 0.8)
PERCENTILE_KEYS = ("p20_ms", "p50_ms", "p80_ms")


def percentiles(times_ms: Sequence[float]) -> dict[str, float]:
    """p20_ms / p50_ms / p80_ms of measured times (linear interpolation between the sorted
    times, as torch.quantile; p50 is the median)."""
    ordered = sorted(float(t) for t in times_ms)
    if not ordered:
        raise ValueError("percentiles of no times")
    out = {}
    for key, q in zip(PERCENTILE_KEYS, QUANTILES):
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        out[key] = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    out["p50_ms"] = statistics.median(ordered)  # exactly the median, whatever the rounding
    return out


def percentiles_ms(fn: Callable[[], object], *, warmup: int = 3, reps: int = 10) -> dict:
    """p20_ms / p50_ms / p80_ms wall time of `fn()` in milliseconds: on CUDA from
    `triton.testing.do_bench(fn, quantiles=[0.2, 0.5, 0.8])`, on CPU from `reps` perf_counter
    runs after `warmup` calls."""
    if on_gpu():
        import triton.testing

        values = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=list(QUANTILES))
        return dict(zip(PERCENTILE_KEYS, map(float, values)))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return percentiles(times)


def median_ms(fn: Callable[[], object], *, warmup: int = 3, reps: int = 10) -> float:
    """Median wall time of `fn()` in milliseconds: `percentiles_ms(...)["p50_ms"]`."""
    return percentiles_ms(fn, warmup=warmup, reps=reps)["p50_ms"]


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


def row_key(row: dict, key: Sequence[str]) -> tuple:
    return tuple(str(row.get(column)) for column in key)


def check_keys(rows: Sequence[dict], key: Sequence[str]) -> None:
    """Raise if two rows share the values of the `key` columns (the study's configuration
    columns: one row per configuration)."""
    if not key:
        return
    seen: set[tuple] = set()
    for row in rows:
        value = row_key(row, key)
        if value in seen:
            raise ValueError(f"two rows with the same {tuple(key)}: {value}")
        seen.add(value)


class Results:
    """The keyed rows of one benchmark, written to its JSON after every row, so that a run cut
    short (a time limit, a crash) still leaves what it measured. `finish` prints the table.
    `key` names the configuration columns: a second row with the same values is an error."""

    def __init__(
        self,
        name: str,
        columns: Sequence[str] | None = None,
        *,
        key: Sequence[str] = (),
        meta=None,
        out_dir=None,
    ):
        self.name, self.columns, self.meta, self.out_dir = name, columns, meta, out_dir
        self.key = tuple(key)
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        check_keys([*self.rows, row], self.key)
        self.rows.append(row)
        print("  ".join(f"{k}={_cell(v)}" for k, v in row.items()), flush=True)
        write_results(self.name, self.rows, meta=self.meta, out_dir=self.out_dir)

    def finish(self) -> Path:
        return report(self.name, self.rows, self.columns, meta=self.meta, out_dir=self.out_dir)
