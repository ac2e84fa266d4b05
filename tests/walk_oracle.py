"""Drafts that make Spiffy's walk go through non-first drafts, several steps deep.

On a trained model at T = 0 the first draft (node (1, 1)) is nearly always the one accepted,
so a walk that always read the first draft's logits would still look lossless. The helpers
here take that chance away:

- `vanilla_trajectory` runs vanilla decoding and records every state it walks through (the
  transition rule's input and output at each step), per block;
- `OracleFiller` is a draft filler that, for a root on vanilla's trajectory, proposes the true
  next states several steps deep, near misses of the first ones (one committed token changed)
  and, in row 0, a decoy (every masked position filled): rows are shuffled by a seed, the decoy is
  never a state the walk can look up, so the walk must read the logits of the row it matched;
- `decoy_first` wraps the plain filler with the same decoy in row 0 (the graph's own drafts
  follow, in node order), for the suites that test the default graphs;
- `ORACLE_GRAPH`: 16 nodes of position rank <= 2 (valid for blocks of 2 or more), whose
  formulas `OracleFiller` ignores (it only numbers its rows as nodes 0..15).

`check_walk` asserts what a lossless deep walk must show: vanilla's tokens and steps, no
acceptance of row 0, acceptances of other rows, and a forward that advanced several steps.
"""

from __future__ import annotations

import contextlib
import random

from spiffy_triton.decoding import generate
from spiffy_triton.decoding.drafting import DraftCandidate, probability_filler
from spiffy_triton.decoding.rules import TransitionRule
from spiffy_triton.graph import DraftGraph

ORACLE_GRAPH = DraftGraph([[(1, j)] for j in range(1, 9)] + [[(2, j)] for j in range(1, 9)])
MAX_ROWS = len(ORACLE_GRAPH)


@contextlib.contextmanager
def recording_transitions():
    """Within the block: every `TransitionRule.apply` call appends ``(block start, state
    before, state after)`` (lists of ints) to the yielded list."""
    original = TransitionRule.apply
    steps: list[tuple[int, list[int], list[int]]] = []

    def apply(self, marginals, state, *, step, block_step, positions):
        out = original(
            self, marginals, state, step=step, block_step=block_step, positions=positions
        )
        steps.append((int(positions[0]), state.tolist(), out.tolist()))
        return out

    TransitionRule.apply = apply
    try:
        yield steps
    finally:
        TransitionRule.apply = original


def vanilla_trajectory(model, prompt, **kwargs):
    """Vanilla `generate(model, prompt, **kwargs)` and the transitions it made, in order."""
    with recording_transitions() as steps:
        out = generate(model, prompt, **kwargs)
    return out, tuple(steps)


def _decoy(root: list[int], mask_id: int, vocab_size: int, salt: int) -> DraftCandidate | None:
    """Every masked position of the root filled with tokens no rule would pick together: a
    full block, which the walk never looks up (it stops when the block is full)."""
    masked = [p for p, t in enumerate(root) if t == mask_id]
    if not masked:
        return None
    tokens = []
    for k, _ in enumerate(masked):
        t = (salt + 7 * k) % vocab_size
        tokens.append(t if t != mask_id else (t + 1) % vocab_size)
    return DraftCandidate(-1, tuple(masked), tuple(tokens), (1.0,) * len(masked))


def _diff(root: list[int], state: list[int], mask_id: int):
    pairs = [(p, t) for p, (r, t) in enumerate(zip(root, state)) if r != t]
    assert all(root[p] == mask_id for p, _ in pairs), "a trajectory state changed a token"
    return pairs


