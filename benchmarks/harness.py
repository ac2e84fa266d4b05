"""The harness every study runs in: `python -m benchmarks.<study>` from the repository root.

A study is three short steps. Its `main` builds a `Run` from the command line (`parser` adds
the options every study shares: `--out-dir`, the smoke-size flag, `--repeats` where the study
repeats), measures rows keyed by the study's configuration columns, and reports them (`Run.table`
for rows written as they come, `Run.report` for a list): a printed table and
`<out-dir>/<study>.json` = `{"benchmark", "machine", "meta", "rows"}` (benchmarks/timing.py).

Timings come from `timing.percentiles_ms`: p20_ms / p50_ms / p80_ms (CUDA: `do_bench` with
quantiles 0.2 / 0.5 / 0.8; CPU: the same quantiles of `time.perf_counter` runs).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import timing

COMMON = ("quick", "repeats", "out_dir")


@dataclass(frozen=True)
class Run:
    """What one invocation of a study measures. `sizes` holds the study's own settings (read
    as attributes too: `run.per_kind` is `run.sizes["per_kind"]`)."""

    study: str
    device: str = "cpu"  # "cuda" when torch sees a GPU
    quick: bool = False  # smoke sizes
    repeats: int | None = None
    out_dir: Path | None = None  # None: benchmarks/results/ or SPIFFY_BENCH_RESULTS_DIR
    sizes: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str):
        sizes = self.__dict__.get("sizes") or {}
        if name in sizes:
            return sizes[name]
        raise AttributeError(f"{type(self).__name__} of {self.study!r} has no {name!r}")

    @property
    def results_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else timing.RESULTS_DIR

    def with_sizes(self, **changes) -> Run:
        """The same run with some settings replaced (smoke sizes, parsed lists): a field of
        the dataclass (`repeats`, ...) or one of `sizes`."""
        names = {f.name for f in dataclasses.fields(self)}
        own = {k: v for k, v in changes.items() if k in names}
        sizes = {k: v for k, v in changes.items() if k not in names}
        return dataclasses.replace(self, **own, sizes={**self.sizes, **sizes})

    def table(
        self,
        columns: Sequence[str] | None = None,
        *,
        key: Sequence[str] = (),
        meta: dict | None = None,
        name: str | None = None,
    ) -> timing.Results:
        """A keyed results table written after every row (`add`), printed by `finish`."""
        return timing.Results(name or self.study, columns, key=key, meta=meta, out_dir=self.out_dir)

    def report(
        self,
        rows: Sequence[dict],
        columns: Sequence[str] | None = None,
        *,
        key: Sequence[str] = (),
        meta: dict | None = None,
        name: str | None = None,
    ) -> Path:
        """Print the keyed table of `rows` and write its JSON; returns the JSON path."""
        timing.check_keys(rows, key)
        return timing.report(name or self.study, rows, columns, meta=meta, out_dir=self.out_dir)


def parser(
    doc: str | None,
    *,
    quick: Sequence[str] = ("--quick",),
    quick_help: str = "smoke sizes",
    repeats: int | None = None,
    out_dir: Sequence[str] = ("--out-dir",),
) -> argparse.ArgumentParser:
    """An argument parser with the options every study shares; the study adds its own."""
    description = (doc or "").split("\n\n")[0] or None
    result = argparse.ArgumentParser(description=description)
    if out_dir:
        result.add_argument(
            *out_dir, dest="out_dir", type=Path, default=None, help="results folder"
        )
    if quick:
        result.add_argument(*quick, dest="quick", action="store_true", help=quick_help)
    if repeats is not None:
        result.add_argument("--repeats", type=int, default=repeats, help="timed repeats")
    return result


def build_run(study: str, args: argparse.Namespace, **sizes) -> Run:
    """The `Run` of parsed arguments: the shared options as fields, the rest as `sizes`."""
    values = vars(args)
    own = {k: v for k, v in values.items() if k not in COMMON}
    return Run(
        study,
        device="cuda" if timing.on_gpu() else "cpu",
        quick=bool(values.get("quick", False)),
        repeats=values.get("repeats"),
        out_dir=values.get("out_dir"),
        sizes={**own, **sizes},
    )


def require_positive(parser: argparse.ArgumentParser, run: Run, names: Sequence[str]) -> None:
    """A usage error (exit 2) for any of the run's `names` below 1."""
    for name in names:
        if getattr(run, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(run, name)}")


def int_list(text: str) -> list[int]:
    return [int(item) for item in str(text).split(",") if item.strip()]


def float_list(text: str) -> list[float]:
    return [float(item) for item in str(text).split(",") if item.strip()]


def str_list(text: str) -> list[str]:
    return [item.strip() for item in str(text).split(",") if item.strip()]
