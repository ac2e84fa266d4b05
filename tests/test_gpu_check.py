"""scripts/gpu_check.sh: without CUDA one line and a non-zero exit; its small mode runs every
step on CPU from a plain checkout (no install: a venv that holds torch and triton but not
spiffy_triton); a step past its time limit is killed and its rows so far are kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check
from benchmarks.timing import Results

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def run_script(*args: str, python: str = sys.executable, timeout: float = 900):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env.update(PYTHON=python, CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_without_cuda_one_line_and_a_nonzero_exit(tmp_path):
    result = run_script("--out", str(tmp_path))
    assert result.returncode == 2
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0], result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not any(tmp_path.iterdir()), "nothing is written without a GPU"


def test_missing_python_is_one_line_too(tmp_path):
    result = run_script(python=str(tmp_path / "no-python"))
    assert result.returncode == 2
    assert result.stdout.strip().splitlines() == [
        f"gpu_check: no Python interpreter '{tmp_path / 'no-python'}' (set PYTHON=/path/to/python)"
    ]


def test_unknown_step_is_rejected(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--small", "--steps", "parity,typo"])
    assert "unknown ['typo']" in capsys.readouterr().err


@pytest.mark.slow
def test_small_mode_runs_every_step_from_a_plain_checkout(tmp_path):
    from test_packaging import make_venv

    python = make_venv(tmp_path / "venv")  # torch and triton, no spiffy_triton installed
    probe = subprocess.run(
        [str(python), "-c", "import spiffy_triton"], cwd=tmp_path, capture_output=True
    )
    assert probe.returncode != 0, "the bare venv must not see an installed spiffy_triton"
    out = tmp_path / "results"
    result = run_script("--small", "--out", str(out), python=str(python))
    assert result.returncode == 0, result.stdout + result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files
    summary = json.loads((out / "gpu_check.json").read_text())
    assert [s["step"] for s in summary["steps"]] == list(gpu_check.STEPS)
    assert all(s["status"] == "ok" for s in summary["steps"]), summary
    parity = json.loads((out / "parity.json").read_text())["rows"]
    assert parity and all(r["status"] == "passed" for r in parity), parity
    assert {r["group"] for r in parity} == {"attention", "marginals", "ops", "end_to_end"}
    verify = json.loads((out / "verify_cost.json").read_text())["rows"]
    forwards = {(r["D"], r["method"]) for r in verify if r["study"] == "forward"}
    assert forwards == {(d, m) for d in (0, 3) for m in ("triton", "torch", "sdpa_dense_mask")}
    decodes = [r for r in verify if r["study"].startswith("decode")]
    assert len(decodes) == 6 and all(r["steps"] == 8 for r in decodes)
    batches = [r for r in verify if r["study"].startswith("batch")]
    assert {(r["batch"], r["D"]) for r in batches} == {(b, d) for b in (1, 2) for d in (0, 8)}
    assert all(r["forwards"] <= r["nfe"] for r in batches)
    for name in ("graph_attention.json", "marginals.json"):
        assert json.loads((out / name).read_text())["rows"], name


def test_a_step_past_its_limit_is_killed(tmp_path):
    command = [sys.executable, "-c", "import time; print('first row', flush=True); time.sleep(60)"]
    with open(tmp_path / "log", "w") as log:
        row = gpu_check.run_step("sleeper", command, dict(os.environ), 2.0, log)
    assert row["status"].startswith("timeout after 2 s") and row["seconds"] < 30
    assert row["last_line"] == "first row"


def test_results_are_written_after_every_row(tmp_path):
    results = Results("probe", ("a",), meta={"m": 1}, out_dir=tmp_path)
    for count in (1, 2):
        results.add({"a": count})
        written = json.loads((tmp_path / "probe.json").read_text())
        assert [r["a"] for r in written["rows"]] == list(range(1, count + 1))
    assert not list(tmp_path.glob("*.partial"))


BLOCKED = ("numpy", "pytest", "tqdm", "matplotlib", "safetensors", "hypothesis", "transformers")
GPU_PATH_IMPORTS = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # importing any of these now raises ImportError
sys.path.insert(0, {str(REPO / "tests")!r})
import parity_cases
import benchmarks.gpu_check, benchmarks.graph_attention, benchmarks.marginals
import benchmarks.verify_cost
import spiffy_triton.kernels.graph_attention, spiffy_triton.kernels.marginals
import torch
from spiffy_triton.decoding import generate
from spiffy_triton.models import load_model

model = load_model("tiny", dtype=torch.float32, backend="torch")  # no safetensors package
ids = torch.tensor([model.tokenizer.encode("Q: 1+1=?\\nA: ")])
print(generate(model, ids, gen_length=8, block_length=8, graph=3, cache="dual").nfe)
"""


