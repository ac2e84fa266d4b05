"""SimSD: its layout against a dense mask built element by element, the decode loop against a
loop written out here with a per-row mask, the exact variant against vanilla SDAR, and bad
inputs (a bidirectional model, a draft of another vocabulary)."""

from __future__ import annotations

import functools

import pytest
import torch
from test_sdar import BLOCK, MASK, PROMPT, tiny, tiny_config
from utils import TINY_QWEN_SIZES

from spiffy_triton.decoding import generate
from spiffy_triton.decoding.rules import TransitionRule
from spiffy_triton.decoding.simsd import ModelDraft, Proposal, accept_references, reference_chain
from spiffy_triton.layout import SegmentLayout
from spiffy_triton.models import DreamModel, LLaDAConfig, LLaDAModel, SDARModel

KW = dict(gen_length=8, block_length=BLOCK, backend="torch")


# ---------------------------------------------------------------------------- layout


def simsd_rows(chunks, committed, block_len, cached):
    """(kind, position, chunk) of every row, in the layout's order, from the definition."""
    context = sum(chunks)
    rows = [] if cached else [("ctx", p, None) for p in range(context)]
    if not cached:
        start = 0
        for i, length in enumerate(chunks):
            for k in range(length):
                rows[start + k] = ("ctx", start + k, i)
            start += length
    s = context
    rows += [("block", s + p, None) for p in range(block_len)]
    rows += [("ref", s + p, None) for p in range(committed, block_len - 1)]
    return rows


def simsd_dense_oracle(chunks, committed, block_len, cached):
    """The SimSD mask element by element: context chunks block-causal; block rows see the
    context and the block; a masked block row also sees references at earlier positions; a
    reference sees the context, the committed block positions and references up to itself."""
    keys = simsd_rows(chunks, committed, block_len, False)
    queries = simsd_rows(chunks, committed, block_len, cached)
    first_masked = sum(chunks) + committed
    mask = torch.zeros(len(queries), len(keys), dtype=torch.bool)
    for i, (qk, qp, qc) in enumerate(queries):
        for j, (kk, kp, kc) in enumerate(keys):
            if qk == "ctx":
                visible = kk == "ctx" and kc <= qc
            elif qk == "block":
                visible = kk in ("ctx", "block") or (qp >= first_masked and kk == "ref" and kp < qp)
            else:
                committed_key = kk == "block" and kp < first_masked
                visible = kk == "ctx" or committed_key or (kk == "ref" and kp <= qp)
            mask[i, j] = visible
    return mask


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("chunks", [(4,), (3, 4, 2), (0,)])
@pytest.mark.parametrize("committed, block_len", [(0, 1), (0, 4), (1, 4), (3, 4), (2, 8), (0, 8)])
def test_layout_matches_dense_oracle(chunks, committed, block_len, cached):
    context = sum(chunks) if cached else chunks
    layout = SegmentLayout.simsd(context, committed, block_len, cached=cached)
    expected = simsd_dense_oracle(chunks, committed, block_len, cached)
    assert torch.equal(layout.to_dense(), expected)
    # O(segments): one per context chunk and four (queries) / three (keys) for the block
    assert layout.num_q_segments == (0 if cached else len(chunks)) + 4
    assert layout.num_k_segments == (1 if cached else len(chunks)) + 3


def test_layout_errors():
    with pytest.raises(ValueError, match="committed"):
        SegmentLayout.simsd(4, 4, 4)  # no masked position left
    with pytest.raises(ValueError, match="committed"):
        SegmentLayout.simsd(4, -1, 4)
    with pytest.raises(TypeError, match="block_len"):
        SegmentLayout.simsd(4, 0, 4.0)
    with pytest.raises(ValueError, match="context"):
        SegmentLayout.simsd(-2, 0, 4)


# ---------------------------------------------------------------------------- acceptance


