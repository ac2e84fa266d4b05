"""The interpreter's bf16 arithmetic is wrong without tests/bf16_shim.py and right with it."""

from __future__ import annotations

import bf16_shim
import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from utils import assert_close, interpreter_active

pytestmark = pytest.mark.skipif(
    not interpreter_active(), reason="the shim patches the Triton interpreter only"
)

BLOCK = 32


@triton.jit
def _elementwise_kernel(
    x_ptr, y_ptr, add_ptr, sub_ptr, mul_ptr, div_ptr, neg_ptr, pick_ptr, clamp_ptr, N: tl.constexpr
):
    offs = tl.arange(0, N)
    x = tl.load(x_ptr + offs)
    y = tl.load(y_ptr + offs)
    tl.store(add_ptr + offs, x + y)
    tl.store(sub_ptr + offs, x - y)
    tl.store(mul_ptr + offs, x * y)
    tl.store(div_ptr + offs, x / y)
    tl.store(neg_ptr + offs, -x)
    tl.store(pick_ptr + offs, tl.where(x < y, x, tl.maximum(x * 0.5, y)))
    tl.store(clamp_ptr + offs, tl.clamp(x, -0.5, 0.75))


@triton.jit
def _reduction_kernel(x_ptr, sum_ptr, argmax_ptr, cumsum_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    x = tl.load(x_ptr + offs)
    tl.store(sum_ptr, tl.sum(x, axis=0))
    tl.store(argmax_ptr, tl.argmax(x, axis=0))
    tl.store(cumsum_ptr + offs, tl.cumsum(x, axis=0))


@triton.jit
def _dot_kernel(a_ptr, b_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
    rm = tl.arange(0, M)
    rn = tl.arange(0, N)
    rk = tl.arange(0, K)
    a = tl.load(a_ptr + rm[:, None] * K + rk[None, :])
    b = tl.load(b_ptr + rk[:, None] * N + rn[None, :])
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], tl.dot(a, b))


@triton.jit
def _round_kernel(x_ptr, out_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs))  # fp32 -> bf16 store: round to nearest


def _inputs(seed: int, n: int = BLOCK):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen).to(torch.bfloat16)
    # y away from zero so that x / y is well conditioned; mixed signs on both.
    y = (torch.rand(n, generator=gen) + 0.5) * torch.sign(torch.randn(n, generator=gen))
    return x, y.to(torch.bfloat16)


def _run_elementwise(x, y):
    outs = [torch.empty_like(x) for _ in range(7)]
    _elementwise_kernel[(1,)](x, y, *outs, N=x.numel())
    expected = [x + y, x - y, x * y, x / y, -x, torch.where(x < y, x, torch.maximum(x * 0.5, y))]
    expected.append(x.clamp(-0.5, 0.75))
    return outs, expected


def _run_reductions(x):
    total = torch.empty(1, dtype=torch.bfloat16)
    argmax = torch.empty(1, dtype=torch.int32)
    cumsum = torch.empty_like(x)
    _reduction_kernel[(1,)](x, total, argmax, cumsum, N=x.numel())
    return total, argmax, cumsum


def _run_dot(seed: int):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(16, 32, generator=gen).to(torch.bfloat16)
    b = torch.randn(32, 16, generator=gen).to(torch.bfloat16)
    c = torch.empty(16, 16)
    _dot_kernel[(1,)](a, b, c, M=16, N=16, K=32)
    return c, a.double() @ b.double()


# ---- the bit conversions against torch ------------------------------------------------------


def test_fp32_to_bf16_rounds_like_torch():
    gen = torch.Generator().manual_seed(0)
    magnitudes = 10.0 ** torch.randint(-40, 38, (4096,), generator=gen)
    values = torch.cat(
        [
            torch.randn(4096, generator=gen) * magnitudes,
            # exact ties (round to even both ways), overflow to inf, subnormals, specials
            torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 3.3895e38, -3.3895e38]),
            torch.tensor([1e-40, -1e-40, 0.0, -0.0, float("inf"), -float("inf"), float("nan")]),
        ]
    ).float()
    ours = bf16_shim.fp32_to_bf16_bits(values.numpy())
    theirs = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    is_nan = np.isnan(values.numpy())
    # NaN payloads are not specified (torch may give 0xFFFF); a NaN must stay a NaN.
    assert np.isnan(bf16_shim.bf16_bits_to_fp32(ours[is_nan])).all()
    mismatch = np.flatnonzero((ours != theirs) & ~is_nan)
    assert mismatch.size == 0, (values[mismatch[:5]], ours[mismatch[:5]], theirs[mismatch[:5]])


