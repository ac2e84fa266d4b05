"""Compile report of every shipped kernel configuration for sm_90 and sm_80 (no GPU needed).

    python -m benchmarks.compile_report [--out benchmarks/results/compile_report.json]

Prints registers, spills, shared memory and tensor-core instruction counts per configuration
and writes the JSON; see spiffy_triton/compile_report.py. Exits 1 when a configuration spills,
exceeds the device's shared memory or lacks the tensor-core instructions it declares.
"""

import sys
from pathlib import Path

from spiffy_triton.compile_report import main

RESULTS = Path(__file__).resolve().parent / "results" / "compile_report.json"

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args = ["--out", str(RESULTS), *args]
    sys.exit(main(args))
