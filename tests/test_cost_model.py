"""Cost-aware draft budget (spiffy_triton/decoding/: cost_model.py, acceptance.py, budget.py):
verify shapes against the decoder's real forwards, the cost fit and its cache, acceptance
estimates, the selection rule, and
``generate(max_drafts="auto")`` end to end (lossless, and the two extremes of the cost model).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest
import torch
from utils import TINY_MASK_ID, tiny_random_llada

from spiffy_triton.decoding import PHASES, generate
from spiffy_triton.decoding import budget as cm
from spiffy_triton.decoding import cost_model as cost_module
from spiffy_triton.decoding.acceptance import (
    AcceptanceEstimator,
    calibration_prior,
    prior_path_probability,
)
from spiffy_triton.decoding.budget import AutoDraftBudget
from spiffy_triton.decoding.cost_model import (
    VerifyCostModel,
    VerifyShape,
    cached_cost_model,
    cost_model_key,
    probe_verify_cost,
    verify_shape,
)
from spiffy_triton.decoding.drafting import DraftCandidate
from spiffy_triton.decoding.selection import select_drafts
from spiffy_triton.decoding.stats import PhaseClock
from spiffy_triton.decoding.verify import Verifier
from spiffy_triton.graph import DraftGraph, expected_advance
from spiffy_triton.models import LLaDAConfig, LLaDAModel

MASK = TINY_MASK_ID


class RecordingModel(LLaDAModel):
    """Records (batch, query rows, key rows) of every non-prefill forward."""

    def forward(self, input_ids, position_ids=None, layout=None, cache=None):
        # no layout: the plain attention path, every row sees every row (no cache)
        keys = input_ids.shape[1] if layout is None else layout.num_k_rows
        self.shapes.append((input_ids.shape[0], input_ids.shape[1], keys))
        return super().forward(input_ids, position_ids=position_ids, layout=layout, cache=cache)


@pytest.fixture(scope="module")
def model():
    m = tiny_random_llada(3, max_sequence_length=96, model_class=RecordingModel)
    m.shapes = []
    return m


@pytest.fixture(scope="module")
def prompt():
    return torch.tensor([[5, 9, 11, 4, 17, 8]])


@pytest.fixture(autouse=True)
def fresh_cost_cache(monkeypatch):
    monkeypatch.setenv(cost_module.CACHE_ENV, "off")  # memory only: no test reads another's
    cm.clear_cost_cache()
    yield
    cm.clear_cost_cache()


def verifier(model, cache, verify):
    return Verifier(model, cache, verify, PhaseClock(dict.fromkeys(PHASES, 0.0), model.device))


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "cache, verify",
    [(None, "batch"), (None, "packed"), ("dual", "packed"), ("dual", "batch"),
     ("prefix", "packed"), ("prefix", "batch")],
)  # fmt: skip
@pytest.mark.parametrize("num_drafts", [0, 1, 3])
def test_verify_shape_is_the_decoders_forward(model, cache, verify, num_drafts):
    s, length, t = 6, 8, 30
    x = torch.full((1, t), MASK)
    x[0, :s] = 5
    v = verifier(model, cache, verify)
    if cache is not None:
        v.prefill(x, s, s + length)
    model.shapes.clear()
    v(x, s, s + length, x[0, s : s + length].repeat(num_drafts, 1))
    shape = verify_shape(cache, verify, s, length, t, num_drafts)
    assert model.shapes == [(shape.batch, shape.rows, shape.keys)]


@pytest.mark.parametrize(
    "args, message",
    [
        ((None, "batch", -1, 8, 30, 0), "prefix_len"),
        ((None, "batch", 0, 0, 30, 0), "block_len"),
        ((None, "batch", 25, 8, 30, 0), "prefix_len \\+ block_len"),
        ((None, "batch", 0, 8, 30, 1.5), "num_drafts"),
        ((None, "tree", 0, 8, 30, 1), "verify"),
        (("full", "packed", 0, 8, 30, 1), "cache"),
    ],
)
def test_verify_shape_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        verify_shape(*args)


# --------------------------------------------------------------------------- cost model


def test_fit_recovers_exact_coefficients():
    truth = VerifyCostModel(3.0, 0.25, 1e-4)
    shapes = [verify_shape("dual", "packed", 40, 32, 160, d) for d in (0, 1, 3, 6)]
    shapes += [verify_shape(None, "batch", 40, 32, 100, d) for d in (0, 2)]
    fit = VerifyCostModel.fit([(s, truth.predict_ms(s)) for s in shapes])
    for got, want in zip(
        (fit.intercept_ms, fit.per_row_ms, fit.per_row_key_ms),
        (truth.intercept_ms, truth.per_row_ms, truth.per_row_key_ms),
    ):
        assert got == pytest.approx(want, rel=1e-6)
    assert fit.residual_pct < 1e-6 and fit.source == "probe"


def test_fit_is_non_negative():
    # Time falls with rows: unconstrained least squares would give a negative slope.
    samples = [(VerifyShape(1, r, 10), ms) for r, ms in ((10, 9.0), (20, 8.0), (40, 7.0))]
    fit = VerifyCostModel.fit(samples)
    assert min(fit.intercept_ms, fit.per_row_ms, fit.per_row_key_ms) >= 0
    assert fit.intercept_ms > 0


def test_cost_model_round_trip_and_bad_input():
    model = VerifyCostModel(1.0, 0.5, 0.01, "given")
    assert VerifyCostModel.from_dict(model.to_dict()) == model
    assert VerifyCostModel.from_dict({"intercept_ms": 1, "per_row_ms": 2}).per_row_key_ms == 0
    with pytest.raises(ValueError, match="intercept_ms"):
        VerifyCostModel(-1.0, 0.5)
    with pytest.raises(ValueError, match="per_row_ms"):
        VerifyCostModel(1.0, math.nan)
    with pytest.raises(ValueError, match="positive"):
        VerifyCostModel(0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="per_row_ms"):
        VerifyCostModel.from_dict({"intercept_ms": 1})
    with pytest.raises(ValueError, match="at least 2 samples"):
        VerifyCostModel.fit([(VerifyShape(1, 1, 1), 1.0)])
    with pytest.raises(ValueError, match="positive finite"):
        VerifyCostModel.fit([(VerifyShape(1, 1, 1), 1.0), (VerifyShape(1, 2, 2), 0.0)])


def test_probe_times_the_real_verifier(model):
    calls = []

    class Counting:
        def __init__(self):
            self.inner = verifier(model, "dual", "packed")

        def prefill(self, x, s, e):
            return self.inner.prefill(x, s, e)

        def __call__(self, x, s, e, drafts):
            calls.append((x.shape[1], drafts.shape[0]))
            return self.inner(x, s, e, drafts)

    fit, samples = probe_verify_cost(
        Counting,
        mask_id=MASK,
        device="cpu",
        cache="dual",
        verify="packed",
        block_length=8,
        contexts=[(6, 30), (20, 60)],
        draft_counts=(0, 2, 4),
        repeats=2,
    )
    # one warm-up and two timed runs per (context, draft count)
    assert sorted(set(calls)) == [(30, 0), (30, 2), (30, 4), (60, 0), (60, 2), (60, 4)]
    assert len(calls) == 6 * 3
    assert [s for s, _ in samples][2] == verify_shape("dual", "packed", 6, 8, 30, 4)
    assert fit.source == "probe" and all(ms > 0 for _, ms in samples)
    assert fit.predict_ms(verify_shape("dual", "packed", 6, 8, 30, 0)) > 0


def test_cost_models_are_cached_in_memory_and_on_disk(tmp_path):
    builds = []

    def build():
        builds.append(1)
        return VerifyCostModel(2.0, 0.1, 0.0, "probe")

    first = cached_cost_model("k", build, cache_dir=tmp_path)
    assert cached_cost_model("k", build, cache_dir=tmp_path) is first and len(builds) == 1
    stored = json.loads((tmp_path / cost_module.CACHE_FILE).read_text())
    assert stored["k"]["per_row_ms"] == 0.1
    cm.clear_cost_cache()  # a new process: read back from disk, not measured again
    assert cached_cost_model("k", build, cache_dir=tmp_path) == first and len(builds) == 1
    cm.clear_cost_cache()
    (tmp_path / cost_module.CACHE_FILE).write_text("{not json")  # damaged: measured again
    assert cached_cost_model("k", build, cache_dir=tmp_path) == first and len(builds) == 2


def test_cache_key_separates_dtype_modes_and_configs(model):
    base = cost_model_key(model, "dual", "packed")
    assert base != cost_model_key(model, None, "batch")
    assert base != cost_model_key(model.to(torch.float32), "dual", "packed")
    model.to(torch.float64)
    assert base == cost_model_key(model, "dual", "packed")
    other = RecordingModel(
        LLaDAConfig(d_model=32, n_heads=4, n_layers=1, mlp_hidden_size=64, vocab_size=24,
                    max_sequence_length=96, mask_token_id=MASK, eos_token_id=0, pad_token_id=0),
        backend="torch",
    ).to(torch.float64)  # fmt: skip
    assert base != cost_model_key(other, "dual", "packed")


# --------------------------------------------------------------------------- acceptance


def test_prior_path_probability_matches_the_graph_prior():
    # One-node graphs: expected advance = the node's reach through its own subsets only when
    # those are in the graph; with every subset present the two agree.
    formula = ((1, 1), (2, 1))
    lattice = [frozenset({(1, 1)}), frozenset({(2, 1)}), frozenset(formula)]
    full = expected_advance(lattice) - expected_advance(lattice[:2])
    assert prior_path_probability(formula) == pytest.approx(full)
    assert prior_path_probability(((1, 1),)) == pytest.approx(0.7 * 0.9)


def cand(node, pairs, probs):
    positions = tuple(p for p, _ in pairs)
    tokens = tuple(t for _, t in pairs)
    return DraftCandidate(node, positions, tokens, tuple(probs))


GRAPH = DraftGraph([[(1, 1)], [(1, 1), (2, 1)], [(2, 1)], [(1, 1), (2, 1), (3, 1)]])


def test_estimates_chain_through_parents():
    est = AcceptanceEstimator(GRAPH, prior=[0.8, 0.4, 0.1, 0.2], prior_strength=4)
    assert est.cond_prior == pytest.approx([0.8, 0.5, 0.1, 0.5])
    cands = [
        cand(0, [(3, 10)], [0.9]),
        cand(1, [(3, 10), (5, 11)], [0.9, 0.8]),
        cand(2, [(5, 11)], [0.8]),
        cand(3, [(3, 10), (5, 11), (0, 12)], [0.9, 0.8, 0.7]),
    ]
    e = est.estimates(cands)
    assert e == pytest.approx([0.8, 0.8 * 0.5, 0.1, 0.8 * 0.5 * 0.5])
    # without its parent filled, a node's parent is the root
    assert est.estimates([cands[1]]) == pytest.approx([0.5])


def test_observe_counts_hits_misses_and_skips_the_unknown():
    est = AcceptanceEstimator(GRAPH, prior=[0.5, 0.5, 0.5, 0.5])
    a, b, c = (3, 10), (5, 11), (0, 12)
    cands = [
        cand(0, [a], [0.9]),
        cand(1, [a, b], [0.9, 0.8]),
        cand(2, [b], [0.8]),
        cand(3, [a, b, c], [0.9, 0.8, 0.7]),
    ]
    est.estimates(cands)
    # The walk went root -> {a} -> {a, b} and stopped there (unverified).
    est.observe(cands, [frozenset({a}), frozenset({a, b})])
    assert est.hits == [1, 1, 0, 0]
    # node 2 missed (root stepped to {a}); node 3's parent {a, b} was the last state: unknown
    assert est.observed == [1, 1, 1, 0]
    est.estimates(cands)
    # root -> {(3, 99)}: a miss for the root's children; deeper nodes' parents never reached
    est.observe(cands, [frozenset({(3, 99)})])
    assert est.hits == [1, 1, 0, 0] and est.observed == [2, 1, 2, 0]
    # node 1 filled without its parent: its stage is the root; the walk stopped at {a},
    # inside it: unknown, unless {a} completed the block (then a miss)
    est.estimates([cands[1]])
    est.observe([cands[1]], [frozenset({a})])
    assert est.observed[1] == 1
    est.estimates([cands[1]])
    est.observe([cands[1]], [frozenset({a})], complete=True)
    assert est.observed[1] == 2 and est.hits[1] == 1


def test_online_rates_move_from_prior_to_data():
    est = AcceptanceEstimator(GRAPH, prior=[0.1, 0.1, 0.1, 0.1], prior_strength=2)
    c = [cand(0, [(1, 5)], [0.5])]
    for _ in range(50):
        est.estimates(c)
        est.observe(c, [frozenset({(1, 5)})])
    assert est.cond_rate(0) == pytest.approx((0.2 + 50) / 52)
    # the marginals enter by band: misses at low token probability do not drag down the
    # estimate of a confident candidate of the same node beyond the shrinkage
    banded = AcceptanceEstimator(GRAPH, prior=[0.5, 0.5, 0.5, 0.5], prior_strength=2)
    unsure, sure = [cand(0, [(1, 5)], [0.3])], [cand(0, [(1, 5)], [0.99])]
    for _ in range(20):
        banded.estimates(unsure)
        banded.observe(unsure, [frozenset({(1, 6)})])
        banded.estimates(sure)
        banded.observe(sure, [frozenset({(1, 5)})])
    overall = banded.cond_rate(0)
    assert overall == pytest.approx((1.0 + 20) / 42)
    assert banded.band_observed[0] == [20, 0, 0, 20] and banded.band_hits[0] == [0, 0, 0, 20]
    assert banded.estimates(sure)[0] == pytest.approx((20 + 2 * overall) / 22)
    assert banded.estimates(unsure)[0] == pytest.approx((0 + 2 * overall) / 22)
    # a band never seen falls back to the node's rate
    assert banded.estimates([cand(0, [(1, 5)], [0.6])])[0] == pytest.approx(overall)
    # the spread is the band posterior's standard deviation: it shrinks as the band is seen
    rate = banded.estimates(sure)[0]
    assert banded.spread[0] == pytest.approx(math.sqrt(rate * (1 - rate) / (20 + 2 + 1)))
    banded.estimates([cand(0, [(1, 5)], [0.6])])
    assert banded.spread[0] == pytest.approx(math.sqrt(overall * (1 - overall) / (0 + 2 + 1)))


def test_decisions_use_a_lower_bound_of_the_estimate():
    assert cm._lower(0.5, 0.0) == 0.5 and cm._lower(0.0, 0.3) == 0.0
    assert cm._lower(0.5, 0.05) == pytest.approx(0.5 - 0.05, abs=0.005)
    assert 0 < cm._lower(0.01, 0.3) < 0.01


def test_estimator_and_prior_validation(tmp_path):
    with pytest.raises(ValueError, match="prior has 1 rates"):
        AcceptanceEstimator(GRAPH, prior=[0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        AcceptanceEstimator(GRAPH, prior=[0.5, 0.5, 1.5, 0.5])
    with pytest.raises(ValueError, match="prior_strength"):
        AcceptanceEstimator(GRAPH, prior_strength=0)
    path = tmp_path / "g.json"
    data = GRAPH.to_dict()
    data["counts"] = [40, 20, 5, 10]
    data["calibration"] = {"ranked_steps": 50, "trace_steps": 60}
    path.write_text(json.dumps(data))
    assert calibration_prior(path) == pytest.approx([0.8, 0.4, 0.1, 0.2])
    GRAPH.save(path)
    with pytest.raises(ValueError, match="not a calibrated graph"):
        calibration_prior(path)


# ---------------------------------------------------------------------------- selection


def test_selection_extremes():
    cands = [cand(0, [(1, 1)], [0.9]), cand(2, [(2, 1)], [0.5])]
    # A draft costs as much as the root and is not surely accepted: plain step.
    plain = select_drafts(GRAPH, cands, [0.9, 0.5], lambda k: 10.0 * (1 + k))
    assert plain.chosen == () and plain.expected_advance == 1 and plain.predicted_ms == 10
    # Free drafts: every one with a positive estimate.
    free = select_drafts(GRAPH, cands, [0.9, 0.5], lambda k: 10.0)
    assert [c.node for c in free.chosen] == [0, 2]
    assert free.expected_advance == pytest.approx(2.4)
    capped = select_drafts(GRAPH, cands, [0.9, 0.5], lambda k: 10.0, max_drafts=1)
    assert [c.node for c in capped.chosen] == [0]
    # a gain (here 5 %) within the cost model's error margin (10 %) is no gain
    small = select_drafts(GRAPH, cands[:1], [0.05], lambda k: 10.0)
    assert [c.node for c in small.chosen] == [0]
    assert select_drafts(GRAPH, cands[:1], [0.05], lambda k: 10.0, min_gain=0.1).chosen == ()
    with pytest.raises(ValueError, match="min_gain"):
        select_drafts(GRAPH, cands, [0.9, 0.5], lambda k: 10.0, min_gain=-1)


def test_a_child_is_never_chosen_without_its_parent():
    a, b = (1, 7), (2, 8)
    cands = [cand(0, [a], [0.5]), cand(1, [a, b], [0.5, 0.9])]
    # Inconsistent estimates (child above parent): the child still needs its parent first.
    sel = select_drafts(GRAPH, cands, [0.1, 0.9], lambda k: 10.0 + 0.5 * k, max_drafts=1)
    assert [c.node for c in sel.chosen] == [0]


def connected_subsets(graph, nodes):
    for r in range(len(nodes) + 1):
        for subset in itertools.combinations(nodes, r):
            chosen = set(subset)
            ok = all(
                not [p for p in graph.parents(n) if p in nodes]
                or any(
                    p in chosen
                    for p in graph.parents(n)
                    if p in nodes and not any(
                        set(graph.nodes[p]) < set(graph.nodes[o])
                        for o in graph.parents(n) if o in nodes
                    )
                )
                for n in subset
            )  # fmt: skip
            if ok:
                yield subset


@pytest.mark.parametrize("seed", range(6))
def test_selection_is_optimal_for_consistent_estimates(seed):
    """With estimates that never grow from parent to child (as the chained estimator gives)
    and a cost growing with the draft count, the chosen set has the best advance per cost of
    every connected subset (brute force)."""
    rng = random.Random(seed)
    graph = DraftGraph.default(7)
    cands = [cand(n, [(p, t) for p, t in f], [0.5] * len(f)) for n, f in enumerate(graph.nodes)]
    est = {}
    for n in sorted(range(len(graph)), key=lambda n: len(graph.nodes[n])):
        parents = graph.parents(n)
        cap = max((est[p] for p in parents), default=1.0)
        est[n] = cap * rng.uniform(0.2, 1.0)
    estimates = [est[n] for n in range(len(graph))]
    base, per_draft = rng.uniform(5, 20), rng.uniform(0.5, 15)

    def cost(k):
        return base + per_draft * k

    sel = select_drafts(graph, cands, estimates, cost)
    best = max(
        (1 + sum(estimates[n] for n in s)) / cost(len(s))
        for s in connected_subsets(graph, range(len(graph)))
    )
    assert sel.expected_advance / sel.predicted_ms == pytest.approx(best)
    assert sel.expected_advance / sel.predicted_ms >= 1 / cost(0)  # never worse than plain


def test_selection_rejects_bad_input():
    cands = [cand(0, [(1, 1)], [0.9])]
    with pytest.raises(ValueError, match="estimates for"):
        select_drafts(GRAPH, cands, [0.1, 0.2], lambda k: 1.0)
    with pytest.raises(ValueError, match="same graph node"):
        select_drafts(GRAPH, cands * 2, [0.1, 0.2], lambda k: 1.0)
    with pytest.raises(ValueError, match="positive and finite"):
        select_drafts(GRAPH, cands, [0.1], lambda k: 0.0)


# ------------------------------------------------------------------------------- generate

KW = {"gen_length": 16, "block_length": 8, "backend": "torch"}


@pytest.mark.parametrize("cache", [None, "dual"])
def test_free_drafts_verify_every_node(model, prompt, cache):
    full = generate(model, prompt, graph=6, max_drafts=None, cache=cache, **KW)
    # drafts are free: a forward costs 1e6 s whatever its shape, so the host time of filling
    # (charged to every choice with drafts) is negligible beside any draft's value
    free = AutoDraftBudget(VerifyCostModel(1e9, 0.0, 0.0))
    auto = generate(model, prompt, graph=6, max_drafts=free, cache=cache, **KW)
    assert torch.equal(auto.tokens, full.tokens)
    assert auto.nfe == full.nfe and auto.stats.drafts_verified == full.stats.drafts_verified
    assert auto.stats.draft_budget["backoff_steps"] == 0


def test_expensive_drafts_give_vanilla(model, prompt):
    vanilla = generate(model, prompt, **KW)
    # every row costs the same: a draft costs a whole root forward
    dear = AutoDraftBudget({"intercept_ms": 0.0, "per_row_ms": 1.0})
    out = generate(model, prompt, graph=6, max_drafts=dear, **KW)
    assert torch.equal(out.tokens, vanilla.tokens)
    assert out.nfe == vanilla.nfe and out.stats.drafts_verified == 0
    summary = out.stats.draft_budget
    assert summary["mean_drafts"] == 0 and summary["backoff_steps"] > 0
    # back-off: fills are 1 + 2 + 4 + 8 ... plain steps apart, so few of the forwards fill
    assert sum(summary["selections"].values()) < out.nfe / 2


def test_auto_says_what_it_verified_and_why(model, prompt):
    """issue #21: the stats say how many drafts auto verified, what one costs in plain steps
    (from the cost model it used), what the best draft was expected to save, and how to verify
    every node."""
    # every row costs the same: one draft row costs a plain forward; nothing can pay
    dear = AutoDraftBudget({"intercept_ms": 0.0, "per_row_ms": 1.0})
    out = generate(model, prompt, graph=6, max_drafts=dear, **KW)
    d = out.stats.draft_budget["decision"]
    assert d["drafts_verified"] == out.stats.drafts_verified == 0
    assert d["forwards"] == out.nfe
    # no cache, batch rows: a root-only forward has 6 + 16 rows (22 ms at 1 ms a row), and a
    # draft is a whole copy of the sequence: it costs at least a whole step
    assert d["forward_ms"] == 22.0 and d["draft_ms"] >= 22.0
    assert d["draft_cost_in_steps"] == pytest.approx(d["draft_ms"] / 22.0)
    assert 0 < d["best_draft_expected_steps_saved"] <= d["best_draft_bound"] <= 1
    assert d["best_draft_expected_steps_saved"] < d["draft_cost_in_steps"]
    reason = d["reason"]
    assert reason.startswith(f"auto verified 0 drafts over {out.nfe} forwards")
    assert "less than it costs" in reason and "max_drafts=None" in reason
    assert "--max-drafts all" in reason
    # free drafts: auto verifies some, and says how many
    free = AutoDraftBudget(VerifyCostModel(1e9, 0.0, 0.0))
    out = generate(model, prompt, graph=6, max_drafts=free, **KW)
    d = out.stats.to_dict()["draft_budget"]["decision"]
    assert d["drafts_verified"] == out.stats.drafts_verified > 0
    assert d["draft_cost_in_steps"] < 1e-3 and "less than it costs" not in d["reason"]
    assert d["reason"].startswith(f"auto verified {out.stats.drafts_verified} drafts")


def test_cost_models_persist_in_the_user_cache_by_default(tmp_path, monkeypatch):
    """issue #21: on disk by default ($XDG_CACHE_HOME/spiffy-triton), overridable by
    SPIFFY_TRITON_COST_CACHE, which 'off' disables; cache_dir=False keeps memory only."""
    builds = []

    def build():
        builds.append(1)
        return VerifyCostModel(2.0, 0.1, 0.0, "probe")

    monkeypatch.delenv(cost_module.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cost_module.default_cache_dir() == tmp_path / "xdg" / "spiffy-triton"
    cm.clear_cost_cache()
    cached_cost_model("k", build)
    assert (tmp_path / "xdg" / "spiffy-triton" / cost_module.CACHE_FILE).is_file()
    cm.clear_cost_cache()  # a new process (a second command-line call): not measured again
    cached_cost_model("k", build)
    assert len(builds) == 1
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cost_module.default_cache_dir() == Path.home() / ".cache" / "spiffy-triton"
    monkeypatch.setenv(cost_module.CACHE_ENV, str(tmp_path / "mine"))
    assert cost_module.default_cache_dir() == tmp_path / "mine"
    for off in ("off", "0", "", "None"):
        monkeypatch.setenv(cost_module.CACHE_ENV, off)
        assert cost_module.default_cache_dir() is None
    cm.clear_cost_cache()
    cached_cost_model("j", build, cache_dir=False)
    monkeypatch.setenv(cost_module.CACHE_ENV, str(tmp_path / "mine"))
    cm.clear_cost_cache()
    cached_cost_model("j", build, cache_dir=False)
    assert len(builds) == 3 and not (tmp_path / "mine").exists()
    with pytest.raises(ValueError, match="cache_dir must be a directory path"):
        cached_cost_model("j", build, cache_dir=3)
    # an unwritable cache directory warns and keeps the model in memory
    blocker = tmp_path / "file"
    blocker.write_text("")
    cm.clear_cost_cache()
    with pytest.warns(UserWarning, match="cannot write the verify cost cache"):
        model = cached_cost_model("u", build, cache_dir=blocker / "sub")
    assert model.per_row_ms == 0.1
    cm.clear_cost_cache()


def test_cache_key_names_the_host_and_version(model):
    import platform

    import spiffy_triton

    key = cost_model_key(model, "dual", "packed")
    assert f"host={platform.node()}" in key and f"version={spiffy_triton.__version__}" in key


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_auto_is_the_default_and_lossless(model, prompt, cache):
    vanilla = generate(model, prompt, cache=cache, temperature=0.7, seed=4, **KW)
    out = generate(model, prompt, graph=6, cache=cache, temperature=0.7, seed=4, **KW)
    assert torch.equal(out.tokens, vanilla.tokens) and out.steps == vanilla.steps
    budget = out.stats.draft_budget
    assert budget is not None and budget["cost_model"]["source"] in ("probe", "probe+online")
    assert out.stats.to_dict()["draft_budget"] == budget


def test_budget_keeps_learning_across_calls(model, prompt):
    budget = AutoDraftBudget(VerifyCostModel(10.0, 0.01, 0.0), max_drafts=2)
    generate(model, prompt, graph=6, max_drafts=budget, cache="dual", **KW)
    estimator = budget.estimator
    seen = sum(estimator.observed)
    assert seen > 0
    out = generate(model, prompt, graph=6, max_drafts=budget, cache="dual", **KW)
    assert budget.estimator is estimator and sum(estimator.observed) > seen
    assert out.stats.drafts_verified <= 2 * out.nfe


def test_auto_bad_arguments(model, prompt):
    with pytest.raises(ValueError, match="max_drafts must be 'auto'"):
        generate(model, prompt, graph=2, max_drafts="al", **KW)
    with pytest.raises(ValueError, match="needs a graph"):
        generate(model, prompt, max_drafts=AutoDraftBudget(), **KW)
    with pytest.raises(ValueError, match="cost_model must be"):
        AutoDraftBudget(cost_model=3.0)
    with pytest.raises(ValueError, match="max_drafts must be an int >= 0"):
        AutoDraftBudget(max_drafts=-1)
    with pytest.raises(ValueError, match="prior has"):
        generate(model, prompt, graph=2, max_drafts=AutoDraftBudget(prior=[0.5]), **KW)
    with pytest.raises(RuntimeError, match="bind"):
        AutoDraftBudget().select(GRAPH, [], lambda k: VerifyShape(1, 1, 1))


def test_online_refit_moves_a_wrong_probe_to_the_measured_costs():
    truth = VerifyCostModel(4.0, 0.12, 0.0)
    shapes = [verify_shape("dual", "packed", 40, 32, 104, k) for k in range(4)]
    # a noisy probe: the plain forward 30% dear, each draft 40% cheap
    probe = VerifyCostModel(9.0, 0.05, 0.0, source="probe")
    budget = AutoDraftBudget()
    cost_module._MEMORY_CACHE["key"] = probe
    budget.bind(GRAPH, lambda: pytest.fail("cached"), "key", anchor_shapes=shapes)
    assert budget.adapt and budget.cost_model is probe

    def error(model):
        return max(abs(model.predict_ms(s) / truth.predict_ms(s) - 1) for s in shapes)

    before = error(budget.cost_model)
    rng = random.Random(0)
    for i in range(cm.ONLINE_WINDOW):
        shape = shapes[i % len(shapes)]
        budget.record_forward(shape, truth.predict_ms(shape) * rng.uniform(0.95, 1.05))
        assert (budget.cost_model is probe) == (i + 1 < cm.REFIT_EVERY)
    after = error(budget.cost_model)
    assert before > 0.25 and after < 0.06, (before, after)
    assert budget.cost_model.source == "probe+online"
    assert budget.cost_model.samples == len(shapes) + cm.ONLINE_WINDOW
    # times that are no times are ignored
    fitted = budget.cost_model
    for bad in (0.0, -1.0, math.nan, math.inf):
        for _ in range(cm.REFIT_EVERY):
            budget.record_forward(shapes[0], bad)
    assert budget.cost_model is fitted


def test_a_given_cost_model_is_kept_as_given():
    given = VerifyCostModel(5.0, 0.1, 0.0)
    budget = AutoDraftBudget(given)
    shapes = [verify_shape(None, "batch", 10, 8, 30, k) for k in range(3)]
    budget.bind(GRAPH, lambda: pytest.fail("given"), "key", anchor_shapes=shapes)
    for i in range(3 * cm.REFIT_EVERY):
        budget.record_forward(shapes[i % 3], 100.0)
    assert not budget.adapt and budget.cost_model is given
    forced = AutoDraftBudget(given, adapt=True)
    forced.bind(GRAPH, lambda: pytest.fail("given"), "key", anchor_shapes=shapes)
    for i in range(3 * cm.REFIT_EVERY):
        forced.record_forward(shapes[i % 3], 100.0)
    assert forced.cost_model.source == "given+online"
    # pulled towards the 100 ms it measured (the anchors hold it back)
    assert forced.cost_model.predict_ms(shapes[0]) > 1.25 * given.predict_ms(shapes[0])


def test_back_off_starts_at_the_second_empty_selection():
    budget = AutoDraftBudget(VerifyCostModel(0.0, 1.0, 0.0))  # drafts never pay
    budget.bind(GRAPH, lambda: pytest.fail("given"), "key")
    candidate = DraftCandidate(node=0, positions=(0,), tokens=(7,), probs=(0.9,))

    def plain_steps_after_a_selection():
        selection = budget.select(GRAPH, [candidate], lambda k: VerifyShape(1 + k, 8, 8))
        assert selection.chosen == ()
        skipped = 0
        while not budget.wants_drafts():
            skipped += 1
        return skipped

    got = [plain_steps_after_a_selection() for _ in range(7)]
    assert got == [0, 1, 2, 4, 8, 8, 8][: len(got)] and cm.MAX_BACKOFF == 8


@pytest.mark.parametrize("cache", [None, "dual"])
def test_p_last_read_off_the_walk_changes_nothing(model, prompt, cache, monkeypatch):
    from spiffy_triton.decoding.rules import TransitionRule

    runs = []
    for reuse in (True, False):
        supported = property(lambda rule, reuse=reuse: reuse)
        monkeypatch.setattr(TransitionRule, "p_last_from_supported", supported)
        out = generate(model, prompt, graph=6, max_drafts=None, cache=cache, **KW)
        runs.append(out)
    assert torch.equal(runs[0].tokens, runs[1].tokens) and runs[0].nfe == runs[1].nfe
    assert runs[0].stats.node_verified == runs[1].stats.node_verified
    assert runs[0].stats.node_accepted == runs[1].stats.node_accepted


def test_decayed_ratio_starts_at_one_and_follows_the_data():
    ratio = cm.DecayedRatio(decay=0.5, prior_weight=2.0)
    assert ratio.ratio == 1.0
    ratio.add(30.0, 10.0)  # prior: 2 observations at 1, then one at 3
    assert ratio.ratio == pytest.approx((0.5 * 20 + 30) / (0.5 * 20 + 10))
    for _ in range(40):
        ratio.add(30.0, 10.0)
    assert ratio.ratio == pytest.approx(3.0, rel=1e-6)
    for realized, predicted in ((math.nan, 1.0), (1.0, 0.0), (1.0, -2.0), (1.0, math.inf)):
        ratio.add(realized, predicted)
    assert ratio.ratio == pytest.approx(3.0, rel=1e-6) and ratio.count == 41
    for decay, weight in ((0.0, 1.0), (1.5, 1.0), (0.5, 0.0), (0.5, math.nan)):
        with pytest.raises(ValueError, match="decay"):
            cm.DecayedRatio(decay, weight)


def test_realized_steps_correct_the_estimates_and_host_time_is_measured():
    """Drafts the estimates call a clear win stop being chosen once the run measures that they
    are not: every iteration with drafts advances one step only."""
    budget = AutoDraftBudget(VerifyCostModel(4.0, 0.5, 0.0))  # a draft costs half a forward
    budget.bind(GRAPH, lambda: pytest.fail("given"), "key")
    candidate = DraftCandidate(node=0, positions=(0,), tokens=(7,), probs=(0.99,))
    budget.estimator.cond_prior[0] = 0.95  # the estimate: walked through almost always

    def shape_of(k):
        return VerifyShape(1, 8 * (1 + k), 40)

    chosen = []
    for _ in range(30):
        k = len(budget.select(GRAPH, [candidate], shape_of).chosen)
        chosen.append(k)
        budget.record_forward(shape_of(k), 8.0, drafts=k)
        budget.end_iteration(1, 9.0)  # the forward, and 1 ms of host time for the step
        while not budget.wants_drafts():
            budget.record_forward(shape_of(0), 8.0, drafts=0)
            budget.end_iteration(1, 9.0)
    # the lower bound of 0.95 * ratio (spread 0.1: no walk observed) must fall below 0.5:
    # a handful of misses against a prior of 8 at ratio 1
    assert chosen[:4] == [1] * 4 and chosen[-1] == 0 and 4 <= chosen.index(0) <= 10
    summary = budget.summary()
    assert summary["realized_over_expected_extra_steps"] < 0.7
    assert summary["host_ms_per_step"] == pytest.approx(1.0)


def test_auto_shares_one_budget_per_model_and_setting(model, prompt):
    def budget_of(**kwargs):
        seen = []
        original = cm.AutoDraftBudget.bind

        def spy(self, *args, **kw):
            seen.append(self)
            return original(self, *args, **kw)

        cm.AutoDraftBudget.bind = spy
        try:
            out = generate(model, prompt, **{"graph": 6, "cache": "dual", **kwargs}, **KW)
        finally:
            cm.AutoDraftBudget.bind = original
        return seen[0], out

    first, out = budget_of(seed=1)
    assert sum(first.chosen_counts.values()) + first.skipped == out.nfe - 2  # less 2 prefills
    again, out2 = budget_of(seed=2)  # the seed does not change acceptance: the same budget
    assert again is first
    # the per-run counters start afresh, what was learned carries over
    assert sum(again.chosen_counts.values()) + again.skipped == out2.nfe - 2
    assert sum(again.estimator.observed) > 0
    others = [
        budget_of(seed=1, graph=4)[0],
        budget_of(seed=1, cache=None)[0],
        budget_of(seed=1, threshold=0.9)[0],
        budget_of(seed=1, temperature=0.5)[0],
    ]
    assert len({id(b) for b in [first, *others]}) == 5
    assert cm.shared_budget(model, "any") is cm.shared_budget(model, "any")
    cm.clear_cost_cache()
    assert budget_of(seed=1)[0] is not first


def test_budget_types_are_public():
    import spiffy_triton

    assert spiffy_triton.AutoDraftBudget is AutoDraftBudget
    assert spiffy_triton.VerifyCostModel is VerifyCostModel
    assert {"AutoDraftBudget", "VerifyCostModel"} <= set(spiffy_triton.__all__)


def test_no_fill_where_no_draft_could_pay():
    def steps_filled(cost_model, steps=4 * cm.EXPLORE_EVERY):
        budget = AutoDraftBudget(cost_model)
        budget.bind(GRAPH, lambda: pytest.fail("given"), "key")
        budget.filler(None, lambda k: VerifyShape(1 + k, 8, 8))  # the shapes, as the decoder
        filled = [budget.wants_drafts() for _ in range(steps)]
        return sum(filled), budget

    # a draft costs ten plain forwards: even a sure draft cannot pay
    filled, budget = steps_filled(VerifyCostModel(0.0, 10.0, 0.0))
    assert not budget.drafts_may_pay()
    assert filled == 4 and budget.skipped == 4 * cm.EXPLORE_EVERY - 4  # explores 1 in EXPLORE_EVERY
    # free drafts: always worth a fill
    filled, budget = steps_filled(VerifyCostModel(1000.0, 0.0, 0.0))
    assert budget.drafts_may_pay() and filled == 4 * cm.EXPLORE_EVERY


def test_fit_of_one_shape_keeps_the_intercept():
    # every sample the same shape: the three features are collinear, one coefficient is left
    shape = VerifyShape(1, 10, 10)
    fit = VerifyCostModel.fit([(shape, 5.0), (shape, 5.2), (shape, 4.9)])
    assert fit.predict_ms(shape) == pytest.approx(5.03, rel=0.01)
    assert (fit.per_row_ms, fit.per_row_key_ms) == (0.0, 0.0)


def test_one_iteration_record_opened_and_closed_in_call_order():
    """The per-iteration facts live in one `Iteration`: the fill's selection opens it,
    `record_forward` adds the forward, `observe` learns the walk, `end_iteration` closes it;
    nothing is left for the next iteration."""
    budget = AutoDraftBudget(VerifyCostModel(4.0, 0.5, 0.0))
    budget.bind(GRAPH, lambda: pytest.fail("given"), "key")
    assert budget.iteration is None and budget.runs == 1
    candidate = DraftCandidate(node=0, positions=(0,), tokens=(7,), probs=(0.99,))

    def shape_of(k):
        return VerifyShape(1, 8 * (1 + k), 40)

    p_last = None  # the inner filler below ignores it
    fill = budget.filler(lambda *args: [candidate], shape_of)
    root = torch.full((8,), TINY_MASK_ID)
    chosen = fill(GRAPH, root, p_last, TINY_MASK_ID)
    opened = budget.iteration
    assert opened.candidates == [candidate] and opened.expected_extra is not None
    assert opened.forward is None and opened.fill_ms >= 0.0
    budget.record_forward(shape_of(len(chosen)), 8.0, drafts=len(chosen))
    assert budget.iteration is opened and opened.forward == (len(chosen), 8.0)
    walked = root.clone()
    walked[0] = 7
    observed = sum(budget.estimator.observed)
    budget.observe([walked.tolist()])
    assert sum(budget.estimator.observed) > observed
    budget.observe([walked.tolist()])  # a walk is learned once
    assert sum(budget.estimator.observed) == observed + 1
    budget.end_iteration(2, 9.0)
    assert budget.iteration is None
    # an iteration without a fill (back-off, prefill) starts at record_forward
    budget.record_forward(shape_of(0), 8.0)
    assert budget.iteration.expected_extra is None and budget.iteration.root is None
    budget.end_iteration(1, 9.0)
    assert budget.iteration is None


def test_cross_call_learning_is_visible_and_can_be_forgotten(model, prompt):
    cm.forget_shared_budgets()
    assert cm.shared_budgets(model) == {}
    generate(model, prompt, graph=6, cache="dual", seed=1, **KW)
    (budget,) = cm.shared_budgets(model).values()
    assert budget.runs == 1
    generate(model, prompt, graph=6, cache="dual", seed=2, **KW)
    assert cm.shared_budgets(model) == {k: budget for k in cm.shared_budgets(model)}
    assert budget.runs == 2  # the second call learned on top of the first
    other = tiny_random_llada(1)
    generate(other, prompt, graph=6, cache="dual", **KW)
    cm.forget_shared_budgets(model)
    assert cm.shared_budgets(model) == {} and len(cm.shared_budgets(other)) == 1
    generate(model, prompt, graph=6, cache="dual", seed=1, **KW)
    (fresh,) = cm.shared_budgets(model).values()
    assert fresh is not budget and fresh.runs == 1
    cm.forget_shared_budgets()
    assert cm.shared_budgets(other) == {}
