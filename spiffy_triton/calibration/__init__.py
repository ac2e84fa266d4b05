"""Offline calibration of draft graphs (docs/DESIGN.md §6), by concern:

- `traces`: vanilla decoding recorded through `generate` itself, as formulas per step;
- `selection`: the two objectives, graph selection, the replay simulator (`simulate`);
- `graph_io`: `calibrate` (traces + selection in one call), saving graphs (loading, and the
  per-phase `PhasedDraftGraph`, are `spiffy_triton.graph`'s, re-exported here);
- `drawing`: pictures of a graph.
"""

from ..graph import PHASED_FORMAT, PhasedDraftGraph, load_graph
from .graph_io import calibrate, save_graph, stored_counts
from .selection import OBJECTIVES, node_counts, select_graph, select_phased_graph, simulate
from .traces import (
    DEFAULT_MAX_TOKEN_RANK,
    TraceBlock,
    Traces,
    TraceStep,
    collect_traces,
    trace_step,
)

__all__ = [
    "DEFAULT_MAX_TOKEN_RANK",
    "OBJECTIVES",
    "PHASED_FORMAT",
    "PhasedDraftGraph",
    "TraceBlock",
    "TraceStep",
    "Traces",
    "calibrate",
    "collect_traces",
    "load_graph",
    "node_counts",
    "save_graph",
    "select_graph",
    "select_phased_graph",
    "simulate",
    "stored_counts",
    "trace_step",
]
