"""`calibrate` (traces and selection in one call), and calibrated graphs on disk (read back
by the one loader, `spiffy_triton.graph.load_graph`, re-exported here)."""

from __future__ import annotations

import json
from pathlib import Path

from ..graph import DraftGraph, PhasedDraftGraph
from .selection import (
    OBJECTIVES,
    _check_budget,
    node_counts,
    select_graph,
    select_phased_graph,
    simulate,
)
from .traces import DEFAULT_MAX_TOKEN_RANK, Traces, collect_traces


def calibrate(
    model,
    prompts,
    *,
    budget: int,
    objective: str = "steps",
    phases: int | None = None,
    gen_length: int = 64,
    block_length: int = 32,
    max_token_rank: int = DEFAULT_MAX_TOKEN_RANK,
    progress: bool = False,
    backend: str = "auto",
    **decode_kwargs,
) -> DraftGraph:
    """Calibrate a draft graph of `budget` nodes on vanilla decoding of `prompts`.

    Args:
        prompts: strings (encoded by ``model.tokenizer``), token id lists or LongTensors.
        objective: ``"steps"`` (expected steps per forward on the traces) or ``"degree1"``
            (the paper's count-and-parents accumulation).
        phases: None for one graph, or ``n`` for a `PhasedDraftGraph` of ``n`` phases.
        max_token_rank: the largest token rank a formula may use.
        decode_kwargs: `generate`'s decode settings (steps, temperature, remasking, threshold,
            factor, cache, seed): use the ones the graph will decode with.
    """
    budget = _check_budget(budget)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    traces = collect_traces(
        model,
        prompts,
        gen_length=gen_length,
        block_length=block_length,
        max_token_rank=max_token_rank,
        progress=progress,
        backend=backend,
        **decode_kwargs,
    )
    if phases is not None:
        return select_phased_graph(traces, budget, phases, objective=objective)
    return select_graph(traces, budget, objective=objective)


def save_graph(graph: DraftGraph, path: str | Path, traces: Traces | None = None) -> Path:
    """Write `graph` as JSON (loadable by `load_graph` / `DraftGraph.load`), with the node
    counts and the trace summary when `traces` are given."""
    data = graph.to_dict()
    if traces is not None:
        if isinstance(graph, PhasedDraftGraph):
            for phase, (_, _, g) in zip(data["phases"], graph.phases):
                phase["graph"]["counts"] = node_counts(traces, g)
        else:
            data["counts"] = node_counts(traces, graph)
        data["calibration"] = {**traces.summary(), "simulated": simulate(traces, graph)}
    path = Path(path)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def stored_counts(path: str | Path) -> list[int] | None:
    """The node counts saved with a calibrated graph (None if the file has none)."""
    data = json.loads(Path(path).read_text())
    counts = data.get("counts") if isinstance(data, dict) else None
    if counts is None:
        return None
    if not isinstance(counts, list) or not all(isinstance(c, int) for c in counts):
        raise ValueError(f"draft graph file {path}: 'counts' must be a list of ints")
    return counts
