"""``generate(max_drafts="auto")`` end to end (spiffy_triton/decoding/budget.py,
budget_state.py): lossless, the two extremes of the cost model, what it says it did, the
budget's state across iterations and calls (back-off, online refit, decayed ratio, shared
budgets).
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from cost_fixtures import (
    GRAPH,
    memory_only_cost_cache,
    recording_model,
    sample_prompt,
)
from utils import TINY_MASK_ID, tiny_random_llada

from spiffy_triton.decoding import budget as cm
from spiffy_triton.decoding import cost_model as cost_module
from spiffy_triton.decoding import generate
from spiffy_triton.decoding.budget import AutoDraftBudget
from spiffy_triton.decoding.cost_model import (
    VerifyCostModel,
    VerifyShape,
    verify_shape,
)
from spiffy_triton.decoding.drafting import DraftCandidate

# ------------------------------------------------------------------------------- generate

KW = {"gen_length": 16, "block_length": 8, "backend": "torch"}


@pytest.fixture(scope="module")
def model():
    return recording_model()


@pytest.fixture(scope="module")
def prompt():
    return sample_prompt()


@pytest.fixture(autouse=True)
def fresh_cost_cache(monkeypatch):
    yield from memory_only_cost_cache(monkeypatch)


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