def test_accept_references():
    t = torch.tensor
    assert accept_references(t([5, 6, 7, 8]), t([5, 6, 7])) == 4  # all agree: whole block
    assert accept_references(t([5, 6, 7, 8]), t([5, 9, 7])) == 2  # first disagreement at 1
    assert accept_references(t([5, 6]), t([1])) == 1  # the target's own token only
    assert accept_references(t([5]), t([], dtype=torch.int64)) == 1
    with pytest.raises(ValueError, match="references"):
        accept_references(t([5, 6]), t([5, 6]))


def test_reference_chain_follows_draft_confidence_and_schedule():
    state = torch.tensor([7, MASK, MASK, MASK, MASK])
    proposal = Proposal(
        torch.tensor([7, 10, 11, 12, 13]),
        torch.tensor([float("inf"), 0.2, 0.9, 0.5, 0.9], dtype=torch.float64),
    )
    rule = TransitionRule(mask_id=MASK, schedule=(1, 2, 1, 1))
    chain = reference_chain(state, proposal, rule, MASK, block_step=1).tolist()
    # schedule from block step 1: 2 then 1 more; confidence order 2, 4 (tie: lower first), 3, 1
    assert chain == [[7, MASK, 11, MASK, 13], [7, MASK, 11, 12, 13]]


# ---------------------------------------------------------------------------- decoding


def row_mask_layout(mask: torch.Tensor) -> SegmentLayout:
    """A dense boolean mask as a layout of one-row segments (the oracle's way to run it)."""
    n_q, n_k = mask.shape
    return SegmentLayout((1,) * n_q, (1,) * n_k, mask.to(torch.int8))


