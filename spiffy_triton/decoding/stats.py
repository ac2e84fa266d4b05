"""What a `generate` call returns and measures: `GenerateOutput`, `DecodeStats`, the phase clock."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

PHASES = ("model", "drafting", "layout", "marginals", "walk")


@dataclass
class DecodeStats:
    """What one `generate` call did.

    ``steps_per_forward[n]``: how many forwards advanced ``n`` steps. ``node_verified[k]`` /
    ``node_accepted[k]``: how often graph node ``k`` was verified / walked through.
    ``time_s``: wall time per phase (model, drafting, layout, marginals, walk) and in total.
    """

    nfe: int = 0
    steps: int = 0
    gen_length: int = 0
    cache: str | None = None
    verify: str = "batch"
    exact: bool = True
    graph: str | None = None
    draft_budget: dict | None = None  # max_drafts="auto": `AutoDraftBudget.summary()`
    drafts_verified: int = 0
    steps_per_forward: collections.Counter = field(default_factory=collections.Counter)
    node_verified: list[int] = field(default_factory=list)
    node_accepted: list[int] = field(default_factory=list)
    time_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    @property
    def total_time_s(self) -> float:
        return self.time_s.get("total", sum(self.time_s[p] for p in PHASES))

    @property
    def steps_per_nfe(self) -> float:
        return self.steps / self.nfe if self.nfe else 0.0

    @property
    def tokens_per_second(self) -> float:
        total = self.total_time_s
        return self.gen_length / total if total > 0 else 0.0

    @property
    def acceptance(self) -> list[float]:
        """Per node: accepted / verified (0 where never verified)."""
        return [a / v if v else 0.0 for a, v in zip(self.node_accepted, self.node_verified)]

    def to_dict(self) -> dict:
        return {
            "nfe": self.nfe,
            "steps": self.steps,
            "gen_length": self.gen_length,
            "cache": self.cache,
            "verify": self.verify,
            "exact": self.exact,
            "graph": self.graph,
            "draft_budget": self.draft_budget,
            "drafts_verified": self.drafts_verified,
            "steps_per_nfe": self.steps_per_nfe,
            "steps_per_forward": {str(k): v for k, v in sorted(self.steps_per_forward.items())},
            "node_verified": list(self.node_verified),
            "node_accepted": list(self.node_accepted),
            "acceptance": self.acceptance,
            "time_s": dict(self.time_s),
            "tokens_per_second": self.tokens_per_second,
        }


class GenerateOutput(NamedTuple):
    tokens: torch.Tensor  # LongTensor [1, P + gen_length]
    nfe: int  # forward passes (prefills included)
    steps: int  # transitions made
    stats: DecodeStats


class PhaseClock:
    """Accumulates wall time per phase (synchronising CUDA so GPU work lands in its phase)."""

    def __init__(self, times: dict[str, float], device: torch.device):
        self.times = times
        self.cuda = device.type == "cuda"
        self.last = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, phase: str) -> None:
        now = self._now()
        self.times[phase] += now - self.last
        self.last = now
