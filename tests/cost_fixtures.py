"""Fixtures shared by the cost-aware budget's tests (test_cost_model.py, test_auto_budget.py):
a tiny LLaDA that records the shape of every verify forward, a prompt, a memory-only cost
cache emptied around each test, a small draft graph. Each test module wraps them in its own
fixtures (`model`, `prompt`, the autouse `fresh_cost_cache`).

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import torch
from utils import TINY_MASK_ID, tiny_random_llada

from spiffy_triton.decoding import PHASES
from spiffy_triton.decoding import budget as cm
from spiffy_triton.decoding import cost_model as cost_module
from spiffy_triton.decoding.stats import PhaseClock
from spiffy_triton.decoding.verify import Verifier
from spiffy_triton.graph import DraftGraph
from spiffy_triton.models import LLaDAModel

MASK = TINY_MASK_ID
GRAPH = DraftGraph([[(1, 1)], [(1, 1), (2, 1)], [(2, 1)], [(1, 1), (2, 1), (3, 1)]])


class RecordingModel(LLaDAModel):
    """Records (batch, query rows, key rows) of every non-prefill forward."""

    def forward(self, input_ids, position_ids=None, layout=None, cache=None):
        # no layout: the plain attention path, every row sees every row (no cache)
        keys = input_ids.shape[1] if layout is None else layout.num_k_rows
        self.shapes.append((input_ids.shape[0], input_ids.shape[1], keys))
        return super().forward(input_ids, position_ids=position_ids, layout=layout, cache=cache)


def recording_model() -> RecordingModel:
    """The tiny random LLaDA of these tests, recording its forwards' shapes (``.shapes``)."""
    m = tiny_random_llada(3, max_sequence_length=96, model_class=RecordingModel)
    m.shapes = []
    return m


def sample_prompt() -> torch.Tensor:
    return torch.tensor([[5, 9, 11, 4, 17, 8]])


def memory_only_cost_cache(monkeypatch):
    """A test module's autouse fixture body: cost models in memory only, emptied before and
    after the test (no test reads another's)."""
    monkeypatch.setenv(cost_module.CACHE_ENV, "off")
    cm.clear_cost_cache()
    yield
    cm.clear_cost_cache()


def verifier(model, cache, verify):
    return Verifier(model, cache, verify, PhaseClock(dict.fromkeys(PHASES, 0.0), model.device))
