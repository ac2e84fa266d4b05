"""Fused marginals: the Triton kernel vs the PyTorch composition a decoder would write, and a
study of the kernel's fp32 Gumbel noise against LLaDA's float64 sampler.

    python -m benchmarks.marginals            # GPU: the full grid; CPU: smoke sizes
    python -m benchmarks.marginals --quick    # smoke sizes everywhere
    python -m benchmarks.marginals --gumbel   # the Gumbel noise study (CPU, ~1 minute)

Timing (GPU): rows in {32, 288, 2048} x V in {126464, 152064}, bf16 logits, top_k = 8, at
temperature 0 (argmax) and 1 (Gumbel sample); ms by `triton.testing.do_bench` (p20_ms /
p50_ms / p80_ms; `ms` is the median) and
achieved GB/s = bytes of the logits / time (the kernel reads them once, so this is its share
of HBM bandwidth), and ``of_copy_bw`` = that GB/s over the device's measured copy bandwidth
(a 2 GiB device-to-device `copy_`, read + write bytes / time; the goal is >= 0.85 at rows 32 and
288, V 126464). The composition is softmax, log-softmax, logsumexp, max, top-k, gather,
entropy and a Gumbel sample from `torch.rand` in fp32 (unkeyed noise: it does less than the
kernel, which derives Philox noise per (seed, step, position, vocab id)).

Bytes moved (everywhere, also on CPU): for the composition, the sum of input and output bytes
of every ATen operator it dispatches, counted on `meta` tensors of the full sizes (no data, no
time); for the kernel, the logits once plus its outputs and split partials. These are modeled
lower bounds of HBM traffic (caches ignored), not measurements.
"""

from __future__ import annotations

import math
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import spiffy_triton  # noqa: F401  (sets the interpreter mode before triton is imported)
from benchmarks import harness
from benchmarks.harness import Run
from benchmarks.timing import Results, median_ms, on_gpu, percentiles_ms

ROWS = (32, 288, 2048)
VOCABS = (126464, 152064)
TOP_K = 8
TEMPERATURES = (0.0, 1.0)
SMOKE = [(4, 4096)]
STUDY_VOCABS = (8192, 126464, 152064)
COLUMNS = (
    "rows",
    "vocab",
    "T",
    "method",
    "ms",
    "p20_ms",
    "p80_ms",
    "gb_per_s",
    "speedup",
    "mb_modeled",
    "splits",
    "of_copy_bw",
)


def torch_composition(logits: torch.Tensor, top_k: int, temperature: float):
    """What a decoder writes without the fused kernel (same outputs as `marginals`)."""
    x = logits.float()
    log_p = torch.log_softmax(x, dim=-1)
    p = log_p.exp()
    lse = torch.logsumexp(x, dim=-1)
    top = torch.topk(x, top_k, dim=-1)
    topk_probs = (top.values - lse[:, None]).exp()
    entropy = -(p * log_p).sum(dim=-1)
    if temperature > 0:
        gumbel = -torch.log(-torch.log(torch.rand_like(x)))
        token = (x / temperature + gumbel).argmax(dim=-1)
    else:
        token = x.max(dim=-1).indices
    prob = p.gather(1, token[:, None])[:, 0]
    return token, prob, top.indices, topk_probs, lse, entropy


