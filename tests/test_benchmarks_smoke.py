"""Smoke tests of the benchmark entry point (benchmarks/run_all.py) and the wall-clock study
(benchmarks/wallclock.py) on tiny sizes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchmarks import run_all

WRITES_ACCEPTANCE = """
from benchmarks.timing import report
report("toy_nfe", [{"mode": "dual", "D": d, "steps_per_forward": 1 + d / 4} for d in (0, 2, 4)])
report("toy_kernel", [{"shape": "32x128", "ref_ms": 2.0, "triton_ms": 1.0}])
"""


def _study(tmp_path: Path, name: str, body: str, timeout_s: float = 60.0) -> run_all.Study:
    script = tmp_path / "scripts" / f"{name}.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(body)
    return run_all.Study(name, f"toy {name}", script, timeout_s=timeout_s)


def test_run_all_records_each_outcome_and_writes_summary(tmp_path):
    out = tmp_path / "results"
    studies = [
        _study(tmp_path, "good", WRITES_ACCEPTANCE),
        _study(tmp_path, "broken", "raise RuntimeError('boom in study')\n"),
        _study(tmp_path, "slow", "import time\ntime.sleep(60)\n", timeout_s=2.0),
        _study(tmp_path, "killed", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"),
        run_all.Study("absent", "not written yet", tmp_path / "scripts" / "absent.py"),
    ]
    records = run_all.run(studies, out_dir=out, quick=True, argv=["--quick"])
    status = {r["study"]: r for r in records}
    assert status["good"]["status"] == "ok"
    assert status["broken"]["status"] == "failed"
    assert "boom in study" in status["broken"]["detail"]
    assert status["slow"]["status"] == "timeout"
    assert status["slow"]["seconds"] < 30
    assert status["absent"]["status"] == "missing"
    assert status["killed"]["status"] == "failed"
    assert status["killed"]["detail"].startswith("killed by signal 9")
    # results went to the redirected dir, with logs, the run record, plots and the summary
    assert json.loads((out / "toy_nfe.json").read_text())["rows"][2]["D"] == 4
    assert "boom in study" in (out / "logs" / "broken.log").read_text()
    recorded = json.loads((out / "run_all.json").read_text())
    assert [s["status"] for s in recorded["studies"]] == [
        "ok",
        "failed",
        "timeout",
        "failed",
        "missing",
    ]
    assert (out / "toy_nfe.png").stat().st_size > 0
    assert (out / "toy_kernel.png").stat().st_size > 0
    summary = (out / "SUMMARY.md").read_text()
    assert "| good | toy good | ok |" in summary
    assert "## toy_nfe" in summary and "| dual | 4 | 2 |" in summary
    assert "![toy_nfe](toy_nfe.png)" in summary

    # a later partial run keeps the other studies' last records and redraws stale plots
    (out / "toy_kernel.json").write_text(
        json.dumps({"rows": [{"shape": "64x128", "ref_ms": 3.0, "triton_ms": 1.5}]})
    )
    drawn = (out / "toy_kernel.png").stat().st_mtime
    records = run_all.run([_study(tmp_path, "noop", "pass\n")], out_dir=out)
    assert [r["study"] for r in records] == ["noop"]
    recorded = json.loads((out / "run_all.json").read_text())["studies"]
    assert [(r["study"], r.get("previous_run", False)) for r in recorded] == [
        ("noop", False),
        ("good", True),
        ("broken", True),
        ("slow", True),
        ("killed", True),
    ]  # fmt: skip (studies unknown to STUDIES: this run's first, then the kept ones)
    assert (out / "toy_kernel.png").stat().st_mtime > drawn


def test_run_all_runs_the_performance_model(tmp_path):
    out = tmp_path / "results"
    code = run_all.main(["--only", "perf_model", "--quick", "--out-dir", str(out)])
    assert code == 0
    summary = (out / "SUMMARY.md").read_text()
    assert "## perf_model" in summary and "MODELED" in summary
    assert (out / "perf_model.png").is_file()
    assert json.loads((out / "run_all.json").read_text())["studies"][0]["status"] == "ok"


def test_run_all_writes_to_the_user_cache_not_the_tracked_results(tmp_path, monkeypatch):
    """issue #21: without --out-dir a run goes to a new folder of the user's cache
    ($XDG_CACHE_HOME/spiffy-triton/bench/run-<time>), never over benchmarks/results/."""
    tracked = run_all.BENCH_DIR / "results"
    before = {p: p.stat().st_mtime_ns for p in tracked.rglob("*") if p.is_file()}
    monkeypatch.delenv("SPIFFY_BENCH_RESULTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert run_all.main(["--only", "perf_model", "--quick", "--no-plots"]) == 0
    (out,) = (tmp_path / "xdg" / "spiffy-triton" / "bench").iterdir()
    assert out.name.startswith("run-") and (out / "perf_model.json").is_file()
    assert (out / "run_all.json").is_file() and (out / "SUMMARY.md").is_file()
    after = {p: p.stat().st_mtime_ns for p in tracked.rglob("*") if p.is_file()}
    assert after == before
    monkeypatch.setenv("SPIFFY_BENCH_RESULTS_DIR", str(tmp_path / "env"))
    assert run_all.default_out_dir() == (tmp_path / "env").resolve()


def test_run_all_help_lists_options_defaults_and_study_times(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_all.main(["--help"], prog="spiffy-triton bench")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spiffy-triton bench")
    for option in ("--quick", "--only", "--skip", "--timeout", "--out-dir", "--summary-only"):
        assert option in out
    assert "(default: all)" in out
    for study in run_all.STUDIES:
        line = next(x for x in out.splitlines() if x.strip().startswith(study.name + " "))
        assert f"timeout {study.timeout_s:.0f} s" in line
        full, quick = run_all.MEASURED_SECONDS.get(study.name, (None, None))
        for label, seconds in (("full", full), ("--quick", quick)):
            if seconds is not None:
                assert f"{label} {seconds:.0f} s" in line
        if full is None and quick is None:
            assert "not timed" in line
    assert any(v != (None, None) for v in run_all.MEASURED_SECONDS.values())
    assert {s.name: s.timeout_s for s in run_all.STUDIES}["nfe"] == 1800.0
    with pytest.raises(SystemExit):
        run_all.main(["--summary-only"])
    assert "--summary-only needs --out-dir" in capsys.readouterr().err


def test_run_all_shows_a_studys_progress_as_it_runs(tmp_path, capsys):
    """issue #21: long studies show progress: each line a study prints reaches the console
    (prefixed with its name) as well as its log."""
    body = "import time\nfor k in range(3):\n    print(f'round {k} of 3')\n    time.sleep(0.2)\n"
    out = tmp_path / "results"
    (record,) = run_all.run([_study(tmp_path, "chatty", body)], out_dir=out, plots=False)
    assert record["status"] == "ok"
    console = capsys.readouterr().out
    assert all(f"  [chatty] round {k} of 3" in console for k in range(3))
    assert "round 2 of 3" in (out / "logs" / "chatty.log").read_text()


def test_run_all_rejects_unknown_study_names():
    with pytest.raises(SystemExit, match="unknown studies"):
        run_all.select("perf_model,nope", None)
    assert [s.name for s in run_all.select(None, "compile_report,nfe")] == [
        s.name for s in run_all.STUDIES if s.name not in ("compile_report", "nfe")
    ]


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    """A random-weight model of the bundled model's tokenizer, tiny enough for a smoke run."""
    from spiffy_triton.models import CharTokenizer, LLaDAModel, save_checkpoint
    from spiffy_triton.training.train_tiny import tiny_config

    tokenizer = CharTokenizer()
    config = dataclasses.replace(
        tiny_config(tokenizer), d_model=32, n_heads=2, n_kv_heads=1, n_layers=1, mlp_hidden_size=64
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("toy_model")
    save_checkpoint(LLaDAModel(config, backend="torch", tokenizer=tokenizer), path)
    return path


def test_wallclock_quick(tmp_path, toy_checkpoint):
    from benchmarks import wallclock

    assert (
        wallclock.main(["--model", str(toy_checkpoint), "--quick", "--out-dir", str(tmp_path)]) == 0
    )
    payload = json.loads((tmp_path / "wallclock.json").read_text())
    assert payload["meta"]["label"].startswith("MEASURED")
    rows = {r["config"]: r for r in payload["rows"]}
    assert set(rows) == {"vanilla", "spiffy D=0", "spiffy D=3"}
    assert rows["vanilla"]["speedup"] == 1.0
    assert rows["vanilla"]["forward_cost_vs_vanilla"] == 1.0
    # D = 0 verifies nothing: one step per forward, vanilla's tokens
    assert rows["spiffy D=0"]["steps_per_forward"] == 1.0
    assert rows["spiffy D=0"]["nfe"] == rows["vanilla"]["nfe"] == 32
    assert rows["spiffy D=0"]["same_tokens_as_vanilla"] is True
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["model_ms"] > 0
        assert row["overhead_pct_of_model"] >= 0
        # the phase split is that of one repeat, so it adds up to that repeat's total
        phases = sum(row[f"{p}_ms"] for p in ("model", "drafting", "layout", "marginals", "walk"))
        assert 0 <= row["other_ms"] <= 0.25 * row["total_ms"]
        assert phases + row["other_ms"] == pytest.approx(row["total_ms"])
    assert rows["spiffy D=3"]["drafting_ms"] > 0
    assert (tmp_path / "wallclock.png").is_file()


def test_wallclock_rejects_bad_arguments():
    from benchmarks import wallclock

    with pytest.raises(ValueError, match="--drafts"):
        wallclock.parse_drafts("3,x")
    with pytest.raises(ValueError, match="0..16"):
        wallclock.parse_drafts("17")
    with pytest.raises(SystemExit):
        wallclock.main(["--repeats", "0"])


def test_cost_aware_quick(tmp_path, toy_checkpoint):
    from benchmarks import cost_aware

    argv = ["--model", str(toy_checkpoint), "--quick", "--modes", "greedy-dual,threshold-none"]
    assert cost_aware.main([*argv, "--out-dir", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "cost_aware.json").read_text())
    assert payload["meta"]["label"].startswith("MEASURED")
    rows = payload["rows"]
    assert [(r["mode"], r["config"]) for r in rows] == [
        (mode, config)
        for mode in ("greedy, dual cache", "threshold 0.9, no cache")
        for config in ("vanilla", "D=3", "auto")
    ]
    for row in rows:
        assert row["same_tokens_as_vanilla"] is True and row["tokens_per_s"] > 0
        assert row["speedup_q25"] <= row["speedup"] <= row["speedup_q75"]
        if row["config"] == "vanilla":
            assert row["drafts_per_forward"] == 0
        if row["config"] == "D=3":  # every filled node verified: up to 3 per forward
            assert 0 < row["drafts_per_forward"] <= 3
    noise = json.loads((tmp_path / "cost_aware_noise.json").read_text())["rows"]
    assert {(r["temperature"], r["filler"]) for r in noise} == {
        (t, f) for t in (0.3, 0.7, 1.0) for f in ("plain", "noise-aware")
    }
    assert all(r["same_tokens_as_vanilla"] for r in noise)


def test_acceptance_quick(tmp_path, toy_checkpoint):
    from benchmarks import acceptance

    assert (
        acceptance.main(["--model", str(toy_checkpoint), "--quick", "--out-dir", str(tmp_path)])
        == 0
    )
    payload = json.loads((tmp_path / "acceptance.json").read_text())
    rows = {r["graph"]: r for r in payload["rows"]}
    assert set(rows) == {
        "default", "calibrated, top-1 tokens", "calibrated, top-4 tokens",
        "calibrated, 2 phases", "calibrated, 4 phases", "selected on held-out (bound)",
    }  # fmt: skip
    assert rows["default"]["vs_default"] == 1.0
    for row in rows.values():  # a replayed walk never takes more forwards than vanilla
        assert 0 < row["nfe"] <= row["vanilla_nfe"]
        assert row["nfe_speedup"] == pytest.approx(row["vanilla_nfe"] / row["nfe"])
    per_step = payload["meta"]["per_step_in_block"]
    for row in per_step:  # the outcomes of each step's roots are a partition
        assert sum(row[name] for name in acceptance.OUTCOMES) == pytest.approx(1.0)
    assert sum(r["roots"] for r in per_step) == payload["meta"]["heldout_traces"]["trace_steps"]
    assert (tmp_path / "acceptance_loss.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [(["--modes", "greedy"], "--modes"), (["--drafts", "3,x"], "--drafts"),
     (["--drafts", "0"], "--drafts"), (["--repeats", "0"], "--repeats")],
)  # fmt: skip
def test_cost_aware_rejects_bad_arguments(argv, message, capsys):
    from benchmarks import cost_aware

    with pytest.raises(SystemExit):
        cost_aware.main(argv)
    assert message in capsys.readouterr().err


def test_run_all_lists_studies_and_accepts_a_leading_separator(capsys):
    assert run_all.main(["--", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(study.name in listed for study in run_all.STUDIES)


def test_plain_attention_ab_runs_both_paths(capsys, tmp_path):
    """benchmarks/plain_attention.py swaps the one attention-path decision (VerifyInputs) and
    restores it; both variants give the same tokens."""
    from benchmarks import plain_attention
    from spiffy_triton.verify_inputs import VerifyInputs

    code_now = VerifyInputs.attention_layout
    argv = ["--prompts", "1", "--repeats", "1", "--gen-length", "32", "--out-dir", str(tmp_path)]
    assert plain_attention.main(argv) == 0
    assert VerifyInputs.attention_layout is code_now
    assert "outputs identical: True" in capsys.readouterr().out
    rows = json.loads((tmp_path / "plain_attention.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == plain_attention.build_run([]).variants
    assert all(r["p20_ms"] <= r["p50_ms"] <= r["p80_ms"] and r["same"] for r in rows)
