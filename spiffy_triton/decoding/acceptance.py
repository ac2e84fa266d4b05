"""Acceptance estimates of the cost-aware draft budget: per filled draft, the probability that
the walk passes through it (`spiffy_triton.decoding.budget` turns them into a choice).

Benefit. `AcceptanceEstimator` estimates, per filled draft, the probability that the walk passes
through it, as a chain of conditional rates (node given its parent; see the class). A node's
prior rate is the share of calibration steps whose true path went through it (calibration
counts, `calibration_prior`), or, without counts, the default graphs' prior
(`spiffy_triton.graph.prior_step_probability`) summed over the node's orders of unmasking. The
run's own outcomes update it (Beta posterior), and the current marginals enter through bands:
the rate is learned separately per band of the probability of the tokens the node adds under
``P_last`` (`CONFIDENCE_BANDS`), each band shrunk towards the node's overall rate.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..graph import DraftGraph, prior_step_probability

DEFAULT_PRIOR_STRENGTH = 4.0  # pseudo-observations behind an acceptance prior
# Band edges of a node's added-token probability under P_last: rates are learned per band.
CONFIDENCE_BANDS = (0.5, 0.8, 0.95)


def confidence_band(probability: float) -> int:
    """Index of `probability`'s band in `CONFIDENCE_BANDS` (0: below the first edge)."""
    return sum(probability >= edge for edge in CONFIDENCE_BANDS)


def prior_path_probability(formula: Sequence[tuple[int, int]]) -> float:
    """Probability, under the default graphs' prior, that one-token-per-step decoding passes
    through `formula`'s state: the sum over every order of unmasking its pairs."""
    pairs = tuple(formula)
    reach: dict[frozenset, float] = {frozenset(): 1.0}
    # Subsets by increasing size; each is reached from the subsets one pair smaller.
    for size in range(1, len(pairs) + 1):
        for subset in _subsets(pairs, size):
            total = 0.0
            for pair in subset:
                parent = subset - {pair}
                total += reach[parent] * prior_step_probability(parent, pair)
            reach[subset] = total
    return reach[frozenset(pairs)]


def _subsets(pairs: tuple, size: int) -> list[frozenset]:
    return [frozenset(c) for c in itertools.combinations(pairs, size)]


def calibration_prior(path: str | os.PathLike) -> list[float]:
    """Per node of a calibrated graph file (`spiffy_triton.calibration.save_graph` with traces):
    the share of ranked calibration steps whose true path went through the node."""
    data = json.loads(Path(path).read_text())
    counts = data.get("counts") if isinstance(data, dict) else None
    info = data.get("calibration", {}) if isinstance(data, dict) else {}
    steps = info.get("ranked_steps") or info.get("trace_steps")
    if not isinstance(counts, list) or not steps:
        raise ValueError(
            f"{path}: not a calibrated graph with counts (save it with "
            "spiffy_triton.calibration.save_graph(graph, path, traces))"
        )
    return [min(1.0, c / steps) for c in counts]


