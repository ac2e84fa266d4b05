"""Draft graphs: which guesses of future block states Spiffy verifies (docs/DESIGN.md §2, §6).

A node is a *formula*: a set of pairs ``(i, j)`` meaning "the still-masked position of
confidence rank ``i`` (under the most recent marginals ``P_last``), filled with its
vocabulary-rank-``j`` token". Ranks are 1-based. Filling a formula into the current root
state gives a draft state (`spiffy_triton.decoding.drafting`). Node ``A`` is a parent of node
``B`` when ``B``'s pairs strictly contain ``A``'s, so a node may have several parents (a graph,
not a tree); parents are always derived from the node set, never stored independently.

Bottom of the module map: standard library only.

Default graphs (`DraftGraph.default`) need no calibration. They are chosen greedily under a
simple prior of how the decoder moves one token per step relative to the ranks of ``P_last``:
the next committed position is the ``k``-th lowest rank still masked with probability
``(1 - a) * a**(k - 1)`` and takes its token of rank ``j`` with probability
``(1 - b) * b**(j - 1)`` (``a = 0.3``, ``b = 0.1``). The expected number of steps one forward
advances is ``sum over nodes of P(the decoder reaches the node through nodes of the graph)``;
each default graph adds, one at a time, the candidate node that raises that expectation the
most. Budgets are nested: ``default(d)`` is the first ``d`` nodes of ``default(16)``. A block
shorter than the graph's highest position rank gets the same greedy choice among the nodes
that fit it (``default(d, block_length=L)``; what ``generate(graph=d)`` uses).
Calibrated graphs (`spiffy_triton.calibration`) replace the prior with recorded traces.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

Pair = tuple[int, int]
Formula = tuple[Pair, ...]

FORMAT = "spiffy-draft-graph"
PHASED_FORMAT = "spiffy-phased-draft-graph"
VERSION = 1
MAX_DEFAULT_BUDGET = 16

# Prior of the default graphs (see the module docstring).
_PRIOR_POSITION_DECAY = 0.3
_PRIOR_TOKEN_DECAY = 0.1
_PRIOR_MAX_POSITION_RANK = 10
_PRIOR_MAX_TOKEN_RANK = 3


def _as_rank(value: object, what: str, node_index: int) -> int:
    # bool is an int subclass; a rank of True is a bug in the caller, not rank 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"DraftGraph node {node_index}: {what} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"DraftGraph node {node_index}: {what} must be >= 1 (ranks are 1-based)")
    return value


def canonical_formula(pairs: Iterable[Sequence[int]], node_index: int = 0) -> Formula:
    """Validate one formula and return it as pairs sorted by position rank."""
    try:
        items = list(pairs)
    except TypeError:
        raise ValueError(
            f"DraftGraph node {node_index}: a formula is a list of (position_rank, token_rank) "
            f"pairs, got {pairs!r}"
        ) from None
    if not items:
        raise ValueError(f"DraftGraph node {node_index}: a formula needs at least one pair")
    out = []
    for pair in items:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(
                f"DraftGraph node {node_index}: each pair must be (position_rank, token_rank), "
                f"got {pair!r}"
            )
        out.append(
            (
                _as_rank(pair[0], "position rank", node_index),
                _as_rank(pair[1], "token rank", node_index),
            )
        )
    out.sort()
    positions = [p for p, _ in out]
    if len(set(positions)) != len(positions):
        raise ValueError(
            f"DraftGraph node {node_index}: position rank used twice in {out} "
            "(a position holds one token)"
        )
    return tuple(out)


class DraftGraph:
    """An ordered set of formulas; see the module docstring.

    ``nodes``: tuple of formulas (each a tuple of ``(position_rank, token_rank)`` pairs sorted
    by position rank). Node order is meaningful: it is the priority order used to break ties
    when pruning, and the index used by acceptance statistics.
    """

    def __init__(self, nodes: Iterable[Iterable[Sequence[int]]], *, name: str | None = None):
        formulas = [canonical_formula(f, k) for k, f in enumerate(nodes)]
        if not formulas:
            raise ValueError("DraftGraph needs at least one node")
        seen: dict[Formula, int] = {}
        for k, f in enumerate(formulas):
            if f in seen:
                raise ValueError(f"DraftGraph nodes {seen[f]} and {k} are the same formula {f}")
            seen[f] = k
        self._nodes: tuple[Formula, ...] = tuple(formulas)
        self._index = seen
        self.name = name
        sets = [frozenset(f) for f in formulas]
        self._parents = tuple(
            tuple(a for a in range(len(sets)) if a != b and sets[a] < sets[b])
            for b in range(len(sets))
        )

    # --- structure -------------------------------------------------------------------------

    @property
    def nodes(self) -> tuple[Formula, ...]:
        return self._nodes

    @property
    def budget(self) -> int:
        return len(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self):
        return iter(self._nodes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DraftGraph) and self._nodes == other._nodes

    def __hash__(self) -> int:
        return hash(self._nodes)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"DraftGraph{label}({len(self)} nodes, depth {self.depth})"

    def index(self, formula: Iterable[Sequence[int]]) -> int:
        """Index of `formula` in the graph (ValueError if absent)."""
        key = canonical_formula(formula)
        if key not in self._index:
            raise ValueError(f"formula {key} is not a node of this graph")
        return self._index[key]

    def parents(self, node: int) -> tuple[int, ...]:
        """Indices of the nodes whose pairs are a strict subset of node `node`'s."""
        return self._parents[node]

    def immediate_parents(self, node: int) -> tuple[int, ...]:
        """Parents with exactly one pair fewer (the edges one decoding step can take)."""
        size = len(self._nodes[node])
        return tuple(p for p in self._parents[node] if len(self._nodes[p]) == size - 1)

    def children(self, node: int) -> tuple[int, ...]:
        return tuple(b for b in range(len(self)) if node in self._parents[b])

    @property
    def max_position_rank(self) -> int:
        return max(p for f in self._nodes for p, _ in f)

    @property
    def max_token_rank(self) -> int:
        return max(t for f in self._nodes for _, t in f)

    @property
    def depth(self) -> int:
        """Most pairs in one node (how many single-token steps one forward can skip)."""
        return max(len(f) for f in self._nodes)

    def is_connected(self) -> bool:
        """True when every node of more than one pair has an immediate parent in the graph,
        i.e. every node is reachable from the root one token at a time."""
        return all(len(f) == 1 or self.immediate_parents(k) for k, f in enumerate(self._nodes))

    def subgraph(self, indices: Iterable[int]) -> DraftGraph:
        """The graph of the given nodes, in the given order."""
        return DraftGraph([self._nodes[i] for i in indices], name=self.name)

    def validate_for_block(self, block_length: int) -> None:
        """Raise when a formula refers to a position rank a block of this length cannot have."""
        if self.max_position_rank > block_length:
            raise ValueError(
                f"graph has position rank {self.max_position_rank} but block_length is "
                f"{block_length}: a block has at most block_length masked positions"
            )

    # --- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "nodes": [[list(p) for p in f] for f in self._nodes],
            # Informational: recomputed and checked on load.
            "parents": [list(p) for p in self._parents],
        }

    @classmethod
    def from_dict(cls, data: dict) -> DraftGraph:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a draft graph: expected a JSON object with format {FORMAT!r}")
        if data.get("version") != VERSION:
            raise ValueError(
                f"draft graph version {data.get('version')!r} is not supported (expected {VERSION})"
            )
        if "nodes" not in data or not isinstance(data["nodes"], list):
            raise ValueError("draft graph JSON needs a 'nodes' list")
        graph = cls(data["nodes"], name=data.get("name"))
        stored = data.get("parents")
        if stored is not None:
            derived = [list(p) for p in graph._parents]
            if [sorted(p) for p in stored] != derived:
                raise ValueError(
                    "draft graph JSON: stored 'parents' do not match the parents derived from "
                    "the nodes (a parent is a node whose pairs are a strict subset)"
                )
        return graph

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> DraftGraph:
        """The graph a JSON file holds: a `DraftGraph`, or the `PhasedDraftGraph` calibration
        writes (the one loader: `load_graph`)."""
        graph = load_graph(path)
        if not isinstance(graph, cls):
            raise ValueError(
                f"draft graph file {path} holds a {type(graph).__name__}, not a {cls.__name__}"
            )
        return graph

    def to_dot(self) -> str:
        """Graphviz source: the root, every node, and its immediate-parent edges."""
        lines = ["digraph draft_graph {", '  root [label="root", shape=box];']
        for k, f in enumerate(self._nodes):
            label = " ".join(f"({p},{t})" for p, t in f)
            lines.append(f'  n{k} [label="{k}: {label}"];')
            sources = self.immediate_parents(k) if len(f) > 1 else ()
            if len(f) == 1:
                lines.append(f"  root -> n{k};")
            for p in sources:
                lines.append(f"  n{p} -> n{k};")
        lines.append("}")
        return "\n".join(lines)

    # --- defaults ------------------------------------------------------------------------------

    @classmethod
    def default(cls, budget: int, *, block_length: int | None = None) -> DraftGraph:
        """The built-in uncalibrated graph of `budget` nodes (1..16); see the module docstring.

        With `block_length`, the best default graph whose position ranks fit a block of that
        length (the same greedy choice among nodes of position rank <= `block_length`): the
        same graph as without it whenever ``default(budget)`` already fits. A block too short
        to hold `budget` distinct nodes raises.
        """
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise ValueError(f"budget must be an int in 1..{MAX_DEFAULT_BUDGET}, got {budget!r}")
        if not 1 <= budget <= MAX_DEFAULT_BUDGET:
            raise ValueError(f"budget must be in 1..{MAX_DEFAULT_BUDGET}, got {budget}")
        if block_length is None:
            return cls(_default_order()[:budget], name=f"default-{budget}")
        if isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1:
            raise ValueError(f"block_length must be an int >= 1, got {block_length!r}")
        unrestricted = _default_order()[:budget]
        if max(p for node in unrestricted for p, _ in node) <= block_length:
            return cls(unrestricted, name=f"default-{budget}")
        order = _default_order(block_length)
        if len(order) < budget:
            raise ValueError(
                f"budget {budget}: a block of {block_length} position(s) has only {len(order)} "
                f"default node(s) (position rank <= {block_length}, token rank <= "
                f"{_PRIOR_MAX_TOKEN_RANK}); use a budget <= {len(order)}"
            )
        return cls(order[:budget], name=f"default-{budget}-block{block_length}")


