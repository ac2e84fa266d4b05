"""Per-phase draft graphs: one graph per range of the root's masked count (`PhasedDraftGraph`);
`spiffy_triton.calibration.selection.select_phased_graph` selects them.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..decoding.drafting import DraftCandidate, probability_filler
from ..graph import DraftGraph, Formula

PHASED_FORMAT = "spiffy-phased-draft-graph"


class PhasedDraftGraph(DraftGraph):
    """One graph per range of the root's masked count; as a `DraftGraph` it is the union of
    the phase graphs (what `generate` validates and counts statistics by). Pass
    ``filler=graph.filler()`` to `generate` so that each root gets its phase's nodes."""

    def __init__(self, phases: Sequence[tuple[int, int, DraftGraph]], *, name: str | None = None):
        if not phases:
            raise ValueError("PhasedDraftGraph needs at least one phase")
        ranges = sorted((lo, hi) for lo, hi, _ in phases)
        for lo, hi in ranges:
            if not 1 <= lo <= hi:
                raise ValueError(f"phase range [{lo}, {hi}] must satisfy 1 <= lo <= hi")
        for (_, hi), (lo, _) in zip(ranges, ranges[1:]):
            if lo <= hi:
                raise ValueError("phase ranges of masked counts must not overlap")
        union: dict[Formula, None] = {}
        for _, _, graph in phases:
            union.update(dict.fromkeys(graph.nodes))
        super().__init__(list(union), name=name)
        self.phases = tuple(sorted(phases, key=lambda p: p[0]))

    def phase_graph(self, num_masked: int) -> DraftGraph:
        """The graph of the phase holding `num_masked` (the nearest phase outside all)."""
        for lo, hi, graph in self.phases:
            if lo <= num_masked <= hi:
                return graph
        nearest = min(
            self.phases, key=lambda p: min(abs(num_masked - p[0]), abs(num_masked - p[1]))
        )
        return nearest[2]

    def filler(self, *, backend: str = "auto"):
        """A `spiffy_triton.decoding.drafting.Filler` that fills the root's phase graph; node
        indices are those of this (union) graph."""

        def fill(graph, root_state, p_last, mask_id) -> list[DraftCandidate]:
            num_masked = int((root_state == mask_id).sum())
            phase = self.phase_graph(num_masked)
            candidates = probability_filler(phase, root_state, p_last, mask_id, backend=backend)
            return [
                DraftCandidate(self.index(phase.nodes[c.node]), c.positions, c.tokens, c.probs)
                for c in candidates
            ]

        return fill

    def to_dict(self) -> dict:
        return {
            "format": PHASED_FORMAT,
            "version": 1,
            "name": self.name,
            "phases": [
                {"min_masked": lo, "max_masked": hi, "graph": g.to_dict()}
                for lo, hi, g in self.phases
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> PhasedDraftGraph:
        if not isinstance(data, dict) or data.get("format") != PHASED_FORMAT:
            raise ValueError(f"not a phased draft graph: expected format {PHASED_FORMAT!r}")
        phases = data.get("phases")
        if not isinstance(phases, list) or not phases:
            raise ValueError("phased draft graph JSON needs a non-empty 'phases' list")
        parsed = []
        for k, phase in enumerate(phases):
            try:
                lo, hi, graph = phase["min_masked"], phase["max_masked"], phase["graph"]
            except (TypeError, KeyError):
                raise ValueError(
                    f"phase {k} needs 'min_masked', 'max_masked' and 'graph'"
                ) from None
            for what, value in (("min_masked", lo), ("max_masked", hi)):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"phase {k}: {what} must be an int, got {value!r}")
            parsed.append((lo, hi, DraftGraph.from_dict(graph)))
        return cls(parsed, name=data.get("name"))