class AcceptanceEstimator:
    """Per filled draft of one graph: the probability that decoding passes through its state;
    see the module docstring. `prior` gives each node's prior on-path rate (default: the
    graph prior).

    The estimate chains conditional rates, as the walk does: a node is reached through one of
    its parents, so ``estimate(q) = estimate(best direct parent of q) * cond(q)`` (``cond`` alone
    for a node without filled parents: its parent is the root), where ``cond(q)`` is the rate at
    which the true path, having reached a direct parent of ``q`` (largest filled strict subset),
    stepped onto ``q`` next. Every filled candidate, verified or not, is an observation of
    ``cond`` after each forward: the decoder knows the true states it walked to ``X_1 .. X_m``
    (``X_0`` = root); if some ``X_i``, ``i < m``, is one of the candidate's direct parents, the
    candidate is a hit if ``X_{i+1} = q``, unknown if ``X_{i+1}`` lies strictly inside ``q``,
    a miss otherwise; if the walk never stepped on from a parent, it says nothing about ``q``.
    Conditioning on the parent keeps deep nodes' rates free of the bias of walks that stop
    early (a walk that stops before a deep node's parent neither hits nor misses it).

    The current marginals enter by band: each observation is also counted in the band
    (`CONFIDENCE_BANDS`) of the ``P_last`` probability of the tokens the node adds to its
    parent, and the estimate is the band's rate with the node's overall rate as its prior
    (``prior_strength`` pseudo-observations).
    """

    def __init__(
        self,
        graph: DraftGraph,
        prior: Sequence[float] | None = None,
        *,
        prior_strength: float = DEFAULT_PRIOR_STRENGTH,
    ):
        if prior is None:
            prior = [prior_path_probability(f) for f in graph.nodes]
        prior = list(prior)
        if len(prior) != len(graph):
            raise ValueError(f"prior has {len(prior)} rates, the graph has {len(graph)} nodes")
        if any(not (0.0 <= p <= 1.0) for p in prior):
            raise ValueError(f"prior rates must be in [0, 1], got {prior}")
        if not (prior_strength > 0 and math.isfinite(prior_strength)):
            raise ValueError(f"prior_strength must be > 0, got {prior_strength!r}")
        self.graph = graph
        self.prior = prior
        self.prior_strength = float(prior_strength)
        # Conditional prior: the node's rate over its most likely immediate parent's.
        self.cond_prior = []
        for node in range(len(graph)):
            parents = [prior[p] for p in graph.immediate_parents(node)]
            base = max(parents) if parents else 1.0
            self.cond_prior.append(min(1.0, prior[node] / base) if base > 0 else 0.0)
        self.observed = [0] * len(graph)
        self.hits = [0] * len(graph)
        # The same counts split by how likely the node's added tokens were (`CONFIDENCE_BANDS`).
        self.band_observed = [[0] * (len(CONFIDENCE_BANDS) + 1) for _ in graph.nodes]
        self.band_hits = [[0] * (len(CONFIDENCE_BANDS) + 1) for _ in graph.nodes]
        # Of the last `estimates` call, per node: the probability of the tokens it adds to its
        # parent, and the states (pair sets) of its direct parents (the root: empty set).
        self._step_joint: dict[int, float] = {}
        self._stages: dict[int, list[frozenset]] = {}
        self.spread: list[float] = []  # of the last `estimates` call

    def cond_rate(self, node: int) -> float:
        """Posterior mean of the node's conditional rate."""
        alpha = self.cond_prior[node] * self.prior_strength + self.hits[node]
        return alpha / (self.prior_strength + self.observed[node])

    def band_rate(self, node: int, band: int) -> float:
        """The node's conditional rate within `band`, its overall rate as the band's prior."""
        return (self.band_hits[node][band] + self.prior_strength * self.cond_rate(node)) / (
            self.band_observed[node][band] + self.prior_strength
        )

    def upper_bounds(self) -> list[float]:
        """Per node, an on-path probability no fill can beat by much: the chain of its best
        band's conditional rates (before filling, when the bands are not known yet)."""
        order, direct_parents = graph_structure(self.graph, frozenset(range(len(self.graph))))
        bound = [0.0] * len(self.graph)
        for node in order:
            best = max(self.band_rate(node, b) for b in range(len(CONFIDENCE_BANDS) + 1))
            parents = direct_parents[node]
            bound[node] = best * (max(bound[p] for p in parents) if parents else 1.0)
        return bound

    def estimates(self, candidates: Sequence) -> list[float]:
        """On-path probability of each filled candidate (``.node``, ``.probs``) now: chained
        conditional rates, each the node's rate in the band of the probability of the tokens
        it adds to its parent (shrunk towards its overall rate). ``self.spread`` then holds
        each estimate's posterior standard deviation (of its own band rate, times its base)."""
        index = {c.node: i for i, c in enumerate(candidates)}
        order, direct_parents = graph_structure(self.graph, frozenset(index))
        joints = [math.prod(c.probs) for c in candidates]
        out = [0.0] * len(candidates)
        self.spread = [0.0] * len(candidates)
        self._step_joint = {}
        self._stages = {}
        for node in order:  # parents before children
            i = index[node]
            c = candidates[i]
            direct = direct_parents[node]
            base, parent_joint = 1.0, 1.0
            if direct:
                best = max(direct, key=lambda p: (out[index[p]], -p))
                base = out[index[best]]
                parent_joint = joints[index[best]]
            step_joint = joints[i] / parent_joint if parent_joint > 0 else 0.0
            self._step_joint[c.node] = step_joint
            self._stages[c.node] = [
                frozenset(zip(candidates[index[p]].positions, candidates[index[p]].tokens))
                for p in direct
            ] or [frozenset()]
            band = confidence_band(step_joint)
            rate = self.band_rate(c.node, band)
            out[i] = base * rate
            # the posterior's spread of the band rate, carried through the chain's base
            seen = self.band_observed[c.node][band] + self.prior_strength + 1.0
            self.spread[i] = base * math.sqrt(rate * (1.0 - rate) / seen)
        return out

    def observe(
        self, candidates: Iterable, path: Sequence[frozenset], *, complete: bool = False
    ) -> None:
        """Record one forward. `path`: the true states it walked to, each as the set of
        ``(block offset, token)`` pairs decoded since the root; `complete`: the last one is
        the full block (nothing lies beyond it)."""
        states = [frozenset(), *path]
        for candidate in candidates:
            stages = self._stages.get(candidate.node)
            if stages is None:
                continue
            pairs = frozenset(zip(candidate.positions, candidate.tokens))
            stepped = [i for i in range(len(states) - 1) if states[i] in stages]
            if not stepped:
                continue  # the walk never stepped on from one of its parents
            after = states[stepped[-1] + 1]
            if after == pairs:
                hit = True
            elif after < pairs and not complete:
                continue  # an intermediate state: whether the path reaches it is unknown
            else:
                hit = False
            node = candidate.node
            self.observed[node] += 1
            self.hits[node] += hit
            step_joint = self._step_joint.get(node)
            if step_joint is None:
                step_joint = math.prod(candidate.probs)
            band = confidence_band(step_joint)
            self.band_observed[node][band] += 1
            self.band_hits[node][band] += hit


@functools.lru_cache(maxsize=512)
def graph_structure(
    graph: DraftGraph, present: frozenset[int]
) -> tuple[tuple[int, ...], dict[int, tuple[int, ...]]]:
    """The `present` nodes of `graph` by increasing size (parents first), and per node its
    direct parents among them: present strict subsets inside no other present strict subset.
    Cached: a decode run asks for the same few sets every iteration."""
    pairs = {n: frozenset(graph.nodes[n]) for n in present}
    direct = {}
    for node in present:
        inside = [p for p in graph.parents(node) if p in present]
        direct[node] = tuple(
            p for p in inside if not any(pairs[p] < pairs[o] for o in inside if o != p)
        )
    order = tuple(sorted(present, key=lambda n: (len(pairs[n]), n)))
    return order, direct