def test_gpu_path_needs_no_optional_package(tmp_path):
    """What gpu_check.sh imports on a GPU box (compiled kernels, no interpreter), and loading
    and decoding the bundled model, work with numpy, pytest, tqdm, matplotlib and
    safetensors all missing."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(REPO), TRITON_INTERPRET="0")
    result = subprocess.run(
        [sys.executable, "-c", GPU_PATH_IMPORTS],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 1 <= int(result.stdout.strip().splitlines()[-1]) <= 8


def test_parity_resume_runs_only_what_did_not_pass(tmp_path):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    runner = [sys.executable, str(REPO / "tests" / "parity_cases.py"), "--device", "cpu"]
    runner += ["--small", "--groups", "marginals"]
    subprocess.run([*runner, "--out", str(first)], check=True, capture_output=True, cwd=REPO)
    earlier = json.loads(first.read_text())
    assert len(earlier["rows"]) >= 2
    earlier["rows"][0]["status"] = "failed"  # as a run that failed one case
    first.write_text(json.dumps(earlier))
    done = subprocess.run(
        [*runner, "--out", str(second), "--resume", str(first)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(earlier['rows']) - 1} passed cases kept" in done.stdout
    rerun = [line for line in done.stdout.splitlines() if line.startswith("PASSED")]
    assert rerun == [f"PASSED marginals/{earlier['rows'][0]['case']}"]
    rows = json.loads(second.read_text())["rows"]
    assert sorted(r["case"] for r in rows) == sorted(r["case"] for r in earlier["rows"])
    assert all(r["status"] == "passed" for r in rows)
    earlier["device"] = "cuda"
    first.write_text(json.dumps(earlier))
    wrong = subprocess.run([*runner, "--resume", str(first)], capture_output=True, text=True)
    assert wrong.returncode == 2 and "was run on cuda, not cpu" in wrong.stderr


def test_gpu_vs_model_reproduces_the_published_goal_count(tmp_path):
    """The README's count of met goals is what the committed H200 results give."""
    import shutil

    from benchmarks import gpu_vs_model

    for name in ("graph_attention", "marginals", "verify_cost", "profile_graph_attention"):
        shutil.copy(REPO / "benchmarks" / "results" / "gpu" / f"{name}.json", tmp_path)
    assert gpu_vs_model.main(["--gpu-dir", str(tmp_path)]) == 0
    goals = json.loads((tmp_path / "gpu_goals.json").read_text())
    met, total = goals["meta"]["met"].split(" of ")
    assert f"{met} of the {total} goal checks met" in (REPO / "README.md").read_text()
    kinds = {row["goal"] for row in goals["rows"]}
    assert "marginals of copy bandwidth" in kinds and "verify forward D8 / D0 (kernel)" in kinds
    modeled = json.loads((tmp_path / "measured_vs_modeled.json").read_text())["rows"]
    assert all(row["modeled_ms"] > 0 and row["ratio"] > 0 for row in modeled)


def test_gpu_vs_model_without_results_says_so(tmp_path, capsys):
    from benchmarks import gpu_vs_model

    assert gpu_vs_model.main(["--gpu-dir", str(tmp_path)]) == 2
    assert "no GPU results" in capsys.readouterr().out


def test_marginals_sweep_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIFFY_BENCH_RESULTS_DIR", str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.marginals_sweep", "--quick"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads((tmp_path / "marginals_sweep.json").read_text())["rows"]
    assert rows and all(r.get("ms") and "differ" not in r.get("note", "") for r in rows)
