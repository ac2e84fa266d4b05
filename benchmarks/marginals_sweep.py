"""Launch-configuration sweep of the marginals kernel: which block size, warps, pipeline stages
and vocabulary split reach the most of the copy bandwidth, at LLaDA's vocabulary.

    python -m benchmarks.marginals_sweep            # GPU: rows 32 / 288 / 2048, T 0 and 1
    python -m benchmarks.marginals_sweep --quick    # smoke sizes (CPU: interpreter)

Each row is one configuration of one shape; ``of_copy_bw`` is the logits' bytes per second
over the measured device copy bandwidth, ``vs_default`` the default configuration's time over
this one's (> 1: this configuration is faster). Every configuration's outputs are checked
equal to the default configuration's (tokens, top-k) before it is timed.
"""

from __future__ import annotations

import itertools
import sys

import torch

import spiffy_triton  # noqa: F401  (sets the interpreter mode before triton is imported)
from benchmarks import harness
from benchmarks.harness import Run
from benchmarks.marginals import copy_bandwidth_gb_s
from benchmarks.timing import median_ms, percentiles_ms
from spiffy_triton.kernels import marginals as kernel
from spiffy_triton.kernels.marginals_configs import MAX_SPLITS

COLUMNS = (
    "rows",
    "vocab",
    "T",
    "block_v",
    "num_warps",
    "num_stages",
    "splits",
    "ms",
    "p20_ms",
    "p80_ms",
    "gb_per_s",
    "of_copy_bw",
    "vs_default",
    "note",
)
TOP_K = 8


def split_options(rows: int, vocab: int, block_v: int) -> list[int]:
    """The default split for this block size and four times as many programs (few rows)."""
    default = kernel._select_config(rows, vocab)["splits"]
    num_blocks = -(-vocab // block_v)
    options = {max(1, min(default, num_blocks))}
    if rows < 1024:
        options.add(max(1, min(4 * default, num_blocks // 2, MAX_SPLITS)))
    return sorted(options)


KEY = ("rows", "vocab", "T", "block_v", "num_warps", "num_stages", "splits")


def build_run(argv=None) -> Run:
    run = harness.build_run("marginals_sweep", harness.parser(__doc__).parse_args(argv))
    if run.device == "cuda" and not run.quick:
        shapes = [(r, 126464, t) for r in (32, 288, 2048) for t in (0.0, 1.0)]
        grid = dict(block_v=(2048, 4096, 8192), num_warps=(4, 8, 16), num_stages=(1, 3))
        return run.with_sizes(shapes=shapes, grid=grid, copy_gb_s=copy_bandwidth_gb_s("cuda"))
    grid = dict(block_v=(1024, 2048), num_warps=(4,), num_stages=(1,))
    return run.with_sizes(shapes=[(2, 4096, 0.0)], grid=grid, copy_gb_s=None)


def shape_rows(run: Run, rows: int, vocab: int, temperature: float):
    """One row per launch configuration of one shape, timed after checking its outputs."""
    gen = torch.Generator().manual_seed(rows)
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(run.device, torch.bfloat16)
    call = dict(top_k=TOP_K, temperature=temperature, seed=1, step=1, positions=None)

    def launch(config):
        return kernel._marginals(logits, *call.values(), config=config)

    default = kernel._select_config(rows, vocab)
    expected = launch(None)
    default_ms = median_ms(lambda: launch(None))
    for block_v, warps, stages in itertools.product(*run.grid.values()):
        for splits in split_options(rows, vocab, block_v):
            config = dict(block_v=block_v, num_warps=warps, num_stages=stages, splits=splits)
            row = dict(rows=rows, vocab=vocab, T=temperature, **config)
            try:
                out = launch(config)
                same = torch.equal(out.token, expected.token) and torch.equal(
                    out.topk_tokens, expected.topk_tokens
                )
                if not same:
                    row["note"] = "outputs differ from the default configuration"
                times = percentiles_ms(lambda config=config: launch(config))
                ms = times["p50_ms"]
                gb_s = rows * vocab * 2 / (ms * 1e-3) / 1e9
                row.update(ms=ms, **times, gb_per_s=gb_s, vs_default=default_ms / ms)
                if run.copy_gb_s:
                    row["of_copy_bw"] = gb_s / run.copy_gb_s
                if all(default.get(k) == config[k] for k in ("block_v", "num_warps", "splits")):
                    row["note"] = (row.get("note", "") + " default").strip()
            except Exception as error:  # noqa: BLE001 (a config that fails is a row, not a crash)
                row["note"] = f"failed: {type(error).__name__}: {str(error)[:100]}"
            yield row


def main(argv=None) -> int:
    run = build_run(argv)
    meta = dict(dtype="bfloat16", top_k=TOP_K, copy_gb_s=run.copy_gb_s, grid=run.grid)
    results = run.table(COLUMNS, key=KEY, meta=meta)
    for shape in run.shapes:
        for row in shape_rows(run, *shape):
            results.add(row)
    results.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
