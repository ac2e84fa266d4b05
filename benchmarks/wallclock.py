"""CPU wall clock of Spiffy against vanilla decoding on the bundled model (PyTorch backend).

MEASURED on this machine. For each configuration - vanilla, and Spiffy with D drafts per
forward (D = 0 runs all of Spiffy's machinery - P_last marginals, drafting, layout, walk - with
no draft verified) - it decodes the same held-out prompts with `spiffy_triton.generate` and
reports tokens per second, the time per phase (model forward, drafting, layout, marginals, walk:
`GenerateOutput.stats.time_s`), and Spiffy's overhead (the non-model phases) as a share of model
time. Configurations run interleaved at the finest grain: each round decodes every prompt with
every configuration back to back (in an order rotated each round), since this machine's speed
drifts by 10-20% over seconds. Tokens/s and the phase split are those of each configuration's
round with the median wall time (so the phases add up); the speedup is the median over rounds
of vanilla's wall time over the configuration's in the same round (side by side), with the
quartiles of those per-round ratios.

    python -m benchmarks.wallclock [--quick] [--drafts 0,3,5,8,10] [--repeats 3] [--cache dual]

Writes benchmarks/results/wallclock.json and wallclock.png.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.harness import Run
from benchmarks.timing import percentiles
from spiffy_triton import DraftGraph, generate, load_model
from spiffy_triton.decoding import PHASES
from spiffy_triton.training.tinydata import heldout_prompts

SPIFFY_PHASES = tuple(p for p in PHASES if p != "model")


def no_drafts_filler(graph, root_state, p_last, mask_id):
    """A draft filler that proposes nothing: Spiffy's loop with zero drafts verified."""
    return []


@dataclass(frozen=True)
class Config:
    name: str
    drafts: int | None  # None: vanilla

    def generate_kwargs(self, graph_template: str | None) -> dict:
        if self.drafts is None:
            return {}
        if self.drafts == 0:
            return {"graph": DraftGraph.default(1), "filler": no_drafts_filler, "max_drafts": None}
        if graph_template:
            return {"graph": graph_template.format(D=self.drafts), "max_drafts": None}
        return {"graph": DraftGraph.default(self.drafts), "max_drafts": None}


