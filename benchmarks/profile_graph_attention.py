"""Where the graph-attention time goes: the kernel's own device time against the time a caller
sees, for the kernel, SDPA with a dense mask and FlexAttention, at a few verify shapes.

    python -m benchmarks.profile_graph_attention            # GPU: LLaDA-8B heads
    python -m benchmarks.profile_graph_attention --quick    # smoke sizes (CPU: interpreter)

Per method and shape: ``call_ms`` (do_bench median: what benchmarks/graph_attention.py
reports; beside it p20_ms / p50_ms / p80_ms), ``device_ms`` (sum of the CUDA kernels' own time
per call, from torch.profiler), ``host_ms`` (CPU time per call of launching it, no
synchronization) and the kernels launched per call. A method whose ``call_ms`` is far above
its ``device_ms`` is bound by its launch path, not by its kernel. For the Triton kernel it
also records the compiled kernels' registers, spills and shared memory, and the grid against
the number of SMs.
"""

from __future__ import annotations

import sys
import time
import warnings

import torch

import spiffy_triton  # sets the interpreter mode before triton is imported
from benchmarks import harness
from benchmarks.graph_attention import _flex_attention, flex_block_mask
from benchmarks.harness import Run
from benchmarks.timing import on_gpu, percentiles_ms
from spiffy_triton import SegmentLayout
from spiffy_triton.kernels.graph_attention import _graph_attention_fwd, select_config

COLUMNS = (
    "cached",
    "context",
    "D",
    "method",
    "call_ms",
    "device_ms",
    "host_ms",
    "kernels_per_call",
    "grid",
    "note",
)
GPU_SHAPES = ((True, 256, 0), (True, 1024, 8), (False, 1024, 8), (True, 1024, 16))
SMOKE_SHAPES = ((True, 96, 2),)


def device_ms_per_call(fn, calls: int) -> tuple[float, float]:
    """(CUDA kernel time per call, kernels per call) from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.device_time for e in kernels)
    return total_us / 1e3 / calls, len(kernels) / calls


def host_ms_per_call(fn, calls: int) -> float:
    fn()
    if on_gpu():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) * 1e3 / calls
    if on_gpu():
        torch.cuda.synchronize()
    return host


def compiled_kernel_notes() -> str:
    """Registers, spills and shared memory of every compiled variant of the kernel."""
    notes = []
    try:
        for cache in _graph_attention_fwd.device_caches.values():
            for kernel in cache[0].values():
                meta = kernel.metadata
                notes.append(
                    f"regs {kernel.n_regs} spills {kernel.n_spills} smem {meta.shared} "
                    f"warps {meta.num_warps} stages {meta.num_stages}"
                )
    except Exception as error:  # noqa: BLE001 (triton's cache layout differs across versions)
        notes.append(f"compiled kernel info unavailable: {type(error).__name__}")
    return "; ".join(sorted(set(notes)))


def profile_shape(cached, context, drafts, *, heads, d, block, dtype, device, flex, calls, results):
    """Every method at one verify shape: one row each."""
    gpu = device == "cuda"
    sms = torch.cuda.get_device_properties(0).multi_processor_count if gpu else None
    prefix, suffix = context // 2, context - context // 2
    layout = SegmentLayout.spiffy(prefix, block, suffix, drafts, cached=cached)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(1, heads, rows, d, generator=gen).to(device=device, dtype=dtype)
        for rows in (layout.num_q_rows, layout.num_k_rows, layout.num_k_rows)
    )
    dense = layout.to_dense(device)
    config = select_config(d, dtype, layout.num_q_rows, 1)
    sched = layout.schedule(config.block_m // config.heads_per_tile, config.block_n)
    methods = {
        "triton": lambda: spiffy_triton.graph_attention(q, k, v, layout, backend="triton"),
        "sdpa_dense_mask": lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=dense
        ),
    }
    if flex is not None:
        block_mask = flex_block_mask(layout, device)
        methods["flex_block_mask"] = lambda: flex(q, k, v, block_mask=block_mask)
    for name, fn in methods.items():
        row = dict(cached=cached, context=context, D=drafts, method=name)
        try:
            times = percentiles_ms(fn, **({} if gpu else {"warmup": 1, "reps": 1}))
            row.update(call_ms=times["p50_ms"], **times)
            row["host_ms"] = host_ms_per_call(fn, calls)
            if on_gpu():
                row["device_ms"], row["kernels_per_call"] = device_ms_per_call(fn, calls)
            if name == "triton":
                programs = sched.num_q_tiles * heads // config.heads_per_tile
                row["grid"] = f"{programs} programs" + (f" / {sms} SMs" if sms else "")
                row["note"] = f"block {config.block_m}x{config.block_n}; " + (
                    compiled_kernel_notes() if on_gpu() else ""
                )
        except Exception as error:  # noqa: BLE001 (report the row, measure the rest)
            row["note"] = f"failed: {type(error).__name__}: {error}"[:160]
        results.add(row)


KEY = ("cached", "context", "D", "method")


def build_run(argv=None) -> Run:
    run = harness.build_run("profile_graph_attention", harness.parser(__doc__).parse_args(argv))
    if run.device == "cuda" and not run.quick:
        return run.with_sizes(heads=32, d=128, block=32, dtype=torch.bfloat16, calls=50)
    return run.with_sizes(heads=2, d=64, block=16, dtype=torch.float32, calls=2)


def main(argv=None) -> int:
    run = build_run(argv)
    full = run.device == "cuda" and not run.quick
    sms = torch.cuda.get_device_properties(0).multi_processor_count if on_gpu() else None
    flex = _flex_attention()
    if flex is not None and full:
        flex = torch.compile(flex)
    warnings.filterwarnings("ignore", message=".*flex_attention.*")
    sizes = dict(heads=run.heads, d=run.d, block=run.block, dtype=run.dtype)
    meta = dict(heads=run.heads, head_dim=run.d, dtype=str(run.dtype), block=run.block, sms=sms)
    results = run.table(COLUMNS, key=KEY, meta=meta)
    for shape in GPU_SHAPES if full else SMOKE_SHAPES:
        profile_shape(
            *shape, **sizes, device=run.device, flex=flex, calls=run.calls, results=results
        )
    results.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