def simsd_reference_decode(model, prompt, gen_length, refs_of):
    """SimSD written out: uncached, the dense oracle mask, greedy, `refs_of(x, s, e)` the
    references of the block."""
    x = torch.cat([prompt, torch.full((1, gen_length), MASK)], dim=1)
    p, forwards = prompt.shape[1], 0
    for s in range(p, x.shape[1], BLOCK):
        e, c = s + BLOCK, 0
        chunks = tuple([BLOCK] * (p // BLOCK) + ([p % BLOCK] if p % BLOCK else []))
        chunks += (BLOCK,) * ((s - p) // BLOCK)
        while c < BLOCK:
            refs = refs_of(x, s, e)[c : BLOCK - 1]
            ids = torch.cat([x[0, :e], refs])[None]
            pos = torch.cat([torch.arange(e), torch.arange(s + c, e - 1)])
            mask = simsd_dense_oracle(chunks, c, BLOCK, False)
            logits = model(ids, position_ids=pos, layout=row_mask_layout(mask))[0, s + c : e]
            target = logits.clone()
            target[:, MASK] = -torch.inf
            target = target.argmax(-1)
            n = 1
            while n < BLOCK - c and target[n - 1] == refs[n - 1]:
                n += 1
            x[0, s + c : s + c + n] = target[:n]
            c += n
            forwards += 1
    return x, forwards


class FixedDraft:
    """A draft source proposing a fixed token per absolute position."""

    def __init__(self, tokens):
        self.tokens = tokens
        self.forwards = 0

    def start(self, target, prompt_length):
        pass

    def propose(self, x, s, e):
        block = x[0, s:e].clone()
        masked = block == MASK
        block[masked] = self.tokens[s:e][masked]
        return Proposal(block, torch.ones(e - s, dtype=torch.float64))


@functools.cache
def other_sdar(seed=7) -> SDARModel:
    return SDARModel(tiny_config(), backend="torch").init_weights(seed, std=0.5).double().eval()


def test_decode_loop_equals_written_out_simsd():
    model = tiny()
    # references from another model's decoding, so some agree with the target and some do not
    guess = generate(other_sdar(), PROMPT, **KW).tokens[0]
    expected, forwards = simsd_reference_decode(
        model, PROMPT, 8, lambda x, s, e: torch.where(x[0, s:e] == MASK, guess[s:e], x[0, s:e])
    )
    out = generate(model, PROMPT, method="simsd", draft=FixedDraft(guess), **KW)
    assert torch.equal(out.tokens, expected)
    assert out.nfe == forwards and out.steps == 8 and not out.stats.exact
    stats = out.stats.to_dict()
    assert stats["method"] == "simsd" and stats["draft_forwards"] == 0
    assert sum(n * k for n, k in out.stats.steps_per_forward.items()) == 8
    assert stats["references_accepted"] == 8 - out.nfe


@pytest.mark.parametrize("cache", [None, "prefix"])
def test_simsd_runs_cached_and_uncached_and_is_deterministic_when_sampling(cache):
    model = tiny()
    kwargs = dict(method="simsd", draft="self", cache=cache, temperature=0.9, **KW)
    a = generate(model, PROMPT, seed=1, **kwargs)
    b = generate(model, PROMPT, seed=1, **kwargs)
    c = generate(model, PROMPT, seed=2, **kwargs)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert (a.tokens[0, 8:] != MASK).all() and a.steps == 8
    assert a.stats.query_rows > 0 and a.stats.cache == cache


EXACT_RULES = [
    {"remasking": "low_confidence_static"},
    {"remasking": "low_confidence", "temperature": 0.7, "seed": 5},
    {"remasking": "low_confidence_dynamic", "threshold": 0.3},
    {"remasking": "low_confidence", "steps": 4},
]


@pytest.mark.parametrize("draft", ["self", "previous"])
@pytest.mark.parametrize("cache", [None, "prefix"])
@pytest.mark.parametrize("rule", EXACT_RULES)
def test_exact_variant_equals_vanilla(cache, rule, draft):
    model = tiny()
    vanilla = generate(model, PROMPT, cache=cache, **KW, **rule)
    exact = generate(model, PROMPT, cache=cache, method="simsd-exact", draft=draft, **KW, **rule)
    assert torch.equal(exact.tokens, vanilla.tokens) and exact.steps == vanilla.steps
    assert exact.stats.exact and exact.stats.verify_forwards <= vanilla.nfe


def test_exact_variant_saves_forwards_with_a_good_draft():
    model = tiny()
    vanilla = generate(model, PROMPT, **KW)
    exact = generate(model, PROMPT, method="simsd-exact", draft=FixedDraft(vanilla.tokens[0]), **KW)
    assert torch.equal(exact.tokens, vanilla.tokens)
    assert exact.nfe < vanilla.nfe  # candidates were accepted: the equality is not vacuous


def test_simsd_draft_defaults_to_self_as_on_the_command_line():
    model = tiny()
    default = generate(model, PROMPT, method="simsd", **KW)
    explicit = generate(model, PROMPT, method="simsd", draft="self", **KW)
    assert torch.equal(default.tokens, explicit.tokens) and default.nfe == explicit.nfe
    assert default.stats.draft == "self, 1 step"


@pytest.mark.parametrize("method", ["simsd", "simsd-exact"])
@pytest.mark.parametrize("cache", [None, "prefix"])
def test_nfe_counts_the_targets_drafting_forwards(method, cache):
    """Every forward of the target counts (issue #21): with draft='self' NFE is the verify
    forwards plus the drafting forwards; a separate draft model's forwards stay apart."""
    model = tiny()
    out = generate(model, PROMPT, method=method, draft="self", cache=cache, **KW)
    st = out.stats
    assert st.draft_is_target and st.draft_forwards > 0
    assert out.nfe == st.nfe == st.verify_forwards + st.draft_forwards
    assert st.to_dict()["tokens_per_forward"] == pytest.approx(8 / out.nfe)
    calls = []
    forward, prefill = model.forward, model.prefill
    model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    model.prefill = lambda *a, **k: calls.append(1) or prefill(*a, **k)
    try:
        again = generate(model, PROMPT, method=method, draft="self", cache=cache, **KW)
    finally:
        del model.forward, model.prefill
    assert len(calls) == again.nfe == out.nfe  # NFE is what the target ran
    other = generate(model, PROMPT, method=method, draft=other_sdar(), cache=cache, **KW)
    assert not other.stats.draft_is_target and other.stats.draft_forwards > 0
    assert other.nfe == other.stats.verify_forwards


def test_draft_models_smaller_or_bidirectional():
    model = tiny()
    small = SDARModel(tiny_config(num_hidden_layers=1), backend="torch").init_weights(3)
    out = generate(model, PROMPT, method="simsd", draft=small.double().eval(), **KW)
    assert out.stats.draft_forwards > 0 and out.steps == 8
    # a LLaDA-style draft of the same vocabulary (bidirectional drafts are fine)
    config = LLaDAConfig(
        d_model=32, n_heads=4, n_kv_heads=2, n_layers=1, mlp_hidden_size=48,
        vocab_size=TINY_QWEN_SIZES["vocab_size"], mask_token_id=MASK, eos_token_id=0,
        max_sequence_length=64,
    )  # fmt: skip
    llada = LLaDAModel(config, backend="torch").init_weights(2).double().eval()
    two_steps = ModelDraft(llada, steps=2)
    out = generate(model, PROMPT, method="simsd", draft=two_steps, **KW)
    assert out.steps == 8 and two_steps.forwards == out.stats.draft_forwards > 0


# ---------------------------------------------------------------------------- bad inputs


def test_simsd_rejects_bidirectional_models():
    dream = DreamModel(tiny_config(model_type="qwen3"), backend="torch").double().eval()
    with pytest.raises(ValueError, match=r"method='simsd'.*DreamModel"):
        generate(dream, PROMPT, method="simsd", draft="self", **KW)
    config = LLaDAConfig(
        d_model=32, n_heads=4, n_kv_heads=2, n_layers=1, mlp_hidden_size=48, vocab_size=64,
        mask_token_id=MASK, eos_token_id=0, max_sequence_length=64,
    )  # fmt: skip
    llada = LLaDAModel(config, backend="torch").double().eval()
    with pytest.raises(ValueError, match=r"method='simsd-exact'.*LLaDAModel"):
        generate(llada, PROMPT, method="simsd-exact", draft="self", **KW)


def test_simsd_rejects_a_draft_of_another_vocabulary():
    model = tiny()
    wider = SDARModel(tiny_config(vocab_size=80), backend="torch").double().eval()
    with pytest.raises(ValueError, match=r"^draft: .*80 tokens"):
        generate(model, PROMPT, method="simsd", draft=wider, **KW)
    other_mask = SDARModel(tiny_config(mask_token_id=62), backend="torch").double().eval()
    with pytest.raises(ValueError, match=r"^draft: .*mask id"):
        generate(model, PROMPT, method="simsd", draft=other_mask, **KW)


def test_simsd_rejects_a_draft_with_another_tokenizer():
    from spiffy_triton.models import CharTokenizer

    a, b = tiny(), other_sdar()
    n = TINY_QWEN_SIZES["vocab_size"] - 4  # ids after the four special tokens
    a.tokenizer = CharTokenizer("".join(chr(ord("0") + i) for i in range(n)))
    b.tokenizer = CharTokenizer("".join(chr(ord("0") + i) for i in range(n - 1)) + "~")
    try:
        assert a.tokenizer.vocab_size == b.tokenizer.vocab_size == n + 4
        generate(a, PROMPT, method="simsd", draft=a, **KW)  # the same tokenizer passes
        with pytest.raises(ValueError, match=r"^draft: .*tokenizer"):
            generate(a, PROMPT, method="simsd", draft=b, **KW)
    finally:
        a.tokenizer = b.tokenizer = None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "simsd", "draft": "other"}, "draft must be 'self'"),
        ({"method": "simsd", "draft": 3}, "draft must be a model"),
        ({"method": "simsd", "draft": "self", "graph": 4}, "graph is Spiffy's"),
        ({"method": "spiffy", "draft": "self", "graph": 4}, "draft is SimSD's"),
        ({"method": "vanilla", "graph": 4}, "takes no graph"),
        ({"method": "eagle"}, "method must be one of"),
        ({"method": "simsd", "draft": "self", "remasking": "low_confidence_dynamic",
          "threshold": 0.5}, "threshold"),
    ],
)  # fmt: skip
def test_bad_method_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny(), PROMPT, **{**KW, **kwargs})


