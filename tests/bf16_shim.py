"""Test-only shim: make the Triton interpreter compute bfloat16 arithmetic in float32.

The interpreter (``triton/runtime/interpreter.py``) runs kernels on numpy arrays, and numpy
has no bfloat16, so bf16 values are stored as their raw ``uint16`` bit patterns. Every
operation that does arithmetic on the data then works on the bits, not on the numbers:
``a + b`` adds two integers, ``tl.dot`` multiplies bit patterns, ``tl.sum`` and ``tl.max``
reduce integers (negative numbers compare as large), ``exp`` sees a huge integer, and even
an fp32 -> bf16 cast truncates instead of rounding to nearest even as the GPU does.

It also computes ``tl.dot`` (every dtype) with a loop whose rounding does not depend on a
row's place in the tile, as on a GPU (see `_dot`).

This shim wraps the few places where the interpreter touches bf16 data (the builder's
binary / unary / ternary / dot / fma / cast operations and the fast paths of reductions and
scans): bf16 operands are widened to float32 (exact), the operation runs in float32, and a
bf16 result is rounded back to bf16 with round-to-nearest-even. For +, -, *, / and sqrt
this gives exactly the correctly rounded bf16 result the GPU computes (float32 has more than
twice bf16's precision, so the double rounding is harmless); fma, transcendental functions
and reductions can differ from the GPU in the last bf16 bit, as they do on hardware between
implementations.

The shim only patches the interpreter; compiled kernels are unaffected. The test suite
installs it from ``tests/conftest.py`` when the interpreter is active. Use `installed()` to
scope it, `install()` / `uninstall()` to toggle it.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import triton.language as tl
from triton.runtime import interpreter as _interp

_BF16_NP = np.dtype(np.uint16)
_originals: dict[tuple[type, str], object] = {}


def bf16_bits_to_fp32(bits: np.ndarray) -> np.ndarray:
    """Widen bf16 bit patterns (uint16) to the float32 values they encode (exact)."""
    wide = np.asarray(bits).astype(np.uint16).astype(np.uint32) << np.uint32(16)
    return wide.view(np.float32)


def fp32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bf16 bit patterns, round-to-nearest-even (NaN stays NaN)."""
    values = np.asarray(values, dtype=np.float32)
    bits = values.view(np.uint32).astype(np.uint64)  # 64-bit: the rounding add cannot wrap
    lsb = (bits >> np.uint64(16)) & np.uint64(1)
    rounded = (bits + np.uint64(0x7FFF) + lsb) >> np.uint64(16)
    quiet_nan = (bits >> np.uint64(16)) | np.uint64(0x0040)
    return np.where(np.isnan(values), quiet_nan, rounded).astype(np.uint16)


def _is_bf16(handle) -> bool:
    return handle.dtype.scalar == tl.bfloat16


def _to_fp32(handle) -> _interp.TensorHandle:
    """A bf16 handle as a float32 handle; other dtypes unchanged."""
    if not _is_bf16(handle):
        return handle
    return _interp.TensorHandle(bf16_bits_to_fp32(handle.data), tl.float32)


def _fp32_values(handle) -> np.ndarray:
    """The float32 values of a handle of any numeric dtype."""
    if _is_bf16(handle):
        return bf16_bits_to_fp32(handle.data)
    return np.asarray(handle.data).astype(np.float32)


def _round_result(result, want_bf16: bool):
    """Round a float32 result handle back to bf16 when the op's result type is bf16."""
    if want_bf16 and result.data.dtype == np.float32:
        return _interp.TensorHandle(fp32_to_bf16_bits(result.data), tl.bfloat16)
    if want_bf16:  # comparisons: boolean data, keep the operand dtype as the original does
        return _interp.TensorHandle(result.data, tl.bfloat16)
    return result


# ---- builder operations (methods of InterpreterBuilder) -------------------------------------


def _binary_op(original, self, lhs, rhs, op):
    if not (_is_bf16(lhs) or _is_bf16(rhs)):
        return original(self, lhs, rhs, op)
    return _round_result(original(self, _to_fp32(lhs), _to_fp32(rhs), op), _is_bf16(lhs))


def _unary_op(original, self, arg, *args):
    if not _is_bf16(arg):
        return original(self, arg, *args)
    return _round_result(original(self, _to_fp32(arg), *args), True)


def _clampf(original, self, arg, lo, hi, propagate_nans):
    if not _is_bf16(arg):
        return original(self, arg, lo, hi, propagate_nans)
    widened = original(self, _to_fp32(arg), _to_fp32(lo), _to_fp32(hi), propagate_nans)
    return _round_result(widened, True)


def _fma(original, self, x, y, z):
    if not _is_bf16(z):
        return original(self, x, y, z)
    return _round_result(original(self, _to_fp32(x), _to_fp32(y), _to_fp32(z)), True)


