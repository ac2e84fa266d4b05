"""Transition rules: LLaDA schedule, low-confidence / random remasking, Fast-dLLM threshold and
factor, temperature, the mask token never chosen, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from spiffy_triton import dispatch
from spiffy_triton.decoding.rules import TransitionRule, num_transfer_tokens, remasking_uniform

MASK = 2
V = 11


def llada_num_transfer_tokens(mask_num: int, steps: int) -> list[int]:
    # LLaDA's get_num_transfer_tokens, written as upstream does it with tensors.
    mask_index = torch.ones(1, mask_num, dtype=torch.bool)
    count = mask_index.sum(dim=1, keepdim=True)
    base = count // steps
    remainder = count % steps
    out = torch.zeros(1, steps, dtype=torch.int64) + base
    for i in range(1):
        out[i, : remainder[i]] += 1
    return out[0].tolist()


@pytest.mark.parametrize("length, steps", [(32, 32), (32, 10), (32, 7), (8, 3), (64, 64), (5, 1)])
def test_schedule_matches_llada(length, steps):
    schedule = num_transfer_tokens(length, steps)
    assert schedule == llada_num_transfer_tokens(length, steps)
    assert sum(schedule) == length and min(schedule) >= 1


@pytest.mark.parametrize("length, steps", [(4, 5), (0, 1), (4, 0), (4, 2.0)])
def test_schedule_errors(length, steps):
    with pytest.raises(ValueError):
        num_transfer_tokens(length, steps)


def make_case(seed: int, length: int = 12, masked_fraction: float = 0.7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(length, V, generator=g, dtype=torch.float64) * 3
    state = torch.randint(4, V, (length,), generator=g)
    masked = torch.rand(length, generator=g) < masked_fraction
    masked[0] = True
    state[masked] = MASK
    positions = torch.arange(100, 100 + length)
    return logits, state, positions


def expected_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    banned = logits.clone()
    banned[:, MASK] = float("-inf")
    probs = torch.softmax(banned, dim=-1)
    return banned.argmax(-1), probs.max(-1).values


def committed(old: torch.Tensor, new: torch.Tensor) -> set[int]:
    return set((old != new).nonzero().flatten().tolist())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("count", [1, 2, 3])
def test_low_confidence_commits_most_confident(seed, count):
    logits, state, positions = make_case(seed)
    rule = TransitionRule(mask_id=MASK, schedule=(count,) * 12, backend="torch")
    new, marg = rule(logits, state, step=3, block_step=0, positions=positions)
    token, conf = expected_probs(logits)
    masked = (state == MASK).nonzero().flatten().tolist()
    ranked = sorted(masked, key=lambda p: (-float(conf[p]), p))
    assert committed(state, new) == set(ranked[:count])
    for p in ranked[:count]:
        assert new[p] == token[p]
    assert torch.equal(new[state != MASK], state[state != MASK])  # unmasked stay
    # pure: the same inputs make the same transition
    again, _ = rule(logits, state, step=3, block_step=0, positions=positions)
    assert torch.equal(new, again)


def test_schedule_follows_block_step():
    logits, state, positions = make_case(0, length=8, masked_fraction=1.0)
    state[:] = MASK
    rule = TransitionRule(mask_id=MASK, schedule=(3, 3, 2), backend="torch")
    for block_step, count in enumerate((3, 3, 2)):
        new, _ = rule(logits, state, step=block_step, block_step=block_step, positions=positions)
        assert len(committed(state, new)) == count
        state = new
    assert (state != MASK).all()
    state[0] = MASK
    with pytest.raises(ValueError, match="outside the schedule"):
        rule(logits, state, step=3, block_step=3, positions=positions)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tau", [0.0, 0.3, 0.6, 0.9, 1.0])
def test_threshold_rule(seed, tau):
    logits, state, positions = make_case(seed)
    rule = TransitionRule(mask_id=MASK, threshold=tau, backend="torch")
    new, _ = rule(logits, state, step=0, block_step=5, positions=positions)
    _, conf = expected_probs(logits)  # float64, as Fast-dLLM's softmax(logits.double())
    masked = (state == MASK).nonzero().flatten().tolist()
    kept = {p for p in masked if conf[p] >= tau}  # Fast-dLLM drops only conf < threshold
    best = min(masked, key=lambda p: (-float(conf[p]), p))
    assert committed(state, new) == (kept or {best})
    if tau == 0.0:
        assert committed(state, new) == set(masked)
    if tau == 1.0:  # no probability is exactly 1 here: one token per step
        assert committed(state, new) == {best}


def test_threshold_keeps_a_confidence_equal_to_it():
    logits = torch.full((3, V), -3.0, dtype=torch.float64)
    logits[:, 5] = 0.0
    logits[0, 6] = 0.0  # position 0: two equal top tokens, confidence < 0.5
    state = torch.full((3,), MASK)
    rule = TransitionRule(mask_id=MASK, threshold=0.6, backend="torch")
    new, marg = rule(logits, state, step=0, block_step=0, positions=torch.arange(3))
    # positions 1 and 2 have confidence 1 / (1 + 9 e^-3) = 0.69 > 0.6
    assert committed(state, new) == {1, 2}
    tau = float(marg.prob[1])
    assert tau == float(marg.prob[2]) and marg.prob.dtype == torch.float64
    rule = TransitionRule(mask_id=MASK, threshold=tau, backend="torch")
    new, _ = rule(logits, state, step=0, block_step=0, positions=torch.arange(3))
    assert committed(state, new) == {1, 2}  # equal to tau: kept, as Fast-dLLM keeps it
    above = torch.nextafter(torch.tensor(tau, dtype=torch.float64), torch.tensor(2.0)).item()
    rule = TransitionRule(mask_id=MASK, threshold=above, backend="torch")
    new, _ = rule(logits, state, step=0, block_step=0, positions=torch.arange(3))
    assert committed(state, new) == {1}  # just below tau: only the (lowest) most confident


def test_threshold_one_commits_only_certain_positions():
    logits = torch.full((3, V), -3.0, dtype=torch.float64)
    logits[:, 5] = 0.0
    logits[2, :] = -math.inf  # position 2: one finite logit, probability exactly 1
    logits[2, 7] = 0.0
    state = torch.full((3,), MASK)
    rule = TransitionRule(mask_id=MASK, threshold=1.0, backend="torch")
    new, marg = rule(logits, state, step=0, block_step=0, positions=torch.arange(3))
    assert float(marg.prob[2]) == 1.0 and committed(state, new) == {2}


def near_tie_logits(eps: list[float]) -> torch.Tensor:
    """float64 logits whose top token (id 5) has probability 1 / (1 + eps[p]) at position p."""
    rows = []
    for e in eps:
        row = torch.full((V,), math.log(e / (V - 2)), dtype=torch.float64)  # V - 2: not mask, 5
        row[5] = 0.0
        row[MASK] = 3.0  # the mask token is excluded before the softmax
        rows.append(row)
    return torch.stack(rows)


def test_near_one_confidences_keep_their_float64_order():
    # 0.999999640 and 0.999999665 both round to 0.99999964 in float32: a float32 ranking ties
    # them and the lower position would win; Fast-dLLM ranks in float64.
    eps = [3.60e-7, 3.35e-7, 3.50e-7]
    logits = near_tie_logits(eps)
    exact = 1.0 / (1.0 + torch.tensor(eps, dtype=torch.float64))
    assert len(set(exact.to(torch.float32).tolist())) == 1  # the case is a float32 tie
    state = torch.full((3,), MASK)
    for remasking, extra in [
        ("low_confidence", {}),
        ("maskgit_plus", {}),
        ("low_confidence_static", {}),
    ]:
        rule = TransitionRule(
            mask_id=MASK, remasking=remasking, schedule=(1, 1, 1), backend="torch", **extra
        )
        new, marg = rule(logits, state, step=0, block_step=0, positions=torch.arange(3))
        assert committed(state, new) == {1}, remasking
        assert torch.allclose(marg.prob, exact, rtol=0, atol=1e-14)
        new2, _ = rule(logits, new, step=1, block_step=1, positions=torch.arange(3))
        assert committed(new, new2) == {2}, remasking
    rule = TransitionRule(mask_id=MASK, threshold=0.99999966, backend="torch")
    new, _ = rule(logits, state, step=0, block_step=0, positions=torch.arange(3))
    assert committed(state, new) == {1}  # float32: 0.99999964 < tau everywhere, position 0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0, 4.0])
def test_factor_rule(seed, factor):
    logits, state, positions = make_case(seed)
    rule = TransitionRule(mask_id=MASK, factor=factor, backend="torch")
    new, marg = rule(logits, state, step=0, block_step=0, positions=positions)
    conf = marg.prob.to(torch.float64)
    masked = (state == MASK).nonzero().flatten().tolist()
    ranked = sorted(masked, key=lambda p: (-float(conf[p]), p))
    n = 1
    for k in range(1, len(ranked) + 1):
        if all((i + 1) * (1 - float(conf[ranked[i - 1]])) < factor for i in range(1, k + 1)):
            n = k
    assert committed(state, new) == set(ranked[:n])


def test_random_remasking_uses_step_keyed_uniform():
    logits, state, positions = make_case(1, length=16)
    rule = TransitionRule(mask_id=MASK, remasking="random", schedule=(2,) * 8, seed=9)
    new, _ = rule(logits, state, step=4, block_step=0, positions=positions)
    u = remasking_uniform(9, 4, positions)
    masked = (state == MASK).nonzero().flatten().tolist()
    ranked = sorted(masked, key=lambda p: (-float(u[p]), p))
    assert committed(state, new) == set(ranked[:2])
    # The uniform depends on (seed, step, position) only, not on how positions are packed.
    assert torch.equal(remasking_uniform(9, 4, positions[5:9]), u[5:9])
    assert not torch.equal(remasking_uniform(9, 5, positions), u)
    assert not torch.equal(remasking_uniform(10, 4, positions), u)
    many = remasking_uniform(3, 0, torch.arange(20000))
    assert 0 < float(many.min()) and float(many.max()) < 1
    assert abs(float(many.mean()) - 0.5) < 0.01  # 0.5 +- 5 standard errors
    assert abs(float((many < 0.25).double().mean()) - 0.25) < 0.015


def test_sampling_uses_step_keyed_gumbel_noise():
    logits, state, positions = make_case(2, length=16, masked_fraction=1.0)
    logits = logits / 3  # flatter: sampling differs from argmax
    rule = TransitionRule(mask_id=MASK, temperature=0.7, schedule=(16,), seed=5, backend="torch")
    new, marg = rule(logits, state, step=7, block_step=0, positions=positions)
    banned = logits.clone()
    banned[:, MASK] = float("-inf")
    ref = dispatch.marginals(
        banned, temperature=0.7, seed=5, step=7, positions=positions, backend="torch"
    )
    assert torch.equal(new, ref.token)
    # the same rows at another offset in a batch sample the same tokens (keyed by position)
    rule5 = TransitionRule(mask_id=MASK, temperature=0.7, schedule=(5,), seed=5, backend="torch")
    part, _ = rule5(logits[4:9], state[4:9], step=7, block_step=0, positions=positions[4:9])
    assert torch.equal(part, new[4:9])
    other, _ = rule(logits, state, step=8, block_step=0, positions=positions)
    assert not torch.equal(other, new)
    greedy = TransitionRule(mask_id=MASK, schedule=(16,), backend="torch")
    argmax, _ = greedy(logits, state, step=7, block_step=0, positions=positions)
    assert not torch.equal(argmax, new)


def test_mask_token_is_never_committed():
    logits = torch.zeros(4, V, dtype=torch.float64)
    logits[:, MASK] = 10.0  # the mask id is the argmax everywhere
    state = torch.full((4,), MASK)
    for kwargs in ({"schedule": (4,)}, {"threshold": 0.5}, {"schedule": (4,), "temperature": 1.0}):
        rule = TransitionRule(mask_id=MASK, backend="torch", **kwargs)
        new, _ = rule(logits, state, step=0, block_step=0, positions=torch.arange(4))
        assert (new != MASK).sum() >= 1 and not (new[new != MASK] == MASK).any()
        assert (new == MASK).sum() < 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"remasking": "topk", "schedule": (1,)}, "remasking"),
        ({"temperature": -1.0, "schedule": (1,)}, "temperature"),
        ({"temperature": float("nan"), "schedule": (1,)}, "temperature"),
        ({"threshold": 0.5, "factor": 1.0}, "not both"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.1}, r"threshold must be a number in \[0, 1\]"),
        ({"threshold": True}, "threshold"),
        ({"threshold": "0.9"}, "threshold"),
        ({"factor": 0.0}, "factor"),
        ({"threshold": 0.5, "remasking": "random"}, "low_confidence"),
        ({"threshold": 0.5, "schedule": (1,)}, "no step schedule"),
        ({}, "schedule"),
    ],
)
def test_rule_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransitionRule(mask_id=MASK, **kwargs)


def test_apply_errors():
    logits, state, positions = make_case(0, length=4)
    rule = TransitionRule(mask_id=MASK, schedule=(4,), backend="torch")
    state[:] = 5
    with pytest.raises(ValueError, match="no masked position"):
        rule(logits, state, step=0, block_step=0, positions=positions)
    state[:2] = MASK
    with pytest.raises(ValueError, match="only 2 positions are masked"):
        rule(logits, state, step=0, block_step=0, positions=positions)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"schedule": (16,)},
        {"schedule": (16,), "temperature": 0.7},
        {"threshold": 0.6},
        {"remasking": "topk_margin", "schedule": (16,)},
        {"remasking": "maskgit_plus", "schedule": (16,)},
    ],
)
@pytest.mark.parametrize("top_k", [1, 3, 8])
def test_extra_top_k_never_changes_the_step_and_carries_p_last(kwargs, top_k):
    from spiffy_triton.decoding.rules import block_marginals

    logits, state, positions = make_case(3, length=16, masked_fraction=1.0)
    rule = TransitionRule(mask_id=MASK, seed=2, backend="torch", **kwargs)
    plain = rule.marginals(logits, step=4, positions=positions)
    wide = rule.marginals(logits, step=4, positions=positions, top_k=top_k)
    assert torch.equal(plain.token, wide.token) and torch.equal(plain.prob, wide.prob)
    assert wide.topk_tokens.shape[1] == max(top_k, plain.topk_tokens.shape[1])
    step = {"step": 4, "block_step": 0, "positions": positions}
    assert torch.equal(rule.apply(plain, state, **step), rule.apply(wide, state, **step))
    # P_last read off the walk's marginals equals P_last computed on its own (T = 1, no noise)
    p_last = rule.p_last_from(wide)
    alone = block_marginals(
        logits, top_k=wide.topk_tokens.shape[1], temperature=0.0, seed=0, step=0,
        positions=positions, mask_id=MASK, backend="torch",
    )  # fmt: skip
    assert rule.p_last_from_supported and p_last is not None
    for got, want in zip(p_last, alone):
        assert torch.equal(got, want)


def test_p_last_is_not_read_off_tempered_confidence():
    logits, _, positions = make_case(4, length=8, masked_fraction=1.0)
    rule = TransitionRule(
        mask_id=MASK, remasking="maskgit_plus", temperature=0.5, schedule=(8,), backend="torch"
    )
    assert not rule.p_last_from_supported
    assert rule.p_last_from(rule.marginals(logits, step=0, positions=positions, top_k=2)) is None
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="top_k must be an int >= 1"):
            rule.marginals(logits, step=0, positions=positions, top_k=bad)