def prior_step_probability(state: frozenset[Pair], pair: Pair) -> float:
    """Prior probability that one decoding step from `state` commits `pair` (default graphs)."""
    position, token = pair
    taken = {p for p, _ in state}
    if position in taken:
        return 0.0
    k = position - sum(1 for p in taken if p < position)  # rank among positions still masked
    a, b = _PRIOR_POSITION_DECAY, _PRIOR_TOKEN_DECAY
    return (1 - a) * a ** (k - 1) * (1 - b) * b ** (token - 1)


def expected_advance(nodes: Sequence[frozenset[Pair]]) -> float:
    """Expected number of nodes one forward walks through, under the default prior."""
    reach: dict[frozenset[Pair], float] = {frozenset(): 1.0}
    for node in sorted(nodes, key=len):
        total = 0.0
        for pair in node:
            parent = node - {pair}
            if parent in reach:
                total += reach[parent] * prior_step_probability(parent, pair)
        reach[node] = total
    return sum(reach[n] for n in nodes)


@functools.cache
def _default_order(max_position_rank: int = _PRIOR_MAX_POSITION_RANK) -> tuple[Formula, ...]:
    """The greedy order of default nodes whose position ranks are <= `max_position_rank` (at
    most MAX_DEFAULT_BUDGET nodes; fewer when the ranks allow fewer)."""
    chosen: list[frozenset[Pair]] = []
    candidate_pairs = [
        (p, t)
        for p in range(1, min(max_position_rank, _PRIOR_MAX_POSITION_RANK) + 1)
        for t in range(1, _PRIOR_MAX_TOKEN_RANK + 1)
    ]
    while len(chosen) < MAX_DEFAULT_BUDGET:
        base = expected_advance(chosen)
        best, best_gain, best_key = None, -1.0, None
        for parent in [frozenset(), *chosen]:
            used = {p for p, _ in parent}
            for pair in candidate_pairs:
                if pair[0] in used:
                    continue
                node = parent | {pair}
                if node in chosen:
                    continue
                gain = expected_advance([*chosen, node]) - base
                key = tuple(sorted(node))
                # Ties: fewer pairs, then lexicographically smaller formula.
                if gain > best_gain + 1e-15 or (
                    abs(gain - best_gain) <= 1e-15 and (len(key), key) < (len(best_key), best_key)
                ):
                    best, best_gain, best_key = node, gain, key
        if best is None:  # every node the ranks allow is chosen
            break
        chosen.append(best)
    return tuple(tuple(sorted(n)) for n in chosen)


class PhasedDraftGraph(DraftGraph):
    """One graph per range of the root's masked count; as a `DraftGraph` it is the union of
    the phase graphs (what `generate` validates and counts statistics by). Pass
    ``filler=phased_filler(graph)`` (`spiffy_triton.decoding.drafting`) to `generate` so that
    each root gets its phase's nodes; calibration selects them
    (`spiffy_triton.calibration.select_phased_graph`)."""

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


def graph_from_dict(data: dict) -> DraftGraph:
    """A `DraftGraph` or `PhasedDraftGraph` from its JSON object, by its ``format``."""
    if isinstance(data, dict) and data.get("format") == PHASED_FORMAT:
        return PhasedDraftGraph.from_dict(data)
    return DraftGraph.from_dict(data)


def load_graph(path: str | Path) -> DraftGraph:
    """The one loader of draft graph files (`DraftGraph.load`, ``generate(graph=path)``, the
    command line): a `DraftGraph` or a `PhasedDraftGraph`, errors naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read draft graph file {path}: {err.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"draft graph file {path} is not valid JSON: {err}") from None
    try:
        return graph_from_dict(data)
    except ValueError as err:
        raise ValueError(f"draft graph file {path}: {err}") from None