@pytest.mark.parametrize("cache", [None, "prefix"])
def test_previous_forward_draft_needs_no_draft_forward(cache):
    """References from the target's previous forward of the block: with the SDAR cache the
    block-start forward's tokens are what the target at one step (`draft="self"`) proposes."""
    model = tiny()
    kwargs = dict(method="simsd", cache=cache, **KW)
    previous = generate(model, PROMPT, draft="previous", **kwargs)
    assert previous.stats.draft_forwards == 0 and previous.steps == 8
    assert previous.stats.draft == "previous forward"
    if cache == "prefix":
        self_draft = generate(model, PROMPT, draft="self", **kwargs)
        assert torch.equal(previous.tokens, self_draft.tokens)
    else:  # no tokens of the block seen yet: the first forward of each block commits one
        assert previous.stats.steps_per_forward[1] >= 2


def test_model_draft_cached_equals_uncached():
    """The draft's own SDAR cache changes its cost, not its proposals."""
    model = tiny()
    cached, uncached = ModelDraft(steps=2), ModelDraft(steps=2, cache=None)
    a = generate(model, PROMPT, method="simsd", draft=cached, **KW)
    b = generate(model, PROMPT, method="simsd", draft=uncached, **KW)
    assert torch.equal(a.tokens, b.tokens) and cached.forwards == uncached.forwards
    with pytest.raises(ValueError, match="steps"):
        ModelDraft(steps=0)
    with pytest.raises(ValueError, match="cache"):
        ModelDraft(cache="dual")


