"""Graph selection from calibration traces, and the replay simulator (docs/DESIGN.md §6).

Selection of ``D`` nodes from the observed formulas, two objectives:

- ``"degree1"`` (the paper's accumulation): the connected node set ``Q`` maximising
  ``sum over q in Q of count(q) + sum of count(p) over q's parents p in Q``, where ``count`` is
  how many recorded steps had the formula on their true path and the parents of ``q`` are the
  formulas observed one step before it on some path (degree 1: direct parents only); grown
  greedily from the root, each node added has a parent in ``Q`` or is a first step.
- ``"steps"`` (the quantity that matters): the expected number of steps one forward advances,
  ``1 + the number of leading states of the true path whose formulas are in Q``, averaged over
  every recorded step taken as a root; grown greedily by the largest gain.

`simulate` replays Spiffy's walk on recorded traces for any graph and gives the NFE it would
take: exactly `generate`'s NFE in the exact verification modes (tested for every cache mode,
multi-token steps and sampling), without pruning.

Per-phase graphs (``phases=n``): the masked count of the root ``1..block_length`` is cut into
``n`` equal ranges and a graph of ``D`` nodes is selected for each from the steps in that range
(`PhasedDraftGraph`).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

from ..graph import DraftGraph, Formula, PhasedDraftGraph
from .traces import TraceBlock, Traces, TraceStep

OBJECTIVES = ("steps", "degree1")


# -------------------------------------------------------------------------------- selection


def _check_budget(budget) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be an int >= 1 (nodes of the graph), got {budget!r}")
    return budget


def _observed(steps: Sequence[TraceStep]):
    """Formula ids, each step's chain as ids, counts, and the observed parents of each id
    (-1 for the root: a first step)."""
    ids: dict[Formula, int] = {}
    chains = []
    for step in steps:
        chains.append(tuple(ids.setdefault(f, len(ids)) for f in step.chain))
    formulas = list(ids)
    counts = [0] * len(formulas)
    parents: list[set[int]] = [set() for _ in formulas]
    for chain in chains:
        previous = -1
        for node in chain:
            counts[node] += 1
            parents[node].add(previous)
            previous = node
    return formulas, chains, counts, parents


def _order_key(formula: Formula, count: int):
    # Ties: more often observed, fewer pairs, then the smaller formula.
    return (-count, len(formula), formula)


def _select_degree1(formulas, counts, parents, budget) -> list[int]:
    chosen: list[int] = []
    chosen_set: set[int] = set()
    children: list[set[int]] = [set() for _ in formulas]
    for node, ps in enumerate(parents):
        for p in ps:
            if p >= 0:
                children[p].add(node)
    while len(chosen) < budget:
        best, best_key = None, None
        for node in range(len(formulas)):
            if node in chosen_set:
                continue
            if -1 not in parents[node] and not parents[node] & chosen_set:
                continue  # not connected to the chosen set
            gain = counts[node]
            gain += sum(counts[p] for p in parents[node] if p in chosen_set)
            gain += counts[node] * len(children[node] & chosen_set)
            key = (-gain, *_order_key(formulas[node], counts[node]))
            if best_key is None or key < best_key:
                best, best_key = node, key
        if best is None:
            break
        chosen.append(best)
        chosen_set.add(best)
    return chosen


def _select_steps(formulas, chains, counts, budget) -> list[int]:
    chosen: list[int] = []
    chosen_set: set[int] = set()
    while len(chosen) < budget:
        gains = collections.Counter()
        for chain in chains:
            m = 0
            while m < len(chain) and chain[m] in chosen_set:
                m += 1
            if m == len(chain):
                continue
            # Adding chain[m] accepts it and every chosen state right after it.
            run = 1
            while m + run < len(chain) and chain[m + run] in chosen_set:
                run += 1
            gains[chain[m]] += run
        if not gains:
            break
        best = min(gains, key=lambda n: (-gains[n], *_order_key(formulas[n], counts[n])))
        chosen.append(best)
        chosen_set.add(best)
    return chosen


def _pad(chosen: list[int], formulas, counts, budget: int) -> list[Formula]:
    """Fill a selection short of `budget` (nothing more gains on the traces): observed
    formulas by count, then nodes of the default graph."""
    nodes = [formulas[n] for n in chosen]
    if len(nodes) < budget:
        rest = sorted(
            (n for n in range(len(formulas)) if n not in set(chosen)),
            key=lambda n: _order_key(formulas[n], counts[n]),
        )
        nodes += [formulas[n] for n in rest[: budget - len(nodes)]]
    if len(nodes) < budget:
        from ..graph import MAX_DEFAULT_BUDGET

        present = set(nodes)
        for formula in DraftGraph.default(MAX_DEFAULT_BUDGET).nodes:
            if len(nodes) == budget:
                break
            if formula not in present:
                nodes.append(formula)
    return nodes


def _replay(blocks: Sequence[TraceBlock], nodes_at) -> tuple[int, int, int]:
    """Spiffy's walk over `blocks` with the node set ``nodes_at(num_masked)``: (NFE, steps,
    total advance over every recorded step taken as a root)."""
    nfe = steps = advance = 0
    last_root = None
    for block in blocks:
        walk = list(block.steps)
        if block.start_variants and last_root is not None:
            walk[0] = block.start_variants[last_root]
        k = 0
        while k < len(walk):
            last_root = k
            step = walk[k]
            k += 1 + _accepted(step.chain, nodes_at(step.num_masked))
            nfe += 1
        steps += len(walk)
        for step in block.steps:
            advance += 1 + _accepted(step.chain, nodes_at(step.num_masked))
    return nfe, steps, advance


def _refine(start: list[Formula], pool: Sequence[Formula], evaluate, max_rounds: int):
    """Local search: swap one node for one pool formula while `evaluate` (higher is better)
    improves (first improvement, at most `max_rounds` swaps)."""
    current, best = list(start), evaluate(set(start))
    for _ in range(max_rounds):
        chosen = set(current)
        outside = [f for f in pool if f not in chosen]
        swap = None
        for i in range(len(current)):
            for formula in outside:
                trial = current[:i] + [formula] + current[i + 1 :]
                value = evaluate(set(trial))
                if value > best:
                    swap, best = trial, value
                    break
            if swap is not None:
                break
        if swap is None:
            break
        current = swap
    return current


def select_graph(
    traces: Traces | Sequence[TraceStep],
    budget: int,
    *,
    objective: str = "steps",
    name: str | None = None,
) -> DraftGraph:
    """A graph of `budget` nodes chosen on recorded steps by `objective`; see the module
    docstring.

    ``"degree1"``: the paper's greedy accumulation; nodes in the order chosen. ``"steps"``: the
    better of the greedy selection (by expected steps per forward) and the default graph, then
    improved by swapping single nodes while the replayed walk's NFE on the traces goes down
    (ties: the expected steps per forward goes up; with a plain list of steps, the latter
    only); nodes ordered by size then count, so that parents come first.
    """
    budget = _check_budget(budget)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    steps = traces.steps if isinstance(traces, Traces) else list(traces)
    if not steps:
        raise ValueError("no recorded steps to calibrate on")
    formulas, chains, counts, parents = _observed(steps)
    name = name or f"calibrated-{objective}-{budget}"
    if objective == "degree1":
        chosen = _select_degree1(formulas, counts, parents, budget)
        return DraftGraph(_pad(chosen, formulas, counts, budget), name=name)

    greedy = _pad(_select_steps(formulas, chains, counts, budget), formulas, counts, budget)
    if isinstance(traces, Traces):

        def evaluate(nodes):
            nfe, _, advance = _replay(traces.blocks, lambda num_masked: nodes)
            return (-nfe, advance)
    else:

        def evaluate(nodes):
            return (sum(1 + _accepted(step.chain, nodes) for step in steps),)

    from ..graph import MAX_DEFAULT_BUDGET

    default = list(DraftGraph.default(min(budget, MAX_DEFAULT_BUDGET)).nodes)
    default += [f for f in greedy if f not in set(default)][: budget - len(default)]
    start = max((greedy, default), key=lambda nodes: evaluate(set(nodes)))
    count_of = dict(zip(formulas, counts))
    by_count = sorted(formulas, key=lambda f: _order_key(f, count_of[f]))
    pool = by_count[: 3 * budget + 16]
    nodes = _refine(start, pool, evaluate, max_rounds=4 * budget)
    nodes.sort(key=lambda f: (len(f), -count_of.get(f, 0), f))
    return DraftGraph(nodes, name=name)


# ------------------------------------------------------------------------------ evaluation


def _accepted(chain: tuple[Formula, ...], nodes: set[Formula]) -> int:
    m = 0
    while m < len(chain) and chain[m] in nodes:
        m += 1
    return m


def _node_sets(graph: DraftGraph):
    """``num_masked -> set of formulas`` the decoder verifies at a root with that many masked."""
    if isinstance(graph, PhasedDraftGraph):
        cache: dict[int, set[Formula]] = {}

        def at(num_masked: int) -> set[Formula]:
            if num_masked not in cache:
                cache[num_masked] = set(graph.phase_graph(num_masked).nodes)
            return cache[num_masked]

        return at
    nodes = set(graph.nodes)
    return lambda num_masked: nodes


def simulate(traces: Traces, graph: DraftGraph) -> dict:
    """Replay Spiffy's walk on the recorded blocks with `graph` (no pruning).

    Returns the simulated ``nfe``, the ``steps`` made, ``steps_per_nfe``, and
    ``mean_advance``: steps one forward advances averaged over every recorded step as a root.
    The replay is exact: it is the NFE `generate` takes with this graph and the same settings
    whenever drafts' logits equal vanilla's (the exact modes)."""
    nfe, steps, advance = _replay(traces.blocks, _node_sets(graph))
    return {
        "nfe": nfe,
        "steps": steps,
        "steps_per_nfe": steps / nfe if nfe else 0.0,
        "mean_advance": advance / steps if steps else 0.0,
    }


def node_counts(traces: Traces, graph: DraftGraph) -> list[int]:
    """Per node of `graph`: recorded steps with that formula on their true path."""
    counts = traces.counts()
    return [counts.get(f, 0) for f in graph.nodes]


def select_phased_graph(
    traces: Traces, budget: int, phases: int, *, objective: str = "steps"
) -> PhasedDraftGraph:
    """`phases` graphs of `budget` nodes, one per equal range of the root's masked count.

    ``"steps"``: every phase starts from the single ``"steps"`` graph, then each phase's nodes
    are swapped while the replayed NFE of the whole traces goes down (ties: mean advance up),
    so the phased graph never replays worse than the single one. ``"degree1"``: the paper's
    selection on each phase's steps."""
    budget = _check_budget(budget)
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1:
        raise ValueError(f"phases must be an int >= 1, got {phases!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    length = traces.block_length
    if phases > length:
        raise ValueError(f"phases ({phases}) cannot exceed block_length ({length})")
    edges = [round(length * k / phases) for k in range(phases + 1)]
    ranges = list(zip(edges, edges[1:]))
    phase_steps = [[s for s in traces.steps if lo < s.num_masked <= hi] for lo, hi in ranges]
    name = f"calibrated-{objective}-{budget}x{phases}"
    if objective == "degree1":
        selected = []
        for (lo, hi), steps in zip(ranges, phase_steps):
            if not any(s.chain for s in steps):
                steps = traces.steps  # nothing observed in this phase: the global selection
            graph = select_graph(steps, budget, objective=objective, name=f"phase-{lo + 1}-{hi}")
            selected.append((lo + 1, hi, graph))
        return PhasedDraftGraph(selected, name=name)

    phase_of = [0] * (length + 1)
    for p, (lo, hi) in enumerate(ranges):
        for masked in range(lo + 1, hi + 1):
            phase_of[masked] = p
    current = [list(select_graph(traces, budget).nodes) for _ in ranges]
    for p, steps in enumerate(phase_steps):
        counts = collections.Counter(f for s in steps for f in s.chain)
        pool = sorted(counts, key=lambda f: _order_key(f, counts[f]))[: 3 * budget + 16]

        def evaluate(nodes, p=p):
            sets = [set(c) for c in current]
            sets[p] = nodes
            nfe, _, advance = _replay(traces.blocks, lambda masked: sets[phase_of[masked]])
            return (-nfe, advance)

        current[p] = _refine(current[p], pool, evaluate, max_rounds=4 * budget)
    selected = []
    for (lo, hi), nodes in zip(ranges, current):
        counts = collections.Counter(
            f for s in traces.steps if lo < s.num_masked <= hi for f in s.chain
        )
        nodes.sort(key=lambda f: (len(f), -counts.get(f, 0), f))
        selected.append((lo + 1, hi, DraftGraph(nodes, name=f"phase-{lo + 1}-{hi}")))
    return PhasedDraftGraph(selected, name=name)
