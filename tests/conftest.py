"""Suite-wide set-up: Triton mode first, then the bf16 shim, then thread budget.

`import spiffy_triton` must come before anything imports triton: in a process without CUDA it
switches the Triton interpreter on (see spiffy_triton/triton_mode.py), so that the kernels
run on CPU tensors. Under the interpreter the test suite installs tests/bf16_shim.py, which
makes bfloat16 arithmetic compute in float32 instead of on raw bit patterns.
"""

from __future__ import annotations

import os

# isort: off
import spiffy_triton  # noqa: F401  (first: decides the interpreter mode before triton loads)
import torch
from utils import interpreter_active

# isort: on

if interpreter_active():
    import bf16_shim

    bf16_shim.install()

# The verify cost models of max_drafts="auto" persist on disk by default (a user cache
# directory): the suite keeps them in memory, so that no test reads another run's measurement
# or writes to the user's cache (tests of the disk cache set the variable themselves).
os.environ.setdefault("SPIFFY_TRITON_COST_CACHE", "off")

# pytest-xdist runs one worker per core; one intra-op thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_report_header(config):
    mode = "interpreter" if interpreter_active() else "compiled"
    shim = "installed" if interpreter_active() else "not needed"
    return f"spiffy-triton: triton kernels {mode}, bf16 shim {shim}"
