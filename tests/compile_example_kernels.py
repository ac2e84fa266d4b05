"""Small kernels with known properties, to test spiffy_triton/compile_report.py itself.

`matmul_fp16` must use tensor cores and fit; `scale_fp32` has no dot (no tensor-core
instructions); the two `*_too_big` configurations must be caught by the report's checks (one
needs more shared memory than any device has, one keeps a 128 x 256 fp32 accumulator in 128
threads: 256 registers per thread for it alone, so ptxas has to spill).
"""

import triton
import triton.language as tl


@triton.jit
def matmul_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    M,
    N,
    K,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptr + rm[:, None] * K + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * N + rn[None, :])
        acc += tl.dot(a, b)
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc)


@triton.jit
def scale_kernel(x_ptr, out_ptr, n, factor, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) * factor, mask=mask)


MATMUL_SIGNATURE = {
    "a_ptr": "*fp16",
    "b_ptr": "*fp16",
    "c_ptr": "*fp32",
    "M": "i32",
    "N": "i32",
    "K": "i32",
    "BLOCK_M": "constexpr",
    "BLOCK_N": "constexpr",
    "BLOCK_K": "constexpr",
}


def _matmul(name, block_m, block_n, block_k, num_warps, num_stages):
    return {
        "name": name,
        "kernel": matmul_kernel,
        "signature": MATMUL_SIGNATURE,
        "constexprs": {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k},
        "num_warps": num_warps,
        "num_stages": num_stages,
        "tensor_cores": True,
        "divisible_by_16": ["N", "K"],
    }


def compile_configs():
    return [
        _matmul("matmul_fp16", 128, 64, 32, num_warps=4, num_stages=3),
        # 8 stages x (128 x 128 + 128 x 128) fp16 = 512 KiB of operand buffers.
        _matmul("shared_too_big", 128, 128, 128, num_warps=8, num_stages=8),
        _matmul("registers_too_big", 128, 256, 32, num_warps=4, num_stages=2),
        {
            "name": "scale_fp32",
            "kernel": scale_kernel,
            "signature": {
                "x_ptr": "*fp32",
                "out_ptr": "*fp32",
                "n": "i32",
                "factor": "fp32",
                "BLOCK": "constexpr",
            },
            "constexprs": {"BLOCK": 1024},
            "num_warps": 4,
            "num_stages": 1,
            "tensor_cores": False,
        },
    ]
