"""graph_attention parity cases on any device: the Triton kernel against the PyTorch reference
(float64 copies of the same inputs), and bitwise packing invariance. No pytest here: the cases
run under pytest (tests/test_graph_attention.py) and in the standalone runner
(tests/parity_cases.py), on CPU tensors (Triton interpreter) or CUDA tensors (compiled).
"""

from __future__ import annotations

import random

import torch
from utils import assert_close

import spiffy_triton
from spiffy_triton import SegmentLayout
from spiffy_triton.layout import CAUSAL, FULL, NONE

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NUM_RANDOM_CASES = 200


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


def make_inputs(
    layout, *, batch, q_heads, kv_heads, head_dim, dtype, generator, strided=False, device="cpu"
):
    """q, k, v for `layout` on `device` (drawn on the CPU from `generator`, so every device
    gets the same values); with `strided`, non-contiguous views of a wider storage."""

    def one(heads, rows):
        if not strided:
            values = torch.randn(batch, heads, rows, head_dim, generator=generator)
            return values.to(device=device, dtype=dtype)
        # [B, rows, heads, 2 * d] storage, viewed as [B, heads, rows, d] every other column
        base = torch.randn(batch, rows, heads, 2 * head_dim, generator=generator)
        return base.to(device=device, dtype=dtype).transpose(1, 2)[..., ::2]

    return (
        one(q_heads, layout.num_q_rows),
        one(kv_heads, layout.num_k_rows),
        one(kv_heads, layout.num_k_rows),
    )


def check_parity(q, k, v, layout, *, scale=None, name=""):
    """Kernel vs the reference run on float64 copies of the same inputs (same device)."""
    out, lse = spiffy_triton.graph_attention(
        q, k, v, layout, scale=scale, return_lse=True, backend="triton"
    )
    expected, expected_lse = spiffy_triton.graph_attention(
        q.double(), k.double(), v.double(), layout, scale=scale, return_lse=True, backend="torch"
    )
    assert out.dtype == q.dtype and out.shape == q.shape and out.is_contiguous()
    assert out.device == q.device and lse.device == q.device
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    assert_close(out, expected.to(q.dtype), dtype=q.dtype, name=f"{name} out")
    # lse is accumulated in fp32 from the same inputs: fp32 tolerance for every input dtype
    assert_close(lse, expected_lse, dtype=torch.float32, name=f"{name} lse")
    return out, lse


# ---- the cases: each takes its parameters and device=, raises AssertionError on a mismatch ----


def random_case(seed: int, *, device: str) -> None:
    """Random segment layouts, sizes, GQA ratios, strides, dtypes and scales."""
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
        device=device,
    )
    scale = rng.choice((None, None, 0.05, 0.5))
    check_parity(q, k, v, layout, scale=scale, name=f"case {seed} {layout} {dtype} d={head_dim}")


def small_tiles_case(seed: int, *, device: str) -> None:
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
        device=device,
    )
    config = KernelConfig(16, 16, heads_per_tile, num_warps=4, num_stages=1)
    out, lse = _forward(q, k, v, layout, 0.25, True, config)
    expected, expected_lse = spiffy_triton.graph_attention(
        q.double(), k.double(), v.double(), layout, scale=0.25, return_lse=True, backend="torch"
    )
    assert_close(out, expected.to(dtype), dtype=dtype, name="out")
    assert_close(lse, expected_lse, dtype=torch.float32, name="lse")


def head_dim_case(head_dim: int, dtype: torch.dtype, *, device: str) -> None:
    """The shipped head dims (64, 128) with GQA on a Spiffy layout."""
    gen = torch.Generator().manual_seed(head_dim)
    layout = SegmentLayout.spiffy(50, 16, 30, 3)
    q, k, v = make_inputs(
        layout,
        batch=1,
        q_heads=4,
        kv_heads=2,
        head_dim=head_dim,
        dtype=dtype,
        generator=gen,
        device=device,
    )
    check_parity(q, k, v, layout, name=f"d={head_dim} {dtype}")


def spiffy_case(num_drafts: int, cached: bool, *, device: str) -> None:
    rng = random.Random(num_drafts)
    gen = torch.Generator().manual_seed(num_drafts)
    prefix, block, suffix = rng.choice((0, 23, 70)), rng.choice((4, 8, 13)), rng.choice((0, 9, 40))
    layout = SegmentLayout.spiffy(prefix, block, suffix, num_drafts, cached=cached)
    q, k, v = make_inputs(
        layout,
        batch=1,
        q_heads=2,
        kv_heads=rng.choice((1, 2)),
        head_dim=16,
        dtype=DTYPES[num_drafts % 3],
        generator=gen,
        device=device,
    )
    check_parity(q, k, v, layout, name=f"spiffy D={num_drafts} cached={cached}")


