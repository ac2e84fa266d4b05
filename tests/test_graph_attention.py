"""graph_attention: Triton kernel and PyTorch reference, in lock-step.

- the reference against plain dense-mask attention written out here (float64);
- the kernel against the reference over 200+ random layouts, sizes, GQA ratios, strides, dtypes,
  Spiffy (cached / uncached, D = 0..16) and block-causal layouts, and packing invariance (a
  draft alone vs inside a pack of D drafts): the cases of tests/parity_attention.py, on CPU
  tensors (interpreter) and on CUDA tensors when a GPU is present;
- every bad input, with the same message from both backends.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from parity_attention import NUM_RANDOM_CASES, make_inputs, random_layout
from parity_cases import cases_of
from utils import assert_close, parity_params

import spiffy_triton
from spiffy_triton import SegmentLayout

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


# ---- kernel vs reference on every device (the shared cases of tests/parity_attention.py) ----


@pytest.mark.parametrize("case, device", parity_params(cases_of("attention")))
def test_attention_parity(case, device):
    """Random layouts (dtypes, GQA, strides, scales), small tiles, head dims 64 / 128, Spiffy
    layouts D = 0..16, verify shapes (CUDA), block-causal layouts, rows that see nothing, keys
    nobody sees, and bitwise packing invariance: kernel vs reference, on CPU and CUDA."""
    case.run(device)


def test_parity_cases_cover_the_contract():
    names = [c.name for c in cases_of("attention")]
    assert sum(n.startswith("random-") for n in names) == NUM_RANDOM_CASES
    assert {"head_dim-64-bfloat16", "head_dim-128-float16", "head_dim-128-float32"} <= set(names)
    assert sum(n.startswith("packing-triton") for n in names) == 6
    assert sum(n.startswith("simsd-") for n in names) == 2  # SimSD verify layouts


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
