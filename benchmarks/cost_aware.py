"""Cost-aware draft budget and noise-aware filling on the bundled model (CPU, PyTorch backend).

MEASURED on this machine.

1. Wall clock, per decoding mode (greedy one token per step and the Fast-dLLM threshold rule,
   each without cache (drafts as batch rows, exact) and with the dual cache (packed, exact)):
   vanilla, Spiffy with a fixed number of drafts D in {1, 3, 8} (the default graph of D
   nodes, every filled node verified), and Spiffy with ``max_drafts="auto"`` (candidates: the
   default graph of 10 nodes; cost model probed on this machine during the warm-up run).
   The measuring code is benchmarks/wallclock.py's: a warm-up run per configuration, then
   rounds that decode each prompt with every configuration back to back (rotated order);
   tokens/s of the median-wall-time round, speedup = median over rounds of vanilla's wall time
   over the configuration's in the same round, with the quartiles of those ratios.
   ``drafts_per_forward``: drafts verified per forward in that median round.
2. Noise-aware filling against plain filling at T in {0.3, 0.7, 1.0} (dual cache, default
   graph of 8 nodes, every node verified): NFE, steps per forward, draft acceptance (walked
   drafts / verified drafts), and whether the tokens equal vanilla's (they must).

    python -m benchmarks.cost_aware [--quick] [--repeats 9] [--prompts 2] [--modes greedy-dual,...]
        [--drafts 1,3,8] [--skip-wallclock] [--skip-noise]

Writes benchmarks/results/cost_aware.json (wall clock) and cost_aware_noise.json.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from benchmarks import harness
from benchmarks.harness import Run
from benchmarks.timing import PERCENTILE_KEYS
from benchmarks.wallclock import measure, pick_prompts, summarize
from spiffy_triton import DraftGraph, generate, load_model

FIXED_DRAFTS = (1, 3, 8)
AUTO_POOL = 10  # auto chooses among the nodes of DraftGraph.default(AUTO_POOL)
TEMPERATURES = (0.3, 0.7, 1.0)
NOISE_GRAPH = 8
MODES = {
    "greedy, no cache": {"cache": None, "rule": {}},
    "greedy, dual cache": {"cache": "dual", "rule": {}},
    "threshold 0.9, no cache": {"cache": None, "rule": {"threshold": 0.9}},
    "threshold 0.9, dual cache": {"cache": "dual", "rule": {"threshold": 0.9}},
}
MODE_IDS = dict(zip(("greedy-none", "greedy-dual", "threshold-none", "threshold-dual"), MODES))


@dataclass(frozen=True)
class Config:
    """A configuration in wallclock's protocol (``name``, ``drafts``, ``generate_kwargs``)."""

    name: str
    drafts: int | str | None  # None: vanilla; "auto": cost-aware
    rule: dict = field(default_factory=dict)

    def generate_kwargs(self, graph_template: str | None = None) -> dict:
        if self.drafts is None:
            return dict(self.rule)
        if self.drafts == "auto":
            return {**self.rule, "graph": DraftGraph.default(AUTO_POOL), "max_drafts": "auto"}
        return {**self.rule, "graph": DraftGraph.default(self.drafts), "max_drafts": None}


def wallclock_rows(model, prompts, run: Run) -> list[dict]:
    rows = []
    for mode in run.modes:
        spec = MODES[mode]
        mode_run = run.with_sizes(cache=spec["cache"], graph_template=None)
        configs = [Config("vanilla", None, spec["rule"])]
        configs += [Config(f"D={d}", d, spec["rule"]) for d in run.drafts]
        configs.append(Config("auto", "auto", spec["rule"]))
        print(f"-- {mode}: {len(configs)} configurations x {run.repeats} rounds", flush=True)
        runs = measure(model, prompts, configs, mode_run)
        mode_rows = summarize(runs, configs, mode_run, len(prompts))
        for row in mode_rows:
            rows.append(
                {
                    "mode": mode,
                    "config": row["config"],
                    "tokens_per_s": row["tokens_per_s"],
                    "speedup": row["speedup"],
                    "speedup_q25": row["speedup_q25"],
                    "speedup_q75": row["speedup_q75"],
                    "nfe": row["nfe"],
                    "steps_per_forward": row["steps_per_forward"],
                    "forward_ms": row["forward_ms"],
                    "drafts_per_forward": row["drafts_per_forward"],
                    "same_tokens_as_vanilla": row["same_tokens_as_vanilla"],
                    "wall_s_min": row["wall_s_min"],
                    "wall_s_max": row["wall_s_max"],
                    **{k: row[k] for k in PERCENTILE_KEYS},
                }
            )
    return rows


