"""The one-command GPU check (run it as `bash scripts/gpu_check.sh`): CUDA parity of every
kernel case, the attention and marginals benchmarks, and the verify-cost study, in under 8
minutes on one H100 / H200, results in benchmarks/results/gpu/.

Needs only Python >= 3.10 with torch (a CUDA build) and triton, and this checkout on
PYTHONPATH (the shell script sets it): no pip, no network, no pytest, numpy, tqdm, safetensors
or matplotlib. Each step runs in its own process under a time budget; every step writes its
JSON as it measures, so a step cut short keeps its rows. Without CUDA it says so in one line
and exits 2; `--small` runs the smoke sizes on whatever device there is (CPU: the Triton
interpreter), which is what CI runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "gpu"
TOTAL_BUDGET_S = 540  # under 10 minutes with start-up and the summary
# name -> (what python runs: a module under benchmarks/ or the parity script of tests/, its
# arguments on the GPU, its arguments with --small, share of the budget)
STEPS = {
    "parity": ("tests/parity_cases.py", ["--device", "cuda"], ["--small"], 0.42),
    "graph_attention": (
        "-m benchmarks.graph_attention",
        ["--contexts", "256,1024", "--drafts", "0,4,8,16"],
        ["--quick"],
        0.19,
    ),
    "marginals": ("-m benchmarks.marginals", [], ["--quick"], 0.12),
    "verify_cost": ("-m benchmarks.verify_cost", [], ["--small"], 0.17),
    "profile": ("-m benchmarks.profile_graph_attention", [], ["--quick"], 0.10),
}


def cuda_status() -> tuple[bool, str]:
    """(usable, one line saying what was found), without a traceback for any failure."""
    try:
        import torch
    except Exception as error:  # noqa: BLE001 (any import failure is reported in one line)
        return False, f"cannot import torch ({type(error).__name__}: {error})"
    try:
        import triton  # noqa: F401
    except Exception as error:  # noqa: BLE001
        return False, f"cannot import triton ({type(error).__name__}: {error})"
    if not torch.cuda.is_available():
        return False, f"no CUDA device visible to torch {torch.__version__}"
    return True, f"{torch.cuda.get_device_name()} (torch {torch.__version__})"


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def run_step(name: str, command: list[str], env: dict, timeout_s: float, log) -> dict:
    """Run one step in its own process group; kill the group at the time limit."""
    start = time.perf_counter()
    log.write(f"\n===== {name}: {' '.join(command)} (limit {timeout_s:.0f} s)\n")
    log.flush()
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=max(timeout_s, 1.0))
        status = "ok" if process.returncode == 0 else f"failed (exit {process.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        status = f"timeout after {timeout_s:.0f} s (rows written so far are kept)"
    seconds = time.perf_counter() - start
    log.write(output or "")
    log.flush()
    tail = (output or "").strip().splitlines()[-1:] or [""]
    return {"step": name, "status": status, "seconds": round(seconds, 1), "last_line": tail[0]}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="smoke sizes on any device (CI)")
    parser.add_argument("--out", type=Path, help=f"results folder (default {DEFAULT_OUT})")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated {list(STEPS)}")
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="total seconds")
    args = parser.parse_args(argv)
    args.steps = args.steps.split(",")
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        parser.error(f"--steps: unknown {unknown}; choose from {list(STEPS)}")
    default_out = Path(tempfile.gettempdir()) / "spiffy_gpu_check_small"
    args.out = (args.out or (default_out if args.small else DEFAULT_OUT)).resolve()
    return args


def run_steps(args, out: Path) -> dict:
    """Every step in its own process under its share of the budget; the summary is rewritten
    to `gpu_check.json` after each."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["SPIFFY_BENCH_RESULTS_DIR"] = str(out)
    deadline = time.perf_counter() + args.budget_s
    summary = {"mode": "small" if args.small else "full", "machine": machine(), "steps": []}
    with open(out / "gpu_check.log", "w") as log:
        for index, name in enumerate(args.steps):
            script, full_args, small_args, _ = STEPS[name]
            target = script.split()  # ["-m", "benchmarks.<study>"] or the script's path
            command = [sys.executable, *target, *(small_args if args.small else full_args)]
            if name == "parity":
                command += ["--out", str(out / "parity.json")]
            # this step may use what earlier steps left over, not the later steps' shares
            reserved = sum(STEPS[later][3] for later in args.steps[index + 1 :]) * args.budget_s
            limit = deadline - time.perf_counter() - reserved
            row = run_step(name, command, env, limit, log)
            summary["steps"].append(row)
            print(f"{name:16s} {row['status']:40s} {row['seconds']:7.1f} s  {row['last_line']}")
            (out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    usable, found = cuda_status()
    if not usable and not args.small:
        print(f"gpu_check: needs a CUDA GPU: {found}. (`--small` runs the CPU smoke check.)")
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check: {found}; {'small' if args.small else 'full'} run; results in {out}")
    summary = run_steps(args, out)
    for partial in out.glob("*.partial"):  # a write cut by a kill: the last full file stands
        partial.unlink()
    failed = [r["step"] for r in summary["steps"] if r["status"] != "ok"]
    print(
        f"gpu_check: {len(args.steps) - len(failed)} of {len(args.steps)} steps ok"
        + (f"; not ok: {', '.join(failed)} (details in {out / 'gpu_check.log'})" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
