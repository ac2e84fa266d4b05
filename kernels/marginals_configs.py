"""Host-side configuration of the marginals kernels (kernels/marginals.py): the launch
configuration picked from the shape alone (no autotuner: results are reproducible), and the
table of shipped configurations that kernels/marginals.py's `compile_configs()` returns to
spiffy_triton/compile_report.py.

A helper module of the marginals family (docs/ARCHITECTURE.md, "Kernel files"): no kernels
and no `compile_configs` of its own, so the compile report passes over it.
"""

from __future__ import annotations

import inspect

import triton

from spiffy_triton import contract

TARGET_PROGRAMS = 264  # two waves of an H100's 132 SMs
MIN_BLOCKS_PER_SPLIT = 2
MAX_SPLITS = 64  # the combine kernel holds MAX_SPLITS x KP keys in one warp's registers
RANK_BLOCK = 64


def select_config(num_rows: int, vocab: int) -> dict:
    """Block size, warps and vocabulary split from the shape only (reproducible)."""
    block_v = 2048 if vocab > contract.NOISE_CHUNK else contract.NOISE_CHUNK
    num_blocks = triton.cdiv(vocab, block_v)
    splits = max(1, triton.cdiv(TARGET_PROGRAMS, max(num_rows, 1)))
    splits = max(1, min(splits, num_blocks // MIN_BLOCKS_PER_SPLIT, MAX_SPLITS))
    return {"block_v": block_v, "splits": splits, "num_warps": select_num_warps(block_v)}


def select_num_warps(block_v: int) -> int:
    """4 warps at both block sizes: on the H200 sweep (benchmarks/marginals_sweep.py), 4 warps
    at BLOCK_V 2048 were within 1.5% of 8 or faster (up to 1.32x) in every shape with >= 288
    rows, T = 0 and 1."""
    del block_v
    return 4


# --------------------------------------------------------------------------------------------
# Shipped configurations (consumed by spiffy_triton/compile_report.py)
# --------------------------------------------------------------------------------------------

# The main kernel, (logits dtype, BLOCK_V, K, SAMPLE, FINALIZE): BLOCK_V 2048 (every V > 1024)
# in both modes (argmax / Gumbel) and both finishes (fused finalize / split partials) for bf16
# at k = 8 (the most registers), k = 1 for bf16, the other input dtypes at k = 8, and BLOCK_V
# 1024 (V <= 1024). Warps as the launcher picks them (`select_num_warps`), one stage.
MAIN_CONFIGS = (
    ("bf16", 2048, 8, False, True),
    ("bf16", 2048, 8, False, False),
    ("bf16", 2048, 8, True, True),
    ("bf16", 2048, 8, True, False),
    ("bf16", 2048, 1, False, True),
    ("bf16", 2048, 1, True, False),
    ("fp16", 2048, 8, True, True),
    ("fp32", 2048, 8, True, True),
    ("fp16", 2048, 8, False, False),
    ("fp32", 2048, 8, False, False),
    ("fp32", contract.NOISE_CHUNK, 8, True, True),
)
COMBINE_CONFIGS = ((1, False), (1, True), (8, False), (8, True))  # (K, SAMPLE), one warp
RANK_CONFIGS = (False, True)  # IS_F64, 4 warps
_MODES = {False: "argmax", True: "sample"}
_FINISHES = {False: "split", True: "fused"}
# Argument types by name (the kernels name each buffer the same); the other runtime arguments
# are i32, and the constexprs' (the unit strides too: a real launch specializes them).
ARG_TYPES = {
    "positions_ptr": "*i64",
    "part_stats_ptr": "*fp32",
    "part_flag_ptr": "*i32",
    "part_topk_ptr": "*i64",
    "part_best_ptr": "*i64",
    "token_ptr": "*i64",
    "prob_ptr": "*fp32",
    "topk_tokens_ptr": "*i64",
    "topk_probs_ptr": "*fp32",
    "lse_ptr": "*fp32",
    "entropy_ptr": "*fp32",
    "inv_t": "fp32",
    "eligible_ptr": "*u8",
    "out_ptr": "*i64",
}


def compile_entry(name, kernel, constexprs, num_warps, **types) -> dict:
    arguments = inspect.signature(kernel.fn).parameters
    signature = {
        arg: "constexpr" if arg in constexprs else types.get(arg, ARG_TYPES.get(arg, "i32"))
        for arg in arguments
    }
    return {
        "name": name,
        "kernel": kernel,
        "signature": signature,
        "constexprs": constexprs,
        "num_warps": num_warps,
        "num_stages": 1,
        "tensor_cores": False,
    }


def shipped_configs(marginals_kernel, combine_kernel, rank_kernel) -> list[dict]:
    """`compile_configs()` of kernels/marginals.py: MAIN_CONFIGS, COMBINE_CONFIGS, RANK_CONFIGS."""
    configs = []
    for dtype, block_v, k, sample, finalize in MAIN_CONFIGS:
        name = f"marginals_{dtype}_v{block_v}_k{k}_{_MODES[sample]}_{_FINISHES[finalize]}"
        constexprs = {"stride_vocab": 1, "K": k, "KP": triton.next_power_of_2(k)}
        constexprs.update(BLOCK_V=block_v, SAMPLE=sample, FINALIZE=finalize)
        warps = select_num_warps(block_v)
        entry = compile_entry(name, marginals_kernel, constexprs, warps, logits_ptr=f"*{dtype}")
        # LLaDA's and Qwen's vocabularies (126464, 152064) are multiples of 16; the JIT
        # specializes on it and the loads vectorize.
        configs.append({**entry, "divisible_by_16": ["V", "stride_row"]})
    for k, sample in COMBINE_CONFIGS:
        constexprs = {"stride_vocab": 1, "K": k, "KP": triton.next_power_of_2(k)}
        constexprs.update(BLOCK_S=MAX_SPLITS, SAMPLE=sample)
        name = f"marginals_combine_k{k}_{_MODES[sample]}"
        configs.append(compile_entry(name, combine_kernel, constexprs, 1, logits_ptr="*bf16"))
    for is_f64 in RANK_CONFIGS:
        constexprs = {"stride_cl": 1, "stride_el": 1, "IS_F64": is_f64}
        constexprs.update(BLOCK_I=RANK_BLOCK, BLOCK_J=RANK_BLOCK)
        dtype = "fp64" if is_f64 else "fp32"
        name = f"rank_positions_{dtype}"
        configs.append(compile_entry(name, rank_kernel, constexprs, 4, conf_ptr=f"*{dtype}"))
    return configs
