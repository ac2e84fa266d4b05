"""Calibration: trace formulas, both selection objectives, per-phase graphs, the replayed walk
against real Spiffy decoding, graph JSON with counts, and bad input.

A small random-weight float64 model keeps these fast; the numbers on the bundled trained model
are in benchmarks/calibration.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from utils import TINY_MASK_ID, save_char_llada, tiny_random_llada

from spiffy_triton.calibration import (
    PhasedDraftGraph,
    TraceStep,
    calibrate,
    collect_traces,
    load_graph,
    node_counts,
    save_graph,
    select_graph,
    select_phased_graph,
    simulate,
    stored_counts,
    trace_step,
)
from spiffy_triton.decoding import generate
from spiffy_triton.decoding.drafting import phased_filler
from spiffy_triton.graph import DraftGraph
from spiffy_triton.types import MarginalsOutput

MASK = TINY_MASK_ID
PROMPTS = [[5, 9, 11, 4, 17, 8], [7, 7, 3, 12], [20, 6, 14, 9, 9]]


@pytest.fixture(scope="module")
def model():
    return tiny_random_llada(5)


def marginals(top_tokens, top_probs) -> MarginalsOutput:
    tokens = torch.tensor(top_tokens)
    probs = torch.tensor(top_probs, dtype=torch.float32)
    zeros = torch.zeros(tokens.shape[0])
    return MarginalsOutput(tokens[:, 0], probs[:, 0], tokens, probs, zeros, zeros)


# --------------------------------------------------------------------------- formulas

M = MASK
# One block of 4: position 1 first (token 7), then 2 (9), then 0 (5), then 3 (11).
STATES = [[M, M, M, M], [M, 7, M, M], [M, 7, 9, M], [5, 7, 9, M], [5, 7, 9, 11]]
# Confidence order: position 1 (0.9), 2 (0.6), 0 (0.3), 3 (0.1); 7 is position 1's 2nd token.
P_LAST = marginals(
    [[5, 6], [8, 7], [9, 10], [11, 12]], [[0.3, 0.2], [0.9, 0.05], [0.6, 0.1], [0.1, 0.05]]
)


def test_trace_step_writes_future_states_as_formulas_under_root_ranks():
    step = trace_step(STATES, 0, P_LAST, MASK, backend="torch")
    assert step == TraceStep(4, True, (((1, 2),), ((1, 2), (2, 1)), ((1, 2), (2, 1), (3, 1))), True)
    # From X_1 the masked positions are 0, 2, 3: ranks 2->1, 0->2, 3->3.
    step = trace_step(STATES, 1, P_LAST, MASK, backend="torch")
    assert step.chain == (((1, 1),), ((1, 1), (2, 1)))
    # X_3's only future state is the full block, which the walk never looks up.
    step = trace_step(STATES, 3, P_LAST, MASK, backend="torch")
    assert step == TraceStep(1, True, (), None)


def test_trace_step_stops_at_the_first_state_outside_the_top_k():
    top1 = marginals([[5], [8], [9], [11]], [[0.3], [0.9], [0.6], [0.1]])
    step = trace_step(STATES, 0, top1, MASK, backend="torch")
    assert step == TraceStep(4, True, (), False)  # token 7 is not position 1's top-1
    assert trace_step(STATES, 1, top1, MASK, backend="torch").chain == (((1, 1),), ((1, 1), (2, 1)))


def test_trace_step_without_ranks_records_nothing():
    assert trace_step(STATES, 0, None, MASK) == TraceStep(4, False, (), None)


# --------------------------------------------------------------------------- selection


def steps_of(*chains):
    return [TraceStep(8, True, tuple(tuple(f) for f in c), True) for c in chains]


A, B, C = ((1, 1),), ((2, 1),), ((1, 2),)
AB = ((1, 1), (2, 1))
ABC = ((1, 1), (2, 1), (3, 1))


def test_steps_objective_maximises_advance_on_the_traces():
    # Deep chains through A are common; B alone is frequent but never continued.
    traces = steps_of([A, AB, ABC], [A, AB, ABC], [A, AB, ABC], [B], [B], [C])
    graph = select_graph(traces, 3, objective="steps")
    assert set(graph.nodes) == {A, AB, ABC}
    assert graph.nodes[0] == A  # chosen order: the first step first
    # Greedy gain of A is 3 (three chains advance by one); B gives 2.
    degree1 = select_graph(traces, 3, objective="degree1")
    assert degree1.nodes[0] == A and degree1.nodes[1] == AB


def test_degree1_objective_counts_nodes_and_their_parents():
    # B (count 4) beats the child AB (count 2 + parent A's 2 = 4) on ties by size.
    traces = steps_of([A, AB], [A, AB], [B], [B], [B], [B])
    graph = select_graph(traces, 2, objective="degree1")
    assert graph.nodes == (B, A)
    graph = select_graph(traces, 3, objective="degree1")
    assert graph.nodes == (B, A, AB)


def test_selection_stays_connected_to_the_root():
    # AB is the most frequent formula, but never without A first.
    traces = steps_of([A, AB], [A, AB], [A, AB], [B])
    for objective in ("steps", "degree1"):
        graph = select_graph(traces, 2, objective=objective)
        assert graph.is_connected(), objective
        assert graph.nodes[0] == A


def test_selection_pads_a_budget_beyond_what_was_observed():
    traces = steps_of([A, AB], [B])
    graph = select_graph(traces, 6)
    assert len(graph) == 6 and {A, AB, B} <= set(graph.nodes)
    assert len(set(graph.nodes)) == 6


@pytest.mark.parametrize("budget", [0, -3, 2.0, True, "4"])
def test_bad_budget_is_rejected(budget):
    with pytest.raises(ValueError, match="budget must be an int >= 1"):
        select_graph(steps_of([A]), budget)


def test_bad_objective_and_empty_traces_are_rejected():
    with pytest.raises(ValueError, match="objective must be one of"):
        select_graph(steps_of([A]), 2, objective="best")
    with pytest.raises(ValueError, match="no recorded steps"):
        select_graph([], 2)


# --------------------------------------------------------------------------- traces on a model


@pytest.fixture(scope="module")
def traces(model):
    return collect_traces(model, PROMPTS, gen_length=16, block_length=8, backend="torch")


def test_traces_follow_vanilla_decoding(model, traces):
    vanilla = [
        generate(model, torch.tensor([p]), gen_length=16, block_length=8, backend="torch")
        for p in PROMPTS
    ]
    assert traces.vanilla_nfe == sum(out.nfe for out in vanilla)
    assert len(traces.blocks) == 2 * len(PROMPTS)
    for block in traces.blocks:  # one token per step: 8 steps, 8 .. 1 masked positions
        assert [s.num_masked for s in block.steps] == list(range(8, 0, -1))
    # The first block of each prompt has no ranks at its first step (no marginals yet).
    assert [b.steps[0].ranked for b in traces.blocks] == [False, True] * len(PROMPTS)
    assert all(s.ranked for b in traces.blocks for s in b.steps[1:])
    # Formulas grow by one pair per step (one token per step).
    for step in traces.steps:
        assert [len(f) for f in step.chain] == list(range(1, len(step.chain) + 1))
    summary = traces.summary()
    assert summary["trace_steps"] == 16 * len(PROMPTS)
    assert 0.0 < summary["next_state_expressible"] <= 1.0


@pytest.mark.parametrize(
    "settings",
    [
        {"cache": None},
        {"cache": "dual"},
        {"cache": "prefix"},
        {"cache": None, "steps": 8},  # two tokens per step
        {"cache": None, "gen_length": 24},  # three blocks
        {"cache": None, "temperature": 0.7, "seed": 3},
    ],
    ids=["nocache", "dual", "prefix", "two-per-step", "three-blocks", "sampling"],
)
def test_replayed_walk_gives_the_nfe_of_real_spiffy_decoding(model, settings):
    """`simulate` on the traces equals `generate` with the graph, step for step (exact modes)."""
    kw = {"gen_length": 16, "block_length": 8, "backend": "torch", **settings}
    traces = collect_traces(model, PROMPTS, **kw)
    for graph in (select_graph(traces, 5), DraftGraph.default(4)):
        real = 0
        for prompt in PROMPTS:
            ids = torch.tensor([prompt])
            out = generate(model, ids, graph=graph, max_drafts=None, **kw)
            assert torch.equal(out.tokens, generate(model, ids, **kw).tokens)
            real += out.nfe
        assert simulate(traces, graph)["nfe"] == real, graph


def test_steps_selection_never_replays_worse_than_the_default(traces):
    """The "steps" search starts from the better of greedy and the default graph and only
    takes swaps that lower the replayed NFE (ties: raise the mean advance); per-phase graphs
    start from the single graph."""
    for budget in (3, 6):
        single = select_graph(traces, budget)
        calibrated, default = simulate(traces, single), simulate(traces, DraftGraph.default(budget))
        assert (calibrated["nfe"], -calibrated["mean_advance"]) <= (
            default["nfe"],
            -default["mean_advance"],
        )
        assert simulate(traces, select_phased_graph(traces, budget, 2))["nfe"] <= calibrated["nfe"]


def test_calibrate_public_api_and_progress_bar(model, capsys):
    graph = calibrate(
        model, PROMPTS[:1], budget=3, gen_length=8, block_length=8, backend="torch", progress=True
    )
    assert isinstance(graph, DraftGraph) and len(graph) == 3
    assert "calibration traces" in capsys.readouterr().err


def test_calibrate_rejects_bad_input(model):
    kw = {"gen_length": 8, "block_length": 8, "backend": "torch"}
    with pytest.raises(ValueError, match="prompts is empty"):
        calibrate(model, [], budget=3, **kw)
    with pytest.raises(ValueError, match="prompts must be a list"):
        calibrate(model, "a prompt", budget=3, **kw)
    with pytest.raises(ValueError, match="budget must be an int >= 1"):
        calibrate(model, PROMPTS, budget=0, **kw)
    with pytest.raises(ValueError, match="objective must be one of"):
        calibrate(model, PROMPTS, budget=2, objective="x", **kw)
    with pytest.raises(ValueError, match="not a calibration setting"):
        calibrate(model, PROMPTS, budget=2, graph=3, **kw)
    with pytest.raises(ValueError, match="max_token_rank"):
        calibrate(model, PROMPTS, budget=2, max_token_rank=0, **kw)
    with pytest.raises(ValueError, match="no tokenizer"):
        calibrate(model, ["text"], budget=2, **kw)

    class OwnVerifier(torch.nn.Module):  # stands for the Dream / SDAR adapters
        config = model.config

        def spiffy_verifier(self, cache, verify):
            raise AssertionError("not reached")

    with pytest.raises(ValueError, match="does not support yet"):
        calibrate(OwnVerifier(), PROMPTS, budget=2, **kw)


# --------------------------------------------------------------------------- per phase


def test_phased_graphs_decode_losslessly_with_the_replayed_nfe(model, traces):
    phased = select_phased_graph(traces, 3, 2)
    assert [(lo, hi) for lo, hi, _ in phased.phases] == [(1, 4), (5, 8)]
    assert all(len(g) == 3 for _, _, g in phased.phases)
    assert set(phased.nodes) == {f for _, _, g in phased.phases for f in g.nodes}
    assert phased.phase_graph(6) is phased.phases[1][2]
    real = 0
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        kw = {"gen_length": 16, "block_length": 8, "backend": "torch"}
        out = generate(
            model,
            ids,
            graph=phased,
            filler=phased_filler(phased, backend="torch"),
            max_drafts=None,
            **kw,
        )
        assert torch.equal(out.tokens, generate(model, ids, **kw).tokens)
        real += out.nfe
    assert simulate(traces, phased)["nfe"] == real


def test_phased_graph_json_round_trip(tmp_path, traces):
    phased = select_phased_graph(traces, 2, 4)
    path = save_graph(phased, tmp_path / "phased.json", traces)
    loaded = load_graph(path)
    assert isinstance(loaded, PhasedDraftGraph)
    assert [(lo, hi, g.nodes) for lo, hi, g in loaded.phases] == [
        (lo, hi, g.nodes) for lo, hi, g in phased.phases
    ]
    with pytest.raises(ValueError, match="phases must be an int >= 1"):
        select_phased_graph(traces, 2, 0)
    with pytest.raises(ValueError, match="cannot exceed block_length"):
        select_phased_graph(traces, 2, 9)
    with pytest.raises(ValueError, match="must not overlap"):
        PhasedDraftGraph([(1, 5, DraftGraph.default(2)), (4, 8, DraftGraph.default(2))])


# --------------------------------------------------------------------------- graph files


def test_saved_graph_keeps_counts_and_loads_as_a_draft_graph(tmp_path, traces):
    graph = select_graph(traces, 4)
    path = save_graph(graph, tmp_path / "g.json", traces)
    assert DraftGraph.load(path) == graph  # the plain loader ignores the extra keys
    assert load_graph(path) == graph
    counts = stored_counts(path)
    assert counts == node_counts(traces, graph)
    assert counts[0] == traces.counts()[graph.nodes[0]] > 0
    data = json.loads(path.read_text())
    assert data["calibration"]["simulated"]["nfe"] == simulate(traces, graph)["nfe"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "spiffy-draft-graph", "version": 1, "nodes": []}', "at least one node"),
        (
            '{"format": "spiffy-draft-graph", "version": 1, "nodes": [[[1, 1]], [[1, 1]]]}',
            "same formula",
        ),
        ('{"format": "spiffy-draft-graph", "version": 1, "nodes": [[[0, 1]]]}', ">= 1"),
        (
            # a cycle: each node claims the other as its parent
            '{"format": "spiffy-draft-graph", "version": 1, "nodes": [[[1, 1]], [[2, 1]]],'
            ' "parents": [[1], [0]]}',
            "do not match",
        ),
        ('["a list"]', "not a draft graph"),
        ('{"format": "spiffy-phased-draft-graph", "phases": []}', "non-empty 'phases'"),
    ],
    ids=["syntax", "empty", "duplicate", "rank0", "cycle", "wrong-type", "phased-empty"],
)
def test_load_graph_rejects_invalid_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_graph(path)
    assert str(path) in str(info.value)


def test_load_graph_rejects_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="cannot read draft graph file"):
        load_graph(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="cannot read draft graph file"):
        load_graph(tmp_path)  # a directory


# --------------------------------------------------------------------------- results script


@pytest.mark.slow
def test_calibration_benchmark_quick(tmp_path):
    """benchmarks/calibration.py --quick on a small random-weight checkpoint: the table's
    replayed NFE agrees with real decoding, and pruned decoding keeps vanilla's tokens."""
    from benchmarks import calibration as bench

    sizes = dict(n_heads=2, n_kv_heads=1, n_layers=1, max_sequence_length=256)
    model_dir = save_char_llada(tmp_path / "model", 1, **sizes)
    out = tmp_path / "results"
    assert bench.main(["--quick", "--model", str(model_dir), "--out-dir", str(out)]) == 0
    rows = json.loads((out / "calibration.json").read_text())["rows"]
    assert {r["graph"] for r in rows} == {"default", "degree1", "steps", "steps-2phase"}
    checked = [r["real_check"] for r in rows if r["real_check"] is not None]
    assert checked and all(checked)
    for r in rows:
        assert r["nfe"] <= r["vanilla_nfe"] and r["nfe_speedup"] == r["vanilla_nfe"] / r["nfe"]
    assert (out / "calibration_graph.png").read_bytes()[:4] == b"\x89PNG"
    pruning = json.loads((out / "calibration_pruning.json").read_text())["rows"]
    assert all(r["same_tokens"] for r in pruning)
    assert all(r["rows_per_forward"] <= 1 + (r["max_drafts"] or r["D"]) for r in pruning)