def noise_rows(model, prompts, run: Run) -> list[dict]:
    rows = []
    graph = DraftGraph.default(NOISE_GRAPH)
    for temperature in TEMPERATURES:
        common = {
            "gen_length": run.gen_length,
            "block_length": run.block_length,
            "cache": "dual",
            "temperature": temperature,
            "backend": "torch",
        }
        vanilla = [generate(model, p, seed=k, **common) for k, p in enumerate(prompts)]
        for name, filler in (("plain", None), ("noise-aware", "noise")):
            outs = [
                generate(model, p, seed=k, graph=graph, max_drafts=None, filler=filler, **common)
                for k, p in enumerate(prompts)
            ]
            verified = sum(o.stats.drafts_verified for o in outs)
            accepted = sum(sum(o.stats.node_accepted) for o in outs)
            nfe = sum(o.nfe for o in outs)
            rows.append(
                {
                    "temperature": temperature,
                    "filler": name,
                    "nfe": nfe,
                    "vanilla_nfe": sum(o.nfe for o in vanilla),
                    "nfe_speedup": sum(o.nfe for o in vanilla) / nfe,
                    "steps_per_forward": sum(o.steps for o in outs) / nfe,
                    "acceptance": accepted / verified if verified else 0.0,
                    "drafts_verified": verified,
                    "same_tokens_as_vanilla": all(
                        torch.equal(o.tokens, v.tokens) for o, v in zip(outs, vanilla)
                    ),
                }
            )
    return rows


WALLCLOCK_COLUMNS = [
    "mode", "config", "tokens_per_s", "speedup", "speedup_q25", "speedup_q75", "nfe",
    "steps_per_forward", "forward_ms", "drafts_per_forward", "same_tokens_as_vanilla",
]  # fmt: skip
NOISE_COLUMNS = [
    "temperature", "filler", "nfe", "vanilla_nfe", "nfe_speedup", "steps_per_forward",
    "acceptance", "drafts_verified", "same_tokens_as_vanilla",
]  # fmt: skip


def build_run(argv: Sequence[str] | None = None) -> Run:
    parser = harness.parser(__doc__, quick_help="1 prompt, 32 tokens, 1 round", repeats=9)
    parser.add_argument("--model", default="tiny", help='"tiny" or a LLaDA checkpoint dir')
    parser.add_argument("--prompts", type=int, default=2, help="prompts per wall-clock run")
    parser.add_argument("--noise-prompts", type=int, default=6)
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--modes",
        default=",".join(MODE_IDS),
        help=f"comma-separated decoding modes to time, of: {', '.join(MODE_IDS)}",
    )
    parser.add_argument(
        "--drafts",
        default=",".join(map(str, FIXED_DRAFTS)),
        help="comma-separated fixed draft counts to time beside vanilla and auto",
    )
    parser.add_argument("--skip-wallclock", action="store_true")
    parser.add_argument("--skip-noise", action="store_true")
    args = parser.parse_args(argv)
    modes = harness.str_list(args.modes)
    unknown = [m for m in modes if m not in MODE_IDS]
    if unknown or not modes:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODE_IDS)}")
    try:
        drafts = harness.int_list(args.drafts)
    except ValueError:
        parser.error(f"--drafts must be comma-separated ints, got {args.drafts!r}")
    if any(d < 1 or d > 16 for d in drafts):
        parser.error(f"--drafts must be in 1..16, got {drafts}")
    run = harness.build_run("cost_aware", args, modes=[MODE_IDS[m] for m in modes], drafts=drafts)
    if run.quick:
        run = run.with_sizes(
            prompts=1, noise_prompts=1, repeats=1, gen_length=32, block_length=32, drafts=[3]
        )
    names = ("prompts", "noise_prompts", "gen_length", "block_length", "repeats", "threads")
    harness.require_positive(parser, run, names)
    return run


def report_wallclock(run: Run, model, meta: dict) -> None:
    prompts = pick_prompts(model, run.prompts)
    meta = {
        **meta,
        "prompts": len(prompts),
        "repeats": run.repeats,
        "fixed_graphs": "DraftGraph.default(D), every filled node verified",
        "auto": f'max_drafts="auto" over DraftGraph.default({AUTO_POOL})',
        "speedup": "median over rounds of vanilla wall / config wall, same round",
    }
    rows = wallclock_rows(model, prompts, run)
    run.report(rows, WALLCLOCK_COLUMNS, key=("mode", "config"), meta=meta)


def report_noise(run: Run, model, meta: dict) -> None:
    prompts = pick_prompts(model, run.noise_prompts)
    meta = {
        **meta,
        "prompts": len(prompts),
        "cache": "dual",
        "graph": f"DraftGraph.default({NOISE_GRAPH}), every filled node verified",
        "seeds": "prompt k uses seed k",
    }
    rows = noise_rows(model, prompts, run)
    key = ("temperature", "filler")
    run.report(rows, NOISE_COLUMNS, key=key, meta=meta, name="cost_aware_noise")


def main(argv: Sequence[str] | None = None) -> int:
    run = build_run(argv)
    torch.set_num_threads(run.threads)
    model = load_model(run.model, dtype=torch.float32, backend="torch")
    meta = {
        "label": "MEASURED: CPU wall clock / NFE, PyTorch backend, float32",
        "model": run.model,
        "gen_length": run.gen_length,
        "block_length": run.block_length,
        "threads": run.threads,
    }
    if not run.skip_wallclock:
        report_wallclock(run, model, meta)
    if not run.skip_noise:
        report_noise(run, model, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