def _dot(original, self, a, b, d, input_precision, max_num_imprecise_acc):
    if a.dtype.scalar.primitive_bitwidth == 8 or b.dtype.scalar.primitive_bitwidth == 8:
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)  # fp8: as is
    a, b, acc = _to_fp32(a), _to_fp32(b), _to_fp32(d)
    # The interpreter's np.matmul goes to the BLAS, whose micro-kernels round a row's dot
    # products differently depending on where the row sits in the tile (OpenBLAS's Haswell
    # kernels do; measured: 4e-7 in fp32). A GPU's MMA does not, and the kernel's bitwise
    # packing invariance rests on that: einsum's own loop computes every row the same way.
    dtype = acc.data.dtype
    product = np.einsum(
        "...ik,...kj->...ij", a.data.astype(dtype), b.data.astype(dtype), optimize=False
    )
    return _round_result(_interp.TensorHandle(product + acc.data, acc.dtype.scalar), _is_bf16(d))


def _cast_impl(original, self, src, dst_type):
    src_bf16 = _is_bf16(src)
    dst_bf16 = dst_type.scalar == tl.bfloat16
    if src_bf16 == dst_bf16:
        return original(self, src, dst_type)
    if dst_bf16:
        return _interp.TensorHandle(fp32_to_bf16_bits(_fp32_values(src)), tl.bfloat16)
    widened = _to_fp32(src)
    if dst_type.scalar == tl.float32:
        return widened
    return original(self, widened, dst_type)


_BUILDER_PATCHES = {
    "binary_op": _binary_op,
    "unary_op": _unary_op,
    "create_erf": _unary_op,
    "create_rsqrt": _unary_op,
    "create_clampf": _clampf,
    "create_fma": _fma,
    "create_dot": _dot,
    "cast_impl": _cast_impl,
}

# ---- reduction and scan fast paths (numpy on the raw data) ----------------------------------


def _reduce_sum(original, self, input):
    if input.dtype.scalar != tl.bfloat16:
        return original(self, input)
    total = np.sum(bf16_bits_to_fp32(input.handle.data), axis=self.axis, keepdims=self.keep_dims)
    return self.to_tensor(fp32_to_bf16_bits(total), input.dtype)


def _reduce_min_max(original, self, input, val_reduce_op, idx_reduce_op=None):
    value = input[0] if isinstance(input, tuple) else input
    if value.dtype.scalar != tl.bfloat16:
        return original(self, input, val_reduce_op, idx_reduce_op)
    # Reduce the float values; they are exact bf16 values, so rounding back is exact.
    widened = tl.core.tensor(_to_fp32(value.handle), value.type.with_element_ty(tl.float32))
    result = original(self, widened, val_reduce_op, idx_reduce_op)
    results = result if isinstance(result, tuple) else (result,)
    fixed = tuple(
        self.to_tensor(fp32_to_bf16_bits(r.handle.data), value.dtype)
        if r.handle.data.dtype == np.float32
        else r
        for r in results
    )
    return fixed if isinstance(result, tuple) else fixed[0]


def _scan(numpy_scan):
    def patched(original, self, input):
        if input.dtype.scalar != tl.bfloat16:
            return original(self, input)
        values = numpy_scan(bf16_bits_to_fp32(input.handle.data), axis=self.axis)
        return [self.to_tensor(fp32_to_bf16_bits(values), input.dtype)]

    return patched


_REDUCE_PATCHES = {"sum": _reduce_sum, "min_max": _reduce_min_max}
_SCAN_PATCHES = {"cumsum": _scan(np.cumsum), "cumprod": _scan(np.cumprod)}


def _patch(cls: type, name: str, wrapper) -> None:
    original = cls.__dict__[name]
    _originals[(cls, name)] = original

    @functools.wraps(original)
    def patched(self, *args, **kwargs):
        return wrapper(original, self, *args, **kwargs)

    setattr(cls, name, patched)


def is_installed() -> bool:
    return bool(_originals)


def install() -> None:
    """Patch the interpreter (idempotent)."""
    if is_installed():
        return
    for name, wrapper in _BUILDER_PATCHES.items():
        _patch(_interp.InterpreterBuilder, name, wrapper)
    for name, wrapper in _REDUCE_PATCHES.items():
        _patch(_interp.ReduceOps, name, wrapper)
    for name, wrapper in _SCAN_PATCHES.items():
        _patch(_interp.ScanOps, name, wrapper)


def uninstall() -> None:
    """Restore the interpreter's own operations."""
    while _originals:
        (cls, name), original = _originals.popitem()
        setattr(cls, name, original)


@contextlib.contextmanager
def installed(enabled: bool = True):
    """Run a block with the shim installed (`enabled=True`) or removed; restores the state."""
    was_installed = is_installed()
    (install if enabled else uninstall)()
    try:
        yield
    finally:
        (install if was_installed else uninstall)()