def test_benchmark_smoke(tmp_path):
    """benchmarks/simsd.py --smoke: every row, the exact ones identical to vanilla."""
    import json

    from benchmarks import simsd as bench

    bench.main(["--smoke", "--out", str(tmp_path)])
    rows = {r["method"]: r for r in json.loads((tmp_path / "simsd_smoke.json").read_text())["rows"]}
    simsd = {f"simsd ({d})" for d in ("self", "previous", "smoke")}
    exact = {f"simsd-exact ({d})" for d in ("self", "previous")}
    assert set(rows) == {"vanilla", "spiffy D=4"} | simsd | exact
    assert rows["vanilla"]["tokens_per_forward"] == 1.0  # one token per step, prefill included
    for exact in ("spiffy D=4", "simsd-exact (self)", "simsd-exact (previous)"):
        assert rows[exact]["tokens_identical"] == 1.0 and rows[exact]["prompts_identical"] == 1.0
    assert rows["simsd (smoke)"]["draft_forwards"] > 0
    with pytest.raises(SystemExit, match="not a bundled model"):
        bench.main(["--model", str(tmp_path / "absent")])


def test_on_the_bundled_trained_sdar_model():
    """On the trained block-causal model: the exact variant is vanilla, SimSD commits several
    tokens per forward. (The model lands with the change that trains it.)"""
    from spiffy_triton.models import load_model

    try:
        model = load_model("tiny-sdar", backend="torch")
    except FileNotFoundError as error:
        pytest.skip(f"tiny-sdar is not bundled in this checkout: {error}")
    ids = torch.tensor([model.tokenizer.encode("Q: 33+19+13=?\nA: ")])
    kwargs = dict(gen_length=32, block_length=model.config.block_size, cache="prefix")
    vanilla = generate(model, ids, backend="torch", **kwargs)
    exact = generate(model, ids, method="simsd-exact", draft="self", backend="torch", **kwargs)
    simsd = generate(model, ids, method="simsd", draft="previous", backend="torch", **kwargs)
    assert torch.equal(exact.tokens, vanilla.tokens) and exact.nfe < vanilla.nfe
    assert simsd.nfe < vanilla.nfe and simsd.steps == 32
