"""The benchmark harness (benchmarks/harness.py, benchmarks/timing.py): every study is a module
run as `python -m benchmarks.<study>` with no sys.path edits and short functions; a run is a
`Run` built from the command line; timings are p20 / p50 / p80; tables are keyed."""

from __future__ import annotations

import ast
import importlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import harness, timing

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
STUDIES = sorted(
    p.stem for p in BENCH.glob("*.py") if p.stem not in ("__init__", "harness", "timing", "plots")
)
NO_HARNESS_PARSER = {"compile_report", "gpu_check", "run_all"}  # a wrapper and two drivers


def test_no_benchmark_edits_sys_path():
    for path in BENCH.rglob("*.py"):
        assert "sys.path" not in path.read_text(), path


def test_no_benchmark_function_over_80_lines():
    long = []
    for path in BENCH.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(REPO)}:{node.name} ({lines} lines)")
    assert not long


@pytest.mark.parametrize("study", sorted(set(STUDIES) - NO_HARNESS_PARSER))
def test_every_study_main_answers_help(study, capsys):
    module = importlib.import_module(f"benchmarks.{study}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_a_study_runs_as_a_module_from_anywhere(tmp_path):
    """`python -m benchmarks.<study>` with only the checkout on PYTHONPATH (the GPU box's way)
    and from the repository root (no PYTHONPATH at all)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "out"
    for cwd, extra in ((tmp_path, {"PYTHONPATH": str(REPO)}), (REPO, {})):
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.hf_mask_memory", "--quick", "--out-dir", str(out)],
            cwd=cwd,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        rows = json.loads((out / "hf_mask_memory.json").read_text())["rows"]
        assert {(r["cache"], r["prompt"], r["drafts"]) for r in rows} == {
            (c, 256, d) for c in ("none", "prefix", "dual") for d in (0, 8)
        }


def test_build_run_splits_shared_options_from_the_study_sizes(tmp_path):
    parser = harness.parser("A study.\n\nMore.", repeats=3)
    parser.add_argument("--per-kind", type=int, default=4)
    run = harness.build_run("toy", parser.parse_args(["--quick", "--out-dir", str(tmp_path)]))
    assert (run.study, run.quick, run.repeats, run.out_dir) == ("toy", True, 3, tmp_path)
    assert run.device in ("cpu", "cuda") and run.per_kind == 4 and run.results_dir == tmp_path
    smoke = run.with_sizes(per_kind=1, repeats=1)
    assert (smoke.per_kind, smoke.repeats, run.per_kind) == (1, 1, 4)
    with pytest.raises(AttributeError, match="no 'missing'"):
        _ = run.missing
    assert harness.build_run("toy", parser.parse_args([])).results_dir == timing.RESULTS_DIR


def test_percentiles_interpolate_and_p50_is_the_median():
    times = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert timing.percentiles(times) == pytest.approx({"p20_ms": 1.8, "p50_ms": 3.0, "p80_ms": 4.2})
    for sample in ([7.0], [1.0, 2.0], [3.0, 1.0, 10.0, 2.0]):
        got = timing.percentiles(sample)
        assert got["p50_ms"] == statistics.median(sample)
        assert min(sample) <= got["p20_ms"] <= got["p50_ms"] <= got["p80_ms"] <= max(sample)


def test_percentiles_ms_times_on_cpu(monkeypatch):
    monkeypatch.setattr(timing, "on_gpu", lambda: False)
    calls = []
    got = timing.percentiles_ms(lambda: calls.append(1), warmup=2, reps=5)
    assert len(calls) == 7 and set(got) == set(timing.PERCENTILE_KEYS)
    assert timing.median_ms(lambda: None, warmup=0, reps=3) >= 0.0


def test_keyed_tables_refuse_a_second_row_of_one_configuration(tmp_path):
    results = timing.Results("keyed", key=("D", "method"), out_dir=tmp_path)
    results.add({"D": 0, "method": "triton", "ms": 1.0})
    results.add({"D": 0, "method": "torch", "ms": 2.0})
    with pytest.raises(ValueError, match="same"):
        results.add({"D": 0, "method": "torch", "ms": 3.0})
    written = json.loads((tmp_path / "keyed.json").read_text())
    assert [r["method"] for r in written["rows"]] == ["triton", "torch"]
    run = harness.Run("keyed_report", out_dir=tmp_path)
    with pytest.raises(ValueError, match="same"):
        run.report([{"D": 1}, {"D": 1}], key=("D",))
    path = run.report([{"D": 1}, {"D": 2}], key=("D",))
    assert json.loads(path.read_text())["benchmark"] == "keyed_report"


def test_percentiles_ms_on_cuda_asks_do_bench_for_the_quantiles(monkeypatch):
    import triton.testing

    seen = {}

    def fake_do_bench(fn, **kwargs):
        seen.update(kwargs)
        return [1.0, 2.0, 3.0]

    monkeypatch.setattr(timing, "on_gpu", lambda: True)
    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    assert timing.percentiles_ms(lambda: None) == {"p20_ms": 1.0, "p50_ms": 2.0, "p80_ms": 3.0}
    assert seen["quantiles"] == [0.2, 0.5, 0.8]
    assert timing.median_ms(lambda: None) == 2.0