def pick_prompts(model, count: int) -> list[torch.Tensor]:
    """`count` held-out prompts, taking the kinds (arithmetic, word problems, code) in turn."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer.json; wallclock needs text prompts")
    per_kind = heldout_prompts(n_per_kind=max(1, -(-count // 3)))
    mixed = [ex for group in zip(*per_kind.values()) for ex in group][:count]
    return [torch.tensor([model.tokenizer.encode(ex.prompt)], dtype=torch.long) for ex in mixed]


def new_run() -> dict:
    return {
        "wall_s": 0.0,
        "phases": dict.fromkeys((*PHASES, "total"), 0.0),
        "nfe": 0,
        "steps": 0,
        "drafts_verified": 0,
        "tokens": [],
    }


def run_prompt(model, prompt, config: Config, args, run: dict) -> None:
    """Decode `prompt` once with `config`, adding its wall time, phase times (s), counts and
    token ids to `run`."""
    kwargs = config.generate_kwargs(args.graph_template)
    start = time.perf_counter()
    out = generate(
        model,
        prompt,
        gen_length=args.gen_length,
        block_length=args.block_length,
        cache=args.cache,
        backend="torch",
        **kwargs,
    )
    run["wall_s"] += time.perf_counter() - start
    for phase in run["phases"]:
        run["phases"][phase] += out.stats.time_s.get(phase, 0.0)
    run["nfe"] += out.nfe
    run["steps"] += out.steps
    run["drafts_verified"] += out.stats.drafts_verified
    run["tokens"].append(out.tokens)


def measure(model, prompts, configs: Sequence[Config], args) -> dict[str, list[dict]]:
    """Warm up each configuration once, then `args.repeats` rounds. A round decodes every
    prompt with every configuration, the configurations back to back per prompt (in an order
    rotated each round): this machine's speed drifts by 10-20% over seconds, and neighbours in
    time see the same speed."""
    runs: dict[str, list[dict]] = {c.name: [] for c in configs}
    for config in configs:
        warm = new_run()
        for prompt in prompts:
            run_prompt(model, prompt, config, args, warm)
    for r in range(args.repeats):
        shift = r % len(configs)
        order = configs[shift:] + configs[:shift]
        rounds = {c.name: new_run() for c in configs}
        for prompt in prompts:
            for config in order:
                run_prompt(model, prompt, config, args, rounds[config.name])
        for config in configs:
            runs[config.name].append(rounds[config.name])
    return runs


def median_run(reps: list[dict]) -> dict:
    """The repeat with the median wall time (the lower middle one for an even count), so that
    its phase split adds up to its total."""
    ordered = sorted(reps, key=lambda rep: rep["wall_s"])
    return ordered[(len(ordered) - 1) // 2]


def summarize(runs: dict[str, list[dict]], configs: Sequence[Config], args, n_prompts: int):
    vanilla = runs["vanilla"]
    generated = n_prompts * args.gen_length
    vanilla_median = median_run(vanilla)
    vanilla_forward_ms = vanilla_median["phases"]["model"] / vanilla_median["nfe"] * 1e3
    # Both decoders make the same transitions, so vanilla's non-model time (marginals, rule,
    # layout) is the baseline; Spiffy's own overhead is what it adds on top of it.
    vanilla_rest_ms = sum(vanilla_median["phases"][p] for p in SPIFFY_PHASES) / n_prompts * 1e3
    rows = []
    for config in configs:
        reps = runs[config.name]
        middle = median_run(reps)
        per_call = {phase: t / n_prompts * 1e3 for phase, t in middle["phases"].items()}
        model_ms = per_call["model"]
        spiffy_ms = sum(per_call[p] for p in SPIFFY_PHASES)
        forward_ms = middle["phases"]["model"] / middle["nfe"] * 1e3
        ratios = sorted(v["wall_s"] / rep["wall_s"] for v, rep in zip(vanilla, reps))
        row = {
            "config": config.name,
            "D": config.drafts,
            "tokens_per_s": generated / middle["wall_s"],
            "speedup": statistics.median(ratios),
            # the middle half of the per-round ratios: how far one round's ratio strays
            "speedup_q25": _quantile(ratios, 0.25),
            "speedup_q75": _quantile(ratios, 0.75),
            "nfe": middle["nfe"],
            "steps_per_forward": middle["steps"] / middle["nfe"],
            "drafts_per_forward": middle["drafts_verified"] / middle["nfe"],
            "same_tokens_as_vanilla": all(
                torch.equal(a, b) for a, b in zip(middle["tokens"], vanilla_median["tokens"])
            ),
            "forward_ms": forward_ms,
            "forward_cost_vs_vanilla": forward_ms / vanilla_forward_ms,
            **{f"{phase}_ms": per_call[phase] for phase in PHASES},
            "other_ms": per_call["total"] - sum(per_call[p] for p in PHASES),
            "total_ms": per_call["total"],
            "overhead_pct_of_model": 100.0 * spiffy_ms / model_ms if model_ms > 0 else None,
            "added_vs_vanilla_pct_of_model": (
                100.0 * (spiffy_ms - vanilla_rest_ms) / model_ms if model_ms > 0 else None
            ),
            "wall_s_min": min(rep["wall_s"] for rep in reps),
            "wall_s_max": max(rep["wall_s"] for rep in reps),
            **percentiles([rep["wall_s"] * 1e3 for rep in reps]),
        }
        rows.append(row)
    return rows


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile `q` of the sorted list `ordered`."""
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def plot(rows: list[dict], out_path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [r["config"] for r in rows]
    fig, (ax_rate, ax_split) = plt.subplots(1, 2, figsize=(11, 4))
    ax_rate.bar(names, [r["tokens_per_s"] for r in rows], color="tab:blue")
    for x, r in enumerate(rows):
        ax_rate.annotate(f"{r['speedup']:.2f}x", (x, r["tokens_per_s"]), ha="center", va="bottom")
    ax_rate.set(ylabel="tokens / s (median)", title=f"MEASURED: {title}")
    bottom = [0.0] * len(rows)
    for phase in (*PHASES, "other"):
        values = [r[f"{phase}_ms"] for r in rows]
        ax_split.bar(names, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax_split.set(ylabel="ms per generate call (median)", title="time per phase")
    ax_split.legend(fontsize=7)
    for ax in (ax_rate, ax_split):
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def parse_drafts(text: str) -> list[int]:
    try:
        drafts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"--drafts: expected comma-separated integers, got {text!r}") from exc
    if not drafts or any(not 0 <= d <= 16 for d in drafts):
        raise ValueError(f"--drafts: expected integers in 0..16, got {text!r}")
    return sorted(set(drafts))


COLUMNS = [
    "config", "tokens_per_s", "speedup", "nfe", "steps_per_forward", "same_tokens_as_vanilla",
    "forward_ms", "forward_cost_vs_vanilla",
    *(f"{p}_ms" for p in PHASES), "other_ms", "overhead_pct_of_model",
    "added_vs_vanilla_pct_of_model",
]  # fmt: skip


def build_run(argv: Sequence[str] | None = None) -> Run:
    parser = harness.parser(__doc__, quick_help="1 prompt, 32 tokens, 2 repeats", repeats=3)
    parser.add_argument("--model", default="tiny", help='"tiny" or a LLaDA checkpoint dir')
    parser.add_argument("--drafts", default="0,3,5,8,10")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--cache", choices=("none", "prefix", "dual"), default="dual")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--graph-template", default=None, help="graph JSON path with {D}; default: built-in graphs"
    )
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    drafts = parse_drafts(args.drafts)
    run = harness.build_run(
        "wallclock", args, drafts=drafts, cache=None if args.cache == "none" else args.cache
    )
    if run.quick:
        quick_drafts = [d for d in drafts if d in (0, 3)] or drafts[:1]
        run = run.with_sizes(
            prompts=1, gen_length=32, block_length=32, repeats=2, drafts=quick_drafts
        )
    harness.require_positive(
        parser, run, ("prompts", "gen_length", "block_length", "repeats", "threads")
    )
    return run