class _ByteCounter(TorchDispatchMode):
    """Sums the bytes of every tensor argument and result of each dispatched ATen op."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in torch.utils._pytree.tree_leaves((args, kwargs, out)):
            if isinstance(value, torch.Tensor):
                self.bytes += value.numel() * value.element_size()
        return out


def composition_bytes(rows: int, vocab: int, dtype, top_k: int, temperature: float) -> int:
    logits = torch.empty(rows, vocab, dtype=dtype, device="meta")
    with _ByteCounter() as counter:
        torch_composition(logits, top_k, temperature)
    return counter.bytes


def kernel_bytes(rows: int, vocab: int, dtype, top_k: int, splits: int) -> int:
    outputs = rows * (8 + 4 + top_k * (8 + 4) + 4 + 4)
    partials = 0 if splits == 1 else 2 * rows * splits * (12 + 4 + 8 * top_k + 8)
    return rows * vocab * dtype.itemsize + outputs + partials


def copy_bandwidth_gb_s(device: str, num_bytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth: (read + write bytes) / median time of `copy_`."""
    src = torch.empty(num_bytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * num_bytes / ms / 1e6


def run_benchmark(sizes, dtype, results: Results, copy_gb_s: float | None = None) -> None:
    from spiffy_triton.kernels import marginals as kernel_module

    device = "cuda" if on_gpu() else "cpu"
    for rows, vocab in sizes:
        gen = torch.Generator(device=device).manual_seed(0)
        logits = (torch.randn(rows, vocab, generator=gen, device=device) * 3).to(dtype)
        logit_bytes = logits.numel() * logits.element_size()
        splits = kernel_module._select_config(rows, vocab)["splits"]
        for temperature in TEMPERATURES:

            def kernel(logits=logits, temperature=temperature):
                return kernel_module.marginals(
                    logits, top_k=TOP_K, temperature=temperature, seed=1, step=0
                )

            def composed(logits=logits, temperature=temperature):
                return torch_composition(logits, TOP_K, temperature)

            reps = {} if on_gpu() else {"warmup": 1, "reps": 3}
            kernel_times = percentiles_ms(kernel, **reps)
            composed_times = percentiles_ms(composed, **reps)
            kernel_ms, composed_ms = kernel_times["p50_ms"], composed_times["p50_ms"]
            common = {"rows": rows, "vocab": vocab, "T": temperature}
            kernel_gb_s = logit_bytes / kernel_ms / 1e6
            results.add(
                {
                    **common,
                    "method": "triton",
                    "ms": kernel_ms,
                    **kernel_times,
                    "gb_per_s": kernel_gb_s,
                    "speedup": composed_ms / kernel_ms,
                    "mb_modeled": kernel_bytes(rows, vocab, dtype, TOP_K, splits) / 1e6,
                    "splits": splits,
                    "of_copy_bw": kernel_gb_s / copy_gb_s if copy_gb_s else None,
                }
            )
            results.add(
                {
                    **common,
                    "method": "torch",
                    "ms": composed_ms,
                    **composed_times,
                    "gb_per_s": logit_bytes / composed_ms / 1e6,
                    "speedup": 1.0,
                    "mb_modeled": composition_bytes(rows, vocab, dtype, TOP_K, temperature) / 1e6,
                    "splits": None,
                }
            )


def modeled_rows(dtype) -> list[dict]:
    """Bytes each method moves at the full sizes (no timing: runs anywhere, instantly)."""
    from spiffy_triton.kernels import marginals as kernel_module

    out = []
    for rows in ROWS:
        for vocab in VOCABS:
            splits = kernel_module._select_config(rows, vocab)["splits"]
            for temperature in TEMPERATURES:
                fused = kernel_bytes(rows, vocab, dtype, TOP_K, splits)
                composed = composition_bytes(rows, vocab, dtype, TOP_K, temperature)
                out.append(
                    {
                        "rows": rows,
                        "vocab": vocab,
                        "T": temperature,
                        "splits": splits,
                        "triton_mb": fused / 1e6,
                        "torch_mb": composed / 1e6,
                        "ratio": composed / fused,
                    }
                )
    return out


# --------------------------------------------------------------------------------------------
# Gumbel study: the kernel's fp32 noise vs LLaDA's float64 sampler.
# --------------------------------------------------------------------------------------------


def _tie_probability(values: torch.Tensor, masses: torch.Tensor, below: float, vocab: int):
    """P(the max of `vocab` iid draws is shared by two or more draws), from the top cells of a
    discrete distribution: `values` ascending, `masses` their probabilities, `below` the
    probability mass under the first value (the rest of the range, far from the max)."""
    distinct, inverse = torch.unique_consecutive(values, return_inverse=True)
    cell_mass = torch.zeros(len(distinct), dtype=torch.float64).index_add_(0, inverse, masses)
    f_low = below + torch.cumsum(cell_mass, 0) - cell_mass  # mass strictly below each cell
    r = cell_mass / f_low
    y = vocab * torch.log1p(r)
    # expm1(y) - vocab * r, accurate for tiny r: (expm1(y) - y) + vocab * (log1p(r) - r)
    expm1_minus = torch.where(y < 1e-4, y * y / 2 + y**3 / 6, torch.expm1(y) - y)
    log1p_minus = torch.where(r < 1e-4, -r * r / 2 + r**3 / 3, torch.log1p(r) - r)
    per_cell = torch.exp(vocab * torch.log(f_low)) * (expm1_minus + vocab * log1p_minus)
    missing_max = math.exp(vocab * math.log(below))  # the max falls below the enumerated cells
    return float(per_cell.sum()), missing_max


def gumbel_study() -> list[dict]:
    from spiffy_triton.contract import gumbel_from_uint32

    top_words = 1 << 26  # the top 1.6% of the 32-bit range holds the max of >= 8192 draws
    words = torch.arange(2**32 - top_words, 2**32, dtype=torch.int64)
    ours = torch.cat([gumbel_from_uint32(w) for w in words.split(1 << 22)]).double()
    ours_mass = torch.full_like(ours, 2.0**-32)
    # the 23-bit construction u = ((x >> 9) + 0.5) * 2**-23 (no fp32 value of u reaches 1)
    cells23 = torch.arange(2**23 - (top_words >> 9), 2**23, dtype=torch.float64)
    u23 = ((cells23 + 0.5) * 2.0**-23).float()
    naive = (-torch.log(-torch.log(u23))).double()
    naive_mass = torch.full_like(naive, 2.0**-23)
    below = 1.0 - top_words * 2.0**-32

    def true_survival(g):
        return -torch.expm1(-torch.exp(-g))  # P(G > g) for a standard Gumbel

    def survival_error(values, masses):
        # P(noise >= value) vs the exact Gumbel tail, where the tail holds 1e-7 .. 1e-3
        at_or_above = torch.flip(torch.cumsum(torch.flip(masses, [0]), 0), [0])
        distinct_first = torch.ones_like(values, dtype=torch.bool)
        distinct_first[1:] = values[1:] != values[:-1]
        exact = true_survival(values)
        window = distinct_first & (exact > 1e-7) & (exact < 1e-3)
        rel = (at_or_above[window] - exact[window]).abs() / exact[window]
        return float(rel.max())

    out = []
    for name, values, masses, resolution in (
        ("kernel fp32, 32-bit two-sided", ours, ours_mass, "2^-32"),
        ("fp32, 23-bit u", naive, naive_mass, "2^-23"),
    ):
        g_max = float(values.max())
        row = {
            "noise": name,
            "u_resolution": resolution,
            "g_max": g_max,
            "true_tail_above_g_max": float(true_survival(torch.tensor(g_max, dtype=torch.float64))),
            "tail_rel_err_1e-7_1e-3": survival_error(values, masses),
        }
        for vocab in STUDY_VOCABS:
            tie, missing = _tie_probability(values, masses, below, vocab)
            assert missing < 1e-12, "enumerate more of the top of the range"
            row[f"tie_p_V{vocab}"] = tie
        out.append(row)
    # LLaDA: float64 u = k * 2**-53 (torch.rand), 2**53 equally likely cells, analytic
    g_max = -math.log(-math.log1p(-(2.0**-53)))
    row = {
        "noise": "LLaDA float64 (analytic)",
        "u_resolution": "2^-53",
        "g_max": g_max,
        "true_tail_above_g_max": -math.expm1(-math.exp(-g_max)),
        "tail_rel_err_1e-7_1e-3": None,
    }
    for vocab in STUDY_VOCABS:
        row[f"tie_p_V{vocab}"] = vocab / 2.0**54  # ~ V / (2 * cells) for V << cells
    out.append(row)
    return out


KEY = ("rows", "vocab", "T", "method")


def build_run(argv=None) -> Run:
    parser = harness.parser(__doc__, quick_help="smoke sizes only")
    parser.add_argument("--gumbel", action="store_true", help="run the Gumbel noise study")
    run = harness.build_run("marginals", parser.parse_args(argv), dtype=torch.bfloat16)
    full = run.device == "cuda" and not run.quick
    return run.with_sizes(shapes=[(r, v) for r in ROWS for v in VOCABS] if full else SMOKE)


def main(argv=None) -> int:
    run = build_run(argv)
    if run.gumbel:
        meta = {"what": "fp32 Gumbel vs float64"}
        run.report(gumbel_study(), key=("noise",), meta=meta, name="marginals_gumbel")
        return 0
    copy_gb_s = copy_bandwidth_gb_s("cuda") if run.shapes is not SMOKE else None
    meta = {
        "dtype": str(run.dtype),
        "top_k": TOP_K,
        "timing": "do_bench p20 / p50 / p80 (ms: the median)"
        if run.device == "cuda"
        else "CPU smoke (kernel in the interpreter)",
        "gb_per_s": "bytes of the logits / time",
        "copy_gb_s": copy_gb_s,
        "of_copy_bw": "gb_per_s / copy_gb_s (measured device copy: read + write bytes / time)",
        "mb_modeled": "kernel: logits once + outputs + partials; torch: sum of ATen op I/O",
    }
    results = run.table(COLUMNS, key=KEY, meta=meta)
    run_benchmark(run.shapes, run.dtype, results, copy_gb_s)
    results.finish()
    meta = {"dtype": str(run.dtype)}
    run.report(modeled_rows(run.dtype), meta=meta, name="marginals_bytes_modeled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
