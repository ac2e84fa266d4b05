"""End to end: the bundled model decoding with the Triton backend gives the tokens, steps and
forward count of the PyTorch backend on CPU; vanilla and Spiffy (8 drafts), no cache and dual
cache, T = 0 and T = 0.7. All eight run on CUDA; the interpreter runs two (a decode there takes
seconds per step). The cases live in tests/parity_cases.py, shared with the standalone runner.
"""

from __future__ import annotations

import pytest
from parity_cases import cases_of
from utils import parity_params


@pytest.mark.parametrize("case, device", parity_params(cases_of("end_to_end")))
def test_decode_with_triton_kernels_matches_cpu_pytorch(case, device):
    case.run(device)


def test_end_to_end_cases_cover_both_modes_caches_and_temperatures():
    combos = {case.args for case in cases_of("end_to_end")}
    assert combos == {(g, c, t) for g in (None, 8) for c in (None, "dual") for t in (0.0, 0.7)}
