"""graph_attention: Triton kernel (interpreter) and PyTorch reference, in lock-step.

- the reference against plain dense-mask attention written out here (float64);
- the kernel against the reference over 200+ random layouts, sizes, GQA ratios, strides, dtypes;
- Spiffy (cached / uncached, D = 0..16) and block-causal layouts;
- packing invariance (a draft alone vs inside a pack of D drafts), measured per backend;
- every bad input, with the same message from both backends.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from utils import assert_close

import spiffy_triton
from spiffy_triton import SegmentLayout
from spiffy_triton.layout import CAUSAL, FULL, NONE

BACKENDS = ("torch", "triton")


def dense_attention(q, k, v, mask, scale):
    """Textbook masked attention in float64 with GQA by repeating k/v heads."""
    group = q.shape[1] // k.shape[1]
    qd, kd, vd = (t.double() for t in (q, k, v))
    kd, vd = kd.repeat_interleave(group, 1), vd.repeat_interleave(group, 1)
    scores = (qd @ kd.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return probs @ vd, lse


def random_layout(rng: random.Random, max_segments=5, max_len=40) -> SegmentLayout:
    while True:
        q_lengths = [
            rng.choice((0, rng.randint(1, max_len))) for _ in range(rng.randint(1, max_segments))
        ]
        k_lengths = [
            rng.choice((0, rng.randint(1, max_len))) for _ in range(rng.randint(1, max_segments))
        ]
        if sum(q_lengths) and sum(k_lengths):
            break
    weights = rng.choice(((1, 1, 1), (1, 3, 1), (3, 1, 1), (1, 1, 3)))
    visibility = [
        [rng.choices((NONE, FULL, CAUSAL), weights)[0] for _ in k_lengths] for _ in q_lengths
    ]
    key_order = [rng.randint(0, 2) for _ in k_lengths] if rng.random() < 0.3 else None
    return SegmentLayout(q_lengths, k_lengths, visibility, key_order=key_order)


def make_inputs(layout, *, batch, q_heads, kv_heads, head_dim, dtype, generator, strided=False):
    """q, k, v for `layout`; with `strided`, non-contiguous views (permuted / sliced storage)."""

    def one(heads, rows):
        if not strided:
            return torch.randn(batch, heads, rows, head_dim, generator=generator).to(dtype)
        # [B, rows, heads, 2 * d] storage, viewed as [B, heads, rows, d] every other column
        base = torch.randn(batch, rows, heads, 2 * head_dim, generator=generator).to(dtype)
        return base.transpose(1, 2)[..., ::2]

    return (
        one(q_heads, layout.num_q_rows),
        one(kv_heads, layout.num_k_rows),
        one(kv_heads, layout.num_k_rows),
    )


# ---- the reference against the textbook formula --------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_reference_matches_dense_formula(seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    layout = random_layout(rng, max_len=12)
    kv_heads = rng.choice((1, 2))
    q_heads = kv_heads * rng.choice((1, 2, 3))
    q, k, v = make_inputs(
        layout,
        batch=2,
        q_heads=q_heads,
        kv_heads=kv_heads,
        head_dim=8,
        dtype=torch.float64,
        generator=gen,
        strided=rng.random() < 0.5,
    )
    scale = rng.choice((None, 0.3))
    out, lse = spiffy_triton.graph_attention(
        q, k, v, layout, scale=scale, return_lse=True, backend="torch"
    )
    expected, expected_lse = dense_attention(q, k, v, layout.to_dense(), scale or 1 / math.sqrt(8))
    assert out.dtype == torch.float64 and lse.dtype == torch.float32
    assert_close(out, expected, name="out")
    assert_close(lse, expected_lse.float(), dtype=torch.float32, name="lse")


# ---- kernel vs reference: random layouts ----------------------------------------------------

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NUM_RANDOM_CASES = 200


def check_parity(q, k, v, layout, *, scale=None, name=""):
    """Kernel (interpreter) vs the reference run on float64 copies of the same inputs."""
    out, lse = spiffy_triton.graph_attention(
        q, k, v, layout, scale=scale, return_lse=True, backend="triton"
    )
    expected, expected_lse = spiffy_triton.graph_attention(
        q.double(), k.double(), v.double(), layout, scale=scale, return_lse=True, backend="torch"
    )
    assert out.dtype == q.dtype and out.shape == q.shape and out.is_contiguous()
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    assert_close(out, expected.to(q.dtype), dtype=q.dtype, name=f"{name} out")
    # lse is accumulated in fp32 from the same inputs: fp32 tolerance for every input dtype
    assert_close(lse, expected_lse, dtype=torch.float32, name=f"{name} lse")
    return out, lse


@pytest.mark.parametrize("seed", range(NUM_RANDOM_CASES))
def test_kernel_matches_reference_random(seed):
    rng = random.Random(10_000 + seed)
    gen = torch.Generator().manual_seed(seed)
    layout = random_layout(rng)
    dtype = DTYPES[seed % 3]
    kv_heads = rng.choice((1, 2))
    q_heads = kv_heads * rng.choice((1, 2, 3, 4, 8))
    head_dim = rng.choice((16, 16, 32, 32, 64, 24))
    q, k, v = make_inputs(
        layout,
        batch=rng.choice((1, 2)),
        q_heads=q_heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=dtype,
        generator=gen,
        strided=rng.random() < 0.4,
    )
    scale = rng.choice((None, None, 0.05, 0.5))
    check_parity(q, k, v, layout, scale=scale, name=f"case {seed} {layout} {dtype} d={head_dim}")


@pytest.mark.parametrize("seed", range(24))
def test_kernel_small_tiles_match_reference(seed):
    """Small tiles: many query tiles spanning several segments, many partial key tiles."""
    from spiffy_triton.kernels.graph_attention import KernelConfig, _forward

    rng = random.Random(20_000 + seed)
    gen = torch.Generator().manual_seed(seed)
    layout = random_layout(rng, max_segments=6, max_len=30)
    dtype = DTYPES[seed % 3]
    group = rng.choice((1, 2, 4))
    heads_per_tile = rng.choice([h for h in (1, 2, 4) if group % h == 0])
    q, k, v = make_inputs(
        layout,
        batch=1,
        q_heads=2 * group,
        kv_heads=2,
        head_dim=16,
        dtype=dtype,
        generator=gen,
        strided=seed % 2 == 1,
    )
    config = KernelConfig(16, 16, heads_per_tile, num_warps=4, num_stages=1)
    out, lse = _forward(q, k, v, layout, 0.25, True, config)
    expected, expected_lse = spiffy_triton.graph_attention(
        q.double(), k.double(), v.double(), layout, scale=0.25, return_lse=True, backend="torch"
    )
    assert_close(out, expected.to(dtype), dtype=dtype, name="out")
    assert_close(lse, expected_lse, dtype=torch.float32, name="lse")


# ---- shipped head dims, Spiffy and block-causal layouts --------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_shipped_head_dims(head_dim, dtype):
    gen = torch.Generator().manual_seed(head_dim)
    layout = SegmentLayout.spiffy(50, 16, 30, 3)
    q, k, v = make_inputs(
        layout, batch=1, q_heads=4, kv_heads=2, head_dim=head_dim, dtype=dtype, generator=gen
    )
    check_parity(q, k, v, layout, name=f"d={head_dim} {dtype}")


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("num_drafts", range(17))
def test_spiffy_layouts(num_drafts, cached):
    rng = random.Random(num_drafts)
    gen = torch.Generator().manual_seed(num_drafts)
    prefix, block, suffix = rng.choice((0, 23, 70)), rng.choice((4, 8, 13)), rng.choice((0, 9, 40))
    layout = SegmentLayout.spiffy(prefix, block, suffix, num_drafts, cached=cached)
    dtype = DTYPES[num_drafts % 3]
    q, k, v = make_inputs(
        layout,
        batch=1,
        q_heads=2,
        kv_heads=rng.choice((1, 2)),
        head_dim=16,
        dtype=dtype,
        generator=gen,
    )
    check_parity(q, k, v, layout, name=f"spiffy D={num_drafts} cached={cached}")


@pytest.mark.parametrize("blocks", [[4, 4, 4, 4], [32, 32, 32], [5, 17, 3, 40], [1], [70, 0, 9]])
def test_block_causal_layouts(blocks):
    gen = torch.Generator().manual_seed(len(blocks))
    layout = SegmentLayout.block_causal(blocks)
    for dtype in DTYPES:
        q, k, v = make_inputs(
            layout, batch=2, q_heads=4, kv_heads=1, head_dim=32, dtype=dtype, generator=gen
        )
        check_parity(q, k, v, layout, name=f"block_causal {blocks} {dtype}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_that_see_nothing_give_zeros_and_minus_inf(backend):
    layout = SegmentLayout([3, 5, 2], [4, 6], [[1, 0], [0, 0], [2, 1]])
    gen = torch.Generator().manual_seed(0)
    q, k, v = make_inputs(
        layout, batch=1, q_heads=2, kv_heads=1, head_dim=16, dtype=torch.float32, generator=gen
    )
    out, lse = spiffy_triton.graph_attention(q, k, v, layout, return_lse=True, backend=backend)
    assert torch.equal(out[:, :, 3:8], torch.zeros_like(out[:, :, 3:8]))
    assert torch.isneginf(lse[:, :, 3:8]).all()
    assert torch.isfinite(lse[:, :, :3]).all() and torch.isfinite(lse[:, :, 8:]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_keys_no_row_sees_are_never_read(backend):
    """NaN in key segments nobody sees must not reach the output (those tiles are skipped)."""
    layout = SegmentLayout.spiffy(40, 8, 20, 4, cached=True)
    gen = torch.Generator().manual_seed(1)
    q, k, v = make_inputs(
        layout, batch=1, q_heads=2, kv_heads=2, head_dim=16, dtype=torch.float16, generator=gen
    )
    # drop draft 2 from the layout: nobody sees its keys, which we poison
    visibility = layout.visibility.clone()
    visibility[3, 5] = NONE
    blind = SegmentLayout(layout.q_lengths, layout.k_lengths, visibility)
    start = blind.k_starts[5]
    clean = spiffy_triton.graph_attention(q, k, v, blind, backend=backend)
    k[:, :, start : start + 8] = float("nan")
    v[:, :, start : start + 8] = float("nan")
    out = spiffy_triton.graph_attention(q, k, v, blind, backend=backend)
    assert torch.isfinite(out.float()).all()
    assert torch.equal(out, clean)


# ---- packing invariance ---------------------------------------------------------------------


def _pack(parts, dtype):
    return torch.cat(parts, dim=2).to(dtype)


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_packing_invariance_is_bitwise(backend, dtype, cached):
    """A draft alone (D=1), packed among D=7 drafts, and evaluated as the root: same bits.

    Measured: bitwise equal on both backends (interpreter and PyTorch CPU), all three dtypes.
    The kernel visits the same aligned key tiles in the same order for the draft's rows in
    every case, and tiles a row cannot see add exact zeros.
    """
    gen = torch.Generator().manual_seed(7)
    prefix, block, suffix, heads, kv_heads, d = 45, 8, 13, 4, 2, 32

    def rows(h, n):
        return torch.randn(1, h, n, d, generator=gen)

    ctx_q = [rows(heads, prefix), rows(heads, suffix)]
    ctx_k = [rows(kv_heads, prefix), rows(kv_heads, suffix)]
    ctx_v = [rows(kv_heads, prefix), rows(kv_heads, suffix)]
    root = (rows(heads, block), rows(kv_heads, block), rows(kv_heads, block))
    drafts = [(rows(heads, block), rows(kv_heads, block), rows(kv_heads, block)) for _ in range(7)]
    target = 4

    def evaluate(root_part, draft_parts):
        layout = SegmentLayout.spiffy(prefix, block, suffix, len(draft_parts), cached=cached)
        real_q = [root_part[0]] if cached else [ctx_q[0], root_part[0], ctx_q[1]]
        q = _pack(real_q + [x[0] for x in draft_parts], dtype)
        k = _pack([ctx_k[0], root_part[1], ctx_k[1]] + [x[1] for x in draft_parts], dtype)
        v = _pack([ctx_v[0], root_part[2], ctx_v[1]] + [x[2] for x in draft_parts], dtype)
        out = spiffy_triton.graph_attention(q, k, v, layout, backend=backend)
        real_rows = block if cached else prefix + block + suffix
        root_start = 0 if cached else prefix
        return out[:, :, root_start : root_start + block], out[:, :, real_rows:]

    _, alone = evaluate(root, [drafts[target]])
    _, packed = evaluate(root, drafts)
    as_root, _ = evaluate(drafts[target], [])
    packed = packed[:, :, target * block : (target + 1) * block]
    assert torch.equal(alone, packed), (alone.float() - packed.float()).abs().max()
    assert torch.equal(as_root, packed), (as_root.float() - packed.float()).abs().max()


# ---- bad input ------------------------------------------------------------------------------


def _good_inputs():
    layout = SegmentLayout.spiffy(6, 4, 2, 1)
    q = torch.randn(1, 4, layout.num_q_rows, 16)
    k = torch.randn(1, 2, layout.num_k_rows, 16)
    return layout, q, k, k.clone()


BAD_INPUTS = {
    "q not a tensor": (
        lambda L, q, k, v: (q.tolist(), k, v, L, {}),
        TypeError,
        "q must be a torch.Tensor",
    ),
    "q 3-D": (lambda L, q, k, v: (q[0], k, v, L, {}), ValueError, "q must be 4-D"),
    "layout wrong type": (
        lambda L, q, k, v: (q, k, v, L.to_dense(), {}),
        TypeError,
        "layout must be a spiffy_triton.SegmentLayout",
    ),
    "int dtype": (
        lambda L, q, k, v: (q.int(), k.int(), v.int(), L, {}),
        TypeError,
        "q must be float16, bfloat16, float32 or float64",
    ),
    "mixed dtype": (
        lambda L, q, k, v: (q, k.half(), v, L, {}),
        TypeError,
        "q, k, v must share one dtype",
    ),
    "k v shapes": (
        lambda L, q, k, v: (q, k, v[:, :, :-1], L, {}),
        ValueError,
        "k and v must have the same shape",
    ),
    "batch": (
        lambda L, q, k, v: (q, k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1), L, {}),
        ValueError,
        "k has batch 2, q has batch 1",
    ),
    "head dim": (
        lambda L, q, k, v: (q, k[..., :8], v[..., :8], L, {}),
        ValueError,
        "k/v head_dim 8 != q head_dim 16",
    ),
    "gqa ratio": (
        lambda L, q, k, v: (q[:, :3], k, v, L, {}),
        ValueError,
        r"q heads \(3\) must be a positive multiple of k/v heads \(2\)",
    ),
    "q rows": (
        lambda L, q, k, v: (q[:, :, :-1], k, v, L, {}),
        ValueError,
        "q has 19 rows .* layout.num_q_rows is 16|q has 15 rows",
    ),
    "k rows": (
        lambda L, q, k, v: (q, k[:, :, 1:], v[:, :, 1:], L, {}),
        ValueError,
        "k/v have 15 rows .* layout.num_k_rows is 16",
    ),
    "scale nan": (
        lambda L, q, k, v: (q, k, v, L, {"scale": float("nan")}),
        ValueError,
        "scale must be finite and > 0",
    ),
    "scale zero": (
        lambda L, q, k, v: (q, k, v, L, {"scale": 0.0}),
        ValueError,
        "scale must be finite and > 0",
    ),
    "scale str": (
        lambda L, q, k, v: (q, k, v, L, {"scale": "1"}),
        TypeError,
        "scale must be a real number or None",
    ),
    "return_lse": (
        lambda L, q, k, v: (q, k, v, L, {"return_lse": 1}),
        TypeError,
        "return_lse must be a bool",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_same_error_on_both_backends(case):
    build, error, match = BAD_INPUTS[case]
    messages = []
    for backend in BACKENDS:
        q, k, v, layout, kwargs = build(*_good_inputs())
        with pytest.raises(error, match=match) as info:
            spiffy_triton.graph_attention(q, k, v, layout, backend=backend, **kwargs)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_kernel_only_limits():
    layout, q, k, v = _good_inputs()
    with pytest.raises(TypeError, match="the Triton kernel takes float16, bfloat16 or float32"):
        spiffy_triton.graph_attention(q.double(), k.double(), v.double(), layout, backend="triton")
    spiffy_triton.graph_attention(q.double(), k.double(), v.double(), layout, backend="torch")
    big = torch.randn(1, 2, layout.num_q_rows, 160)
    kbig = torch.randn(1, 2, layout.num_k_rows, 160)
    with pytest.raises(ValueError, match="the Triton kernel takes head_dim <= 128"):
        spiffy_triton.graph_attention(big, kbig, kbig, layout, backend="triton")


def test_empty_batch():
    layout, q, k, v = _good_inputs()
    for backend in BACKENDS:
        out = spiffy_triton.graph_attention(q[:0], k[:0], v[:0], layout, backend=backend)
        assert out.shape == (0, 4, layout.num_q_rows, 16)
