"""The benchmark studies of spiffy-triton, one module each, run from the repository root (or
with the checkout on PYTHONPATH) as ``python -m benchmarks.<study>``; ``python -m
benchmarks.run_all`` runs them all. The harness they share is benchmarks/harness.py (a `Run`
built from the command line, keyed result tables) and benchmarks/timing.py (p20 / p50 / p80
timings, table, JSON). docs/BENCHMARKS.md says what each measures."""