def measure_rows(run: Run) -> tuple[list[dict], dict]:
    torch.set_num_threads(run.threads)
    model = load_model(run.model, dtype=torch.float32, backend="torch")
    prompts = pick_prompts(model, run.prompts)
    configs = [Config("vanilla", None)] + [Config(f"spiffy D={d}", d) for d in run.drafts]
    rows = summarize(measure(model, prompts, configs, run), configs, run, len(prompts))
    meta = {
        "label": "MEASURED: CPU wall clock, PyTorch backend, float32",
        "model": run.model,
        "prompts": len(prompts),
        "gen_length": run.gen_length,
        "block_length": run.block_length,
        "steps": run.gen_length,
        "cache": run.cache or "none",
        "repeats": run.repeats,
        "threads": run.threads,
        "graphs": run.graph_template or "DraftGraph.default(D)",
        "D=0": "Spiffy loop with a filler that proposes no draft",
        "phase_times": "of the repeat with the median wall time, per generate call (ms)",
        "speedup": "median over repeats of vanilla wall / config wall, same round",
        "p20_ms": "p20 / p50 / p80 of the rounds' wall time (all prompts, ms)",
    }
    return rows, meta


def main(argv: Sequence[str] | None = None) -> int:
    run = build_run(argv)
    rows, meta = measure_rows(run)
    print(f"== wallclock (MEASURED, {meta['cache']} cache, {run.threads} thread(s)) ==")
    run.report(rows, COLUMNS, key=("config",), meta=meta, name="wallclock")
    if not run.no_plot:
        title = f"{run.model}, {meta['cache']} cache, gen {run.gen_length}"
        png = plot(rows, run.results_dir / "wallclock.png", title)
        if png:
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