def test_bf16_bits_widen_exactly():
    bits = np.arange(0, 1 << 16, dtype=np.uint16)
    ours = bf16_shim.bf16_bits_to_fp32(bits)
    theirs = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


# ---- kernels: wrong without the shim, right with it -----------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_elementwise_with_shim_matches_torch_bitwise(seed):
    x, y = _inputs(seed)
    with bf16_shim.installed():
        outs, expected = _run_elementwise(x, y)
    names = ["add", "sub", "mul", "div", "neg", "where/maximum", "clamp"]
    for out, ref, name in zip(outs, expected, names):
        # +, -, *, / computed in fp32 and rounded once are the correctly rounded bf16 result.
        assert torch.equal(out, ref), f"{name}: {out} != {ref}"


def test_elementwise_without_shim_is_wrong():
    x, y = _inputs(0)
    with bf16_shim.installed(False):
        outs, expected = _run_elementwise(x, y)
    names = ["add", "sub", "mul", "div", "neg", "where/maximum", "clamp"]
    for out, ref, name in zip(outs, expected, names):
        if name == "div":  # computed in fp32 by Triton's type promotion; only rounding differs
            continue
        assert not torch.allclose(out.float(), ref.float(), atol=0.1, rtol=0.1, equal_nan=True), (
            f"{name} was right without the shim: the interpreter bug this shim works around "
            "may be fixed upstream; re-check tests/bf16_shim.py"
        )


def test_reductions_with_shim():
    x, _ = _inputs(2)
    x[5] = -4.0  # the most negative element: argmax over raw bits would pick it
    x[9] = 3.5
    with bf16_shim.installed():
        total, argmax, cumsum = _run_reductions(x)
    assert int(argmax) == 9
    # The shim accumulates in fp32 and rounds each output once (the GPU accumulates in bf16 in
    # tree order, which is less accurate): compare with the exact sums at bf16 tolerance.
    assert_close(cumsum.float(), x.double().cumsum(0).float(), dtype=torch.bfloat16)
    assert_close(total.float(), x.double().sum().reshape(1).float(), dtype=torch.bfloat16)


def test_reductions_without_shim_are_wrong():
    x, _ = _inputs(2)
    x[5] = -4.0
    x[9] = 3.5
    with bf16_shim.installed(False):
        total, argmax, _ = _run_reductions(x)
    assert int(argmax) != 9
    assert not torch.allclose(total.float(), x.double().sum().float(), atol=0.5)


def test_dot_with_shim_matches_fp32_accumulation():
    with bf16_shim.installed():
        c, expected = _run_dot(3)
    assert_close(c, expected.float(), dtype=torch.float32, name="tl.dot(bf16, bf16)")


def test_dot_without_shim_is_wrong():
    with bf16_shim.installed(False):
        c, expected = _run_dot(3)
    assert not torch.allclose(c, expected.float(), atol=1.0, rtol=0.1)


def test_fp32_to_bf16_store_rounds_to_nearest_even():
    # 1 + 3 * 2^-9 lies 3/4 of the way from 1 + 2^-8 to 1 + 2^-7 in bf16: truncation gives
    # the lower neighbour, rounding the upper; 1 + 2^-8 (a tie) rounds to the even 1.0.
    x = torch.tensor([1.0 + 3 * 2**-9, 1.0 + 2**-8, -(1.0 + 3 * 2**-9), 3.3895e38] * 4)
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    with bf16_shim.installed():
        _round_kernel[(1,)](x, out, N=x.numel())
    assert torch.equal(out, x.to(torch.bfloat16)), (out, x.to(torch.bfloat16))


def test_install_is_idempotent_and_scoped():
    assert bf16_shim.is_installed()  # conftest installs it under the interpreter
    bf16_shim.install()
    with bf16_shim.installed(False):
        assert not bf16_shim.is_installed()
        with bf16_shim.installed():
            assert bf16_shim.is_installed()
        assert not bf16_shim.is_installed()
    assert bf16_shim.is_installed()