class OracleFiller:
    """A draft filler (`spiffy_triton.decoding.drafting.Filler`) that knows vanilla's
    trajectory: for a root on it, the next `depth` true states (not the full block), one near
    miss of each (its last-committed position given another token), and a decoy in row 0, the
    rows after it shuffled by `seed`. Off the trajectory (a broken decoder) only the decoy."""

    def __init__(
        self, trajectory, vocab_size: int, *, depth: int = 4, near_misses: int = 2, seed: int = 0
    ):
        assert 1 + depth + near_misses <= MAX_ROWS
        self.trajectory = trajectory
        self.vocab_size = vocab_size
        self.depth = depth
        self.near_misses = near_misses
        self.rng = random.Random(seed)
        self.cursor = 0
        self.proposed_true = 0

    def _chain(self, root: list[int], mask_id: int) -> list[list[int]]:
        # The first transition at or after the cursor that starts from this root: decoding
        # moves forward along the trajectory (all-masked roots of different blocks are equal).
        for i in range(self.cursor, len(self.trajectory)):
            start, before, _ = self.trajectory[i]
            if before == root:
                self.cursor = i
                break
        else:
            return []
        chain = []
        for j in range(i, len(self.trajectory)):
            s, before, after = self.trajectory[j]
            if s != start or mask_id not in after or len(chain) == self.depth:
                break
            if j > i and before != chain[-1]:
                break
            chain.append(after)
        return chain

    def __call__(self, graph, root_state, p_last, mask_id):
        root = root_state.tolist()
        rows = []
        for k, state in enumerate(self._chain(root, mask_id)):
            pairs = _diff(root, state, mask_id)
            rows.append(pairs)
            self.proposed_true += 1
            if k >= self.near_misses:
                continue
            p, t = pairs[-1]
            wrong = (t + 1 + self.rng.randrange(self.vocab_size - 2)) % self.vocab_size
            while wrong in (t, mask_id):
                wrong = (wrong + 1) % self.vocab_size
            rows.append(pairs[:-1] + [(p, wrong)])
        self.rng.shuffle(rows)
        decoy = _decoy(root, mask_id, self.vocab_size, self.rng.randrange(self.vocab_size))
        candidates = [decoy] if decoy is not None else []
        for pairs in rows:
            candidates.append(
                DraftCandidate(
                    -1,
                    tuple(p for p, _ in pairs),
                    tuple(t for _, t in pairs),
                    (1.0,) * len(pairs),
                )
            )
        return [DraftCandidate(k, c.positions, c.tokens, c.probs) for k, c in enumerate(candidates)]


def decoy_first(vocab_size: int, backend: str = "torch", salt: int = 5):
    """The plain `probability_filler` with a decoy in row 0 (see the module docstring); the
    decoy takes node 0's number, so node 0's statistics count it too."""

    def filler(graph, root_state, p_last, mask_id):
        candidates = probability_filler(graph, root_state, p_last, mask_id, backend=backend)
        decoy = _decoy(root_state.tolist(), mask_id, vocab_size, salt)
        if decoy is None:
            return candidates
        return [DraftCandidate(0, decoy.positions, decoy.tokens, decoy.probs), *candidates]

    return filler


def check_walk(model, prompt, *, depth: int = 4, order_seed: int = 0, min_deep: int = 3, **kwargs):
    """Spiffy with `OracleFiller` equals vanilla (tokens, steps); row 0 (the decoy) was never
    accepted, other rows were, and some forward advanced at least `min_deep` steps."""
    reference, trajectory = vanilla_trajectory(model, prompt, **kwargs)
    filler = OracleFiller(trajectory, model.config.vocab_size, depth=depth, seed=order_seed)
    spiffy = generate(model, prompt, graph=ORACLE_GRAPH, max_drafts=None, filler=filler, **kwargs)
    assert spiffy.stats.exact
    mismatch = (spiffy.tokens != reference.tokens).nonzero()[:, 1].tolist()
    assert not mismatch, f"tokens differ from vanilla at positions {mismatch}"
    assert spiffy.steps == reference.steps
    accepted = spiffy.stats.node_accepted
    assert accepted[0] == 0, "the decoy in row 0 was accepted"
    assert sum(accepted[1:]) > 0, f"no draft accepted: {accepted}"
    deepest = max(spiffy.stats.steps_per_forward)
    assert deepest >= min_deep, f"the walk advanced at most {deepest} steps per forward"
    assert spiffy.nfe < reference.nfe
    return reference, spiffy


def lossless_matrix(num_prompts: int, rules, modes, graphs) -> list[tuple]:
    """(prompt, rule, cache, verify, graph) cases that cover every (rule, mode) pair twice
    across the prompts, with the graph budget rotating, so a matrix stays a few dozen cases."""
    cases = []
    for p in range(num_prompts):
        for r, rule in enumerate(rules):
            for offset in (0, 2):
                m = (p + r + offset) % len(modes)
                cases.append((p, rule, *modes[m], graphs[(p + r + m) % len(graphs)]))
    return cases
