"""The analytic performance model behind `benchmarks/perf_model.py`, by concern (a MODEL, not a
measurement):

- `hardware`: the model's and the GPUs' shapes (`ModelShape`, `Hardware`, `StepShape`);
- `ops`: the bytes and FLOPs of a verify forward per operator, and the roofline (`predict`);
- `acceptance`: measured steps per forward, and the time of a whole block;
- `tables`: the study's rows and its plot.
"""
