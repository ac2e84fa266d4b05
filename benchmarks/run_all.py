"""Run every benchmark study that can run on this machine; write a summary and plots.

    python -m benchmarks.run_all [--quick] [--only a,b] [--skip a,b] [--out-dir DIR]
    python -m benchmarks.run_all --summary-only   (no study: SUMMARY.md + plots from the JSON)
    spiffy-triton bench ...                      (the same, from a checkout)

Results go to a new folder of the user's cache (``$XDG_CACHE_HOME/spiffy-triton/bench/run-<time>``,
or ``SPIFFY_BENCH_RESULTS_DIR``), never over the tracked ``benchmarks/results/`` unless it is
named: ``--out-dir benchmarks/results`` (how the committed results are refreshed).

Each study is a module of this package, run from the repository root in its own subprocess
(`python -m benchmarks.<study>`) with a timeout (a crash or a hang in one does not stop the
others); `--quick` is passed to studies that accept it. Studies write `<out-dir>/<name>.json`
through `benchmarks/harness.py` (the out dir reaches them as
`SPIFFY_BENCH_RESULTS_DIR`). Afterwards this collects every JSON there and writes
`SUMMARY.md`, PNG plots, `run_all.json` (what ran, how long, exit status) and `logs/<study>.log`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.timing import machine_info

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


@dataclass(frozen=True)
class Study:
    """One study: a module run with `python -m` (every study of STUDIES), or a script."""

    name: str
    what: str
    script: Path | None = None
    module: str | None = None
    timeout_s: float = 900.0
    env: dict = field(default_factory=dict)
    args: tuple[str, ...] = ()  # extra arguments; "{out_dir}" is replaced by the results dir

    def source(self) -> Path | None:
        """The file that must exist for the study to run."""
        if self.script is not None:
            return self.script
        parts = self.module.split(".")
        if parts[0] == "spiffy_triton":
            return REPO_ROOT.joinpath("spiffy_triton", *parts[1:]).with_suffix(".py")
        return REPO_ROOT.joinpath(*parts).with_suffix(".py")

    def command(self, quick: bool, out_dir: Path) -> list[str]:
        target = [str(self.script)] if self.script is not None else ["-m", self.module]
        extra = [a.replace("{out_dir}", str(out_dir)) for a in self.args]
        accepts_quick = "--quick" in self.source().read_text(encoding="utf-8", errors="replace")
        return [sys.executable, *target, *extra, *(["--quick"] if quick and accepts_quick else [])]


# Order matters: perf_model reads nfe.json for the measured acceptance.
STUDIES = (
    Study(
        "graph_attention",
        "graph-masked attention kernel vs SDPA",
        module="benchmarks.graph_attention",
    ),
    Study(
        "marginals", "fused marginals kernel vs PyTorch composition", module="benchmarks.marginals"
    ),
    Study(
        "compile_report",
        "every shipped kernel config compiled for sm_90 / sm_80",
        module="spiffy_triton.compile_report",
        env={"TRITON_INTERPRET": "0"},
        args=("--out", "{out_dir}/compile_report.json"),
    ),
    Study(
        "nfe", "forward passes (NFE): vanilla vs Spiffy", module="benchmarks.nfe", timeout_s=1800.0
    ),
    Study(
        "calibration",
        "calibrated vs default draft graphs",
        module="benchmarks.calibration",
        timeout_s=1800.0,
    ),
    Study(
        "acceptance",
        "where acceptance is lost, per step in block and per node; graph variants",
        module="benchmarks.acceptance",
        timeout_s=1800.0,
    ),
    Study(
        "simsd",
        "SimSD and SimSD-exact beside Spiffy on the block-causal tiny-sdar",
        module="benchmarks.simsd",
        timeout_s=1800.0,
    ),
    Study(
        "wallclock", "CPU tokens/s, vanilla vs Spiffy, phase split", module="benchmarks.wallclock"
    ),
    Study(
        "cost_aware",
        'CPU tokens/s of max_drafts="auto" vs fixed D; noise-aware filling',
        module="benchmarks.cost_aware",
        timeout_s=1800.0,
    ),
    Study(
        "perf_model",
        "MODEL of LLaDA-8B on H100 / H200",
        module="benchmarks.perf_model",
        timeout_s=300.0,
    ),
    Study(
        "hf_mask_memory",
        "dense 4-D mask vs segment layout bytes at LLaDA-8B verify shapes",
        module="benchmarks.hf_mask_memory",
    ),
    Study(
        "compile_verify",
        "torch.compile of the verify forward: compile seconds, eager vs compiled ms",
        module="benchmarks.compile_verify",
        timeout_s=1800.0,
    ),
    Study("batch", "batched generate: B = 1, 4, 16, vanilla vs Spiffy", module="benchmarks.batch"),
)


# Seconds each study took on this project's 2-core CPU (1 thread), MEASURED: full sizes from
# the committed benchmarks/results/run_all.json, --quick from `python -m benchmarks.run_all
# --quick` (issue #21; on a machine loaded by 6 other jobs, load average about 16, stopped by
# a 900 s limit during nfe: the studies after it are not timed at --quick). Shown by --help
# and --list; the timeout is the hard limit.
MEASURED_SECONDS = {
    # study: (full, quick)
    "graph_attention": (72.31, 16.3),
    "marginals": (26.69, 15.3),
    "compile_report": (175.14, 110.5),
    "nfe": (541.37, None),
    "calibration": (436.18, None),
    "wallclock": (196.0, None),
    "perf_model": (11.55, None),
}


def default_out_dir() -> Path:
    """A new folder for this run's results: ``SPIFFY_BENCH_RESULTS_DIR`` when set, else
    ``$XDG_CACHE_HOME/spiffy-triton/bench/run-<date>-<time>`` (``~/.cache`` without XDG)."""
    env = os.environ.get("SPIFFY_BENCH_RESULTS_DIR", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    stamp = datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S")
    return base / "spiffy-triton" / "bench" / stamp


def study_times() -> str:
    """One line per study: name, what it measures, its measured time, its timeout."""
    lines = []
    for study in STUDIES:
        full, quick = MEASURED_SECONDS.get(study.name, (None, None))
        took = ", ".join(
            f"{label} {seconds:.0f} s"
            for label, seconds in (("full", full), ("--quick", quick))
            if seconds is not None
        )
        lines.append(
            f"  {study.name:15s} {study.what} ({took or 'not timed'}; timeout "
            f"{study.timeout_s:.0f} s)"
        )
    return "\n".join(lines)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0]
        + " Results go to a new folder of the user's cache unless --out-dir names one.",
        epilog="studies (times measured on the project's 2-core CPU, 1 thread):\n" + study_times(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke sizes (passed to studies; default: off)"
    )
    parser.add_argument(
        "--only", default=None, help="comma-separated studies to run (default: all)"
    )
    parser.add_argument(
        "--skip", default=None, help="comma-separated studies to leave out (default: none)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per study (default: each study's own timeout, listed below)",
    )
    parser.add_argument(
        "--out-dir",
        default=None,
        help="results folder (default: SPIFFY_BENCH_RESULTS_DIR, else a new "
        "$XDG_CACHE_HOME/spiffy-triton/bench/run-<time>; benchmarks/results/ only when named)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write no PNG (default: plots)")
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="run no study; rebuild SUMMARY.md and the plots from the JSON already in "
        "--out-dir (required with it)",
    )
    parser.add_argument("--list", action="store_true", help="list the studies and exit")
    return parser


def run_study(
    study: Study, *, out_dir: Path, quick: bool, timeout_s: float | None, echo: bool = True
) -> dict:
    """Run one study in a subprocess; returns its status record (never raises for the study's
    own failures)."""
    record = {"study": study.name, "what": study.what, "status": "missing", "seconds": 0.0}
    source = study.source()
    if not source.is_file():
        shown = source.relative_to(REPO_ROOT) if source.is_relative_to(REPO_ROOT) else source
        record["detail"] = f"{shown} not found"
        return record
    command = study.command(quick, out_dir)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["SPIFFY_BENCH_RESULTS_DIR"] = str(out_dir)
    env.update(study.env)
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{study.name}.log"
    limit = timeout_s if timeout_s is not None else study.timeout_s
    record["command"] = " ".join(
        Path(command[0]).name if i == 0 else c for i, c in enumerate(command)
    )
    env["PYTHONUNBUFFERED"] = "1"  # the study's progress lines as they come
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )

        def pump():  # into the log, and onto the console: long studies show progress inside
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if echo:
                    print(f"  [{study.name}] {line.rstrip()}", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=limit)
            record["status"] = "ok" if proc.returncode == 0 else "failed"
            record["returncode"] = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            record["status"] = "timeout"
            record["detail"] = f"killed after {limit:.0f} s"
        reader.join(timeout=10)
    record["seconds"] = round(time.perf_counter() - start, 2)
    record["log"] = str(log_path.relative_to(out_dir))
    if record["status"] == "failed":
        lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        record["detail"] = lines[-1][:200] if lines else "no output"
        if record["returncode"] < 0:  # POSIX: killed by a signal (e.g. 9 by the OOM killer)
            record["detail"] = f"killed by signal {-record['returncode']}; " + record["detail"]
    return record


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)[:60]
    return "" if value is None else " ".join(str(value).split()).replace("|", "\\|")


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no rows)\n"
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# Columns shown in the summary for wide tables (the JSON keeps them all).
SUMMARY_COLUMNS = {
    "perf_model": (
        "gpu cached C D query_rows total_GB total_TFLOP t_mem_ms t_compute_ms t_step_ms bound "
        "step_cost_vs_D0 fused_saving_pct steps_per_forward speedup_per_step speedup_per_block "
        "tokens_per_s"
    ).split(),
}
# Rows shown in the summary for long tables.
SUMMARY_ROWS = {
    "perf_model": lambda r: r.get("C") == 1024,
    "perf_model_attention": lambda r: r.get("C") == 1024,
}
MAX_SUMMARY_ROWS = 60


def collect_results(out_dir: Path) -> dict[str, dict]:
    payloads = {}
    for path in sorted(out_dir.glob("*.json")):
        if path.name == "run_all.json":
            continue
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            payload = {"rows": [], "meta": {"error": f"unreadable JSON: {exc}"}}
        payloads[path.stem] = payload if isinstance(payload, dict) else {"rows": payload}
    return payloads


def make_plots(payloads: dict[str, dict], out_dir: Path) -> list[Path]:
    """Plots for results that do not draw their own; returns every PNG in out_dir."""
    try:
        from benchmarks import plots
    except ImportError:
        return sorted(out_dir.glob("*.png"))
    for name, payload in payloads.items():
        png = out_dir / f"{name}.png"
        if name.startswith(("perf_model", "wallclock")):
            continue  # these draw their own figures
        source = out_dir / f"{name}.json"
        if png.exists() and source.exists() and png.stat().st_mtime >= source.stat().st_mtime:
            continue  # drawn by the study itself, or already up to date
        try:
            plots.plot_acceptance(payload, png) or plots.plot_timings(payload, png)
        except ImportError:
            break  # no matplotlib: the summary says so
    return sorted(out_dir.glob("*.png"))


def write_summary(
    records: Sequence[dict], payloads: dict[str, dict], pngs: Sequence[Path], out_dir: Path, argv
) -> Path:
    info = machine_info()
    lines = [
        "# spiffy-triton benchmark summary",
        "",
        f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} by "
        f"`{' '.join(['python -m benchmarks.run_all', *argv])}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        "Tables marked MODELED are analytic predictions (benchmarks/perf_model.py), not "
        "measurements. Everything else was measured on the machine above.",
        "",
        "## Studies",
        "",
        markdown_table(
            records, ["study", "what", "status", "seconds", "command", "detail", "previous_run"]
        ),
    ]
    order = [r["study"] for r in records]

    def rank(name: str) -> tuple[int, str]:
        base = next((s for s in order if name == s or name.startswith(s + "_")), None)
        return (order.index(base) if base else len(order), name)

    for name in sorted(payloads, key=rank):
        payload = payloads[name]
        meta = payload.get("meta") or {}
        rows = payload.get("rows") or []
        label = meta.get("label") if isinstance(meta.get("label"), str) else ""
        lines += [f"## {name}", ""]
        if label:
            lines += [f"**{label}**", ""]
        scalars = {
            k: v for k, v in meta.items() if k != "label" and isinstance(v, (str, int, float, bool))
        }
        if scalars:
            lines += ["- " + "; ".join(f"{k}: {_cell(v)}" for k, v in scalars.items()), ""]
        machine = payload.get("machine") or {}
        if machine and not label.startswith("MODELED"):
            lines += [f"- measured on: {machine.get('device', '?')}", ""]
        keep = SUMMARY_ROWS.get(name)
        shown = [r for r in rows if keep is None or keep(r)]
        if len(shown) < len(rows):
            lines += [f"({len(shown)} of {len(rows)} rows shown; all in `{name}.json`)", ""]
        rows, shown = shown, shown[:MAX_SUMMARY_ROWS]
        lines.append(markdown_table(shown, SUMMARY_COLUMNS.get(name)))
        if len(rows) > len(shown):
            lines += [f"({len(rows) - len(shown)} more rows in `{name}.json`)", ""]
        for png in pngs:
            if png.stem == name:
                lines += [f"![{name}]({png.name})", ""]
    path = out_dir / "SUMMARY.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(
    studies: Sequence[Study],
    *,
    out_dir: Path,
    quick: bool = False,
    timeout_s: float | None = None,
    plots: bool = True,
    argv: Sequence[str] = (),
) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for study in studies:
        print(f"[run_all] {study.name}: {study.what} ...", flush=True)
        record = run_study(study, out_dir=out_dir, quick=quick, timeout_s=timeout_s)
        print(
            f"[run_all] {study.name}: {record['status']} ({record['seconds']:.1f} s)"
            + (f" - {record['detail']}" if record.get("detail") else ""),
            flush=True,
        )
        records.append(record)
    # Studies not run this time keep their last record (their results are still in out_dir).
    record_path = out_dir / "run_all.json"
    ran = {r["study"] for r in records}
    try:
        previous = json.loads(record_path.read_text()).get("studies", [])
    except (OSError, ValueError, AttributeError):
        previous = []
    kept = [
        {**r, "previous_run": True}
        for r in previous
        if isinstance(r, dict) and r.get("study") not in ran and r.get("status") != "missing"
    ]
    order = {s.name: i for i, s in enumerate(STUDIES)}
    shown = sorted(records + kept, key=lambda r: order.get(r["study"], len(order)))
    payloads = collect_results(out_dir)
    pngs = make_plots(payloads, out_dir) if plots else sorted(out_dir.glob("*.png"))
    record_path.write_text(
        json.dumps({"machine": machine_info(), "quick": quick, "studies": shown}, indent=2) + "\n"
    )
    summary = write_summary(shown, payloads, pngs, out_dir, list(argv))
    print(f"[run_all] wrote {summary}")
    return records


def select(names: str | None, skip: str | None) -> list[Study]:
    known = {s.name for s in STUDIES}
    chosen = [n.strip() for n in (names or "").split(",") if n.strip()] or [s.name for s in STUDIES]
    dropped = [n.strip() for n in (skip or "").split(",") if n.strip()]
    unknown = sorted(set(chosen + dropped) - known)
    if unknown:
        raise SystemExit(
            f"--only/--skip: unknown studies {unknown}; expected some of {sorted(known)}"
        )
    return [s for s in STUDIES if s.name in chosen and s.name not in dropped]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `spiffy-triton bench -- --quick` passes the separator on
        argv = argv[1:]
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.list:
        for study in STUDIES:
            state = "present" if study.source().is_file() else "missing"
            print(f"{study.name:16s} {state:8s} {study.what}")
        print(study_times())
        return 0
    if args.timeout is not None and args.timeout <= 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    if args.summary_only and not args.out_dir:
        parser.error("--summary-only needs --out-dir: the results folder to summarize")
    out_dir = Path(args.out_dir).resolve() if args.out_dir else default_out_dir()
    print(f"[run_all] results go to {out_dir}", flush=True)
    records = run(
        [] if args.summary_only else select(args.only, args.skip),
        out_dir=out_dir,
        quick=args.quick,
        timeout_s=args.timeout,
        plots=not args.no_plots,
        argv=argv,
    )
    return 0 if all(r["status"] in ("ok", "missing") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