def verify_shape_case(context: int, num_drafts: int, *, device: str) -> None:
    """A Spiffy verify shape of LLaDA-8B (dual cache, block 32, 32 heads, d 128, bf16) with
    strided q/k/v views as the model hands them over: the GPU's real tile configuration."""
    gen = torch.Generator().manual_seed(context + num_drafts)
    layout = SegmentLayout.spiffy(context // 2, 32, context - context // 2, num_drafts, cached=True)
    q, k, v = make_inputs(
        layout,
        batch=1,
        q_heads=32,
        kv_heads=32,
        head_dim=128,
        dtype=torch.bfloat16,
        generator=gen,
        strided=True,
        device=device,
    )
    check_parity(q, k, v, layout, name=f"verify C={context} D={num_drafts}")


def _parity_in_every_dtype(layout, seed: int, name: str, *, device: str, **shape) -> None:
    """`check_parity` on `layout` once per dtype, inputs drawn from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    for dtype in DTYPES:
        q, k, v = make_inputs(layout, dtype=dtype, generator=gen, device=device, **shape)
        check_parity(q, k, v, layout, name=f"{name} {dtype}")


def block_causal_case(blocks: tuple[int, ...], *, device: str) -> None:
    layout = SegmentLayout.block_causal(list(blocks))
    _parity_in_every_dtype(
        layout,
        len(blocks),
        f"block_causal {blocks}",
        device=device,
        batch=2,
        q_heads=4,
        kv_heads=1,
        head_dim=32,
    )


def simsd_case(context, committed: int, block_len: int, cached: bool, *, device: str) -> None:
    """SimSD's verify layout (`SegmentLayout.simsd`) runs the kernel unchanged."""
    layout = SegmentLayout.simsd(context, committed, block_len, cached=cached)
    _parity_in_every_dtype(
        layout,
        block_len + committed,
        f"simsd c={committed} cached={cached}",
        device=device,
        batch=1,
        q_heads=4,
        kv_heads=2,
        head_dim=16,
    )


def masked_rows_case(backend: str, *, device: str) -> None:
    """Rows whose layout lets them see no key: zeros and lse = -inf."""
    layout = SegmentLayout([3, 5, 2], [4, 6], [[1, 0], [0, 0], [2, 1]])
    gen = torch.Generator().manual_seed(0)
    q, k, v = make_inputs(
        layout,
        batch=1,
        q_heads=2,
        kv_heads=1,
        head_dim=16,
        dtype=torch.float32,
        generator=gen,
        device=device,
    )
    out, lse = spiffy_triton.graph_attention(q, k, v, layout, return_lse=True, backend=backend)
    assert torch.equal(out[:, :, 3:8], torch.zeros_like(out[:, :, 3:8]))
    assert torch.isneginf(lse[:, :, 3:8]).all()
    assert torch.isfinite(lse[:, :, :3]).all() and torch.isfinite(lse[:, :, 8:]).all()


def unseen_keys_case(backend: str, *, device: str) -> None:
    """NaN in key segments nobody sees must not reach the output (those tiles are skipped)."""
    layout = SegmentLayout.spiffy(40, 8, 20, 4, cached=True)
    gen = torch.Generator().manual_seed(1)
    q, k, v = make_inputs(
        layout,
        batch=1,
        q_heads=2,
        kv_heads=2,
        head_dim=16,
        dtype=torch.float16,
        generator=gen,
        device=device,
    )
    visibility = layout.visibility.clone()
    visibility[3, 5] = NONE  # drop draft 2 from the layout: nobody sees its keys, poisoned here
    blind = SegmentLayout(layout.q_lengths, layout.k_lengths, visibility)
    start = blind.k_starts[5]
    clean = spiffy_triton.graph_attention(q, k, v, blind, backend=backend)
    k[:, :, start : start + 8] = float("nan")
    v[:, :, start : start + 8] = float("nan")
    out = spiffy_triton.graph_attention(q, k, v, blind, backend=backend)
    assert torch.isfinite(out.float()).all()
    assert torch.equal(out, clean)


def packing_invariance_case(backend: str, dtype: torch.dtype, cached: bool, *, device: str):
    """A draft alone (D=1), packed among D=7 drafts, and evaluated as the root: same bits.

    Measured on CPU: bitwise equal on both backends (interpreter and PyTorch), all three
    dtypes. The kernel visits the same aligned key tiles in the same order for the draft's rows
    in every case, and tiles a row cannot see add exact zeros.
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

    def pack(parts):
        return torch.cat(parts, dim=2).to(device=device, dtype=dtype)

    def evaluate(root_part, draft_parts):
        layout = SegmentLayout.spiffy(prefix, block, suffix, len(draft_parts), cached=cached)
        real_q = [root_part[0]] if cached else [ctx_q[0], root_part[0], ctx_q[1]]
        q = pack(real_q + [x[0] for x in draft_parts])
        k = pack([ctx_k[0], root_part[1], ctx_k[1]] + [x[1] for x in draft_parts])
        v = pack([ctx_v[0], root_part[2], ctx_v[1]] + [x[2] for x in draft_parts])
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
