"""Analytic performance model of a Spiffy verify step of LLaDA-8B on one H100 / H200.

THIS IS A MODEL, NOT A MEASUREMENT. It counts the bytes a forward pass moves through HBM and
the FLOPs it does, and turns them into a predicted time with a roofline whose ceilings are
vendor peak numbers times assumed achievable fractions (see `HARDWARE`). Nothing here ran on
a GPU; `benchmarks/graph_attention.py` and `benchmarks/marginals.py` measure on one.

A verify step with D drafts and block length L evaluates the root block and D draft copies:
- cached (Fast-dLLM dual cache, the exact mode): query rows (1 + D) * L, keys = C cached
  context rows (prefix + suffix) + (1 + D) * L fresh rows;
- uncached: query rows = key rows = C + (1 + D) * L (the whole packed sequence).
Every row that belongs to a block copy (root or draft) needs logits and marginals.

Predicted step time = sum over operators of max(bytes / BW_eff, FLOPs / FLOPS_eff)
(+ an optional launch cost per operator). The whole-forward roofline
max(total bytes / BW_eff, total FLOPs / FLOPS_eff) is reported beside it as a lower bound.

Run: `python -m benchmarks.perf_model [--quick]` (table, results/perf_model*.json, PNG).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Run
from benchmarks.roofline.acceptance import (
    block_time_ms,
    load_steps_per_forward,
    parse_steps_per_forward,
)
from benchmarks.roofline.hardware import (
    DEFAULT_COMPUTE_EFF,
    DEFAULT_MEMORY_EFF,
    GB,
    HARDWARE,
    LLADA_8B,
    LOGIT_BYTES,
    TFLOP,
    Hardware,
    ModelShape,
    StepShape,
)
from benchmarks.roofline.ops import (
    Op,
    Prediction,
    attention_cost,
    composition_passes,
    crossover_drafts,
    forward_ops,
    group_totals,
    marginals_bytes,
    predict,
)
from benchmarks.roofline.tables import attention_rows, marginals_rows, plot, step_rows
from benchmarks.timing import RESULTS_DIR, check_keys, format_table, write_results

__all__ = [
    "DEFAULT_COMPUTE_EFF",
    "DEFAULT_MEMORY_EFF",
    "GB",
    "HARDWARE",
    "LLADA_8B",
    "LOGIT_BYTES",
    "TFLOP",
    "Hardware",
    "ModelShape",
    "Op",
    "Prediction",
    "StepShape",
    "attention_cost",
    "attention_rows",
    "block_time_ms",
    "build_hardware",
    "composition_passes",
    "crossover_drafts",
    "forward_ops",
    "group_totals",
    "load_steps_per_forward",
    "main",
    "marginals_bytes",
    "marginals_rows",
    "parse_ints",
    "parse_steps_per_forward",
    "plot",
    "predict",
    "step_rows",
]


def build_hardware(names: Sequence[str], compute_eff: float, memory_eff: float) -> list[Hardware]:
    unknown = [n for n in names if n not in HARDWARE]
    if unknown:
        raise ValueError(f"--gpus: unknown {unknown}; expected some of {sorted(HARDWARE)}")
    return [
        Hardware(hw.name, hw.peak_tflops, hw.peak_tbps, compute_eff, memory_eff, hw.source)
        for hw in (HARDWARE[n] for n in names)
    ]


def parse_ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 0:
        raise ValueError(f"{name}: expected non-negative integers, got {text!r}")
    return values


def build_run(argv: Sequence[str] | None = None) -> Run:
    parser = harness.parser(__doc__, quick_help="fewer contexts and drafts")
    parser.add_argument("--gpus", type=harness.str_list, default="H100-SXM,H200-SXM")
    parser.add_argument("--contexts", default="512,1024,2048", help="context lengths C")
    parser.add_argument("--drafts", default="0,1,2,3,4,5,6,7,8,10,12,16", help="draft counts D")
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--compute-eff", type=float, default=DEFAULT_COMPUTE_EFF)
    parser.add_argument("--memory-eff", type=float, default=DEFAULT_MEMORY_EFF)
    parser.add_argument("--launch-us", type=float, default=0.0, help="cost per kernel launch")
    parser.add_argument("--sampling", action="store_true", help="temperature > 0 (Gumbel)")
    parser.add_argument(
        "--vanilla-steps", type=int, default=32, help="vanilla transitions per block"
    )
    parser.add_argument(
        "--acceptance-json",
        default=f"{RESULTS_DIR / 'nfe.json'},{RESULTS_DIR / 'wallclock.json'}",
        help="measured acceptance: the first of these JSON files that has steps per forward",
    )
    parser.add_argument(
        "--steps-per-forward",
        default=None,
        help="PLACEHOLDER acceptance 'D:spf,...' used only when no acceptance JSON has any",
    )
    parser.add_argument("--no-plot", action="store_true")
    run = harness.build_run("perf_model", parser.parse_args(argv))
    if run.quick:
        return run.with_sizes(contexts=[1024], drafts=[0, 3, 5, 8, 10])
    contexts, drafts = parse_ints(run.contexts, "--contexts"), parse_ints(run.drafts, "--drafts")
    return run.with_sizes(contexts=contexts, drafts=drafts)


def measured_acceptance(run: Run) -> tuple[dict[str, dict[int, float]], str]:
    """Steps per forward per cache mode, and where they come from."""
    # Acceptance per cache mode: rows of the cached model read dual-cache acceptance, rows of
    # the uncached model the no-cache one (the same when the JSON does not tell them apart).
    acceptance = {"dual": {}, "none": {}}
    acceptance_source = "none measured: speedup not predicted"
    for path in (Path(p.strip()) for p in run.acceptance_json.split(",") if p.strip()):
        if path.is_file():
            acceptance = {c: load_steps_per_forward(path, cache=c) for c in acceptance}
        if acceptance["dual"]:
            acceptance_source = f"measured on the bundled model: {path.name}"
            break
    if not acceptance["dual"] and run.steps_per_forward:
        placeholder = parse_steps_per_forward(run.steps_per_forward)
        acceptance = {"dual": placeholder, "none": placeholder}
        acceptance_source = "PLACEHOLDER given on the command line (not measured)"
    return acceptance, acceptance_source


def assumptions_of(run: Run, hardware, acceptance, acceptance_source) -> dict:
    """What the model assumed (written beside every table)."""
    return {
        "label": "MODELED, not measured: analytic bytes/FLOPs + roofline with assumed ceilings",
        "model": asdict(LLADA_8B),
        "params_total": LLADA_8B.total_params,
        "streamed_weight_GB": LLADA_8B.streamed_weight_bytes / GB,
        "hardware": {
            hw.name: {
                **asdict(hw),
                "eff_TFLOPs": hw.flops_per_s / TFLOP,
                "eff_TBps": hw.bytes_per_s / 1e12,
                "ridge_flop_per_byte": hw.ridge,
            }
            for hw in hardware
        },
        "block": run.block,
        "sampling": run.sampling,
        "launch_us": run.launch_us,
        "vanilla_steps_per_block": run.vanilla_steps,
        "acceptance": acceptance_source,
        "steps_per_forward": acceptance,
    }


def crossover_rows(hardware, contexts, run: Run) -> list[dict]:
    """Per GPU, context and cache mode: the draft count from which a step is compute-bound."""
    crossover = []
    for hw in hardware:
        for context in contexts:
            for cached in (True, False):
                crossover.append(
                    {
                        "gpu": hw.name,
                        "C": context,
                        "cached": cached,
                        "compute_bound_from_D": crossover_drafts(
                            LLADA_8B,
                            hw,
                            context=context,
                            block=run.block,
                            cached=cached,
                            sampling=run.sampling,
                        ),
                    }
                )
    return crossover


KEYS = {"perf_model": ("gpu", "cached", "C", "D"), "perf_model_crossover": ("gpu", "C", "cached")}
SHOWN = (
    "gpu C D query_rows total_GB total_TFLOP intensity t_mem_ms t_compute_ms t_step_ms "
    "bound step_cost_vs_D0 fused_saving_pct steps_per_forward speedup_per_block"
).split()


def model_tables(run: Run, hardware, acceptance) -> dict[str, list[dict]]:
    """Every table of the model: steps (dual cache, then no cache), the compute-bound
    crossover, the marginals and the attention."""
    drafts = sorted(set(run.drafts) | set(acceptance["dual"]) | set(acceptance["none"]))
    common = dict(
        contexts=run.contexts,
        drafts=drafts,
        block=run.block,
        vanilla_steps=run.vanilla_steps,
        sampling=run.sampling,
        launch_us=run.launch_us,
    )
    steps = [
        step_rows(LLADA_8B, hardware, cached=cached, steps_per_forward=acceptance[mode], **common)
        for cached, mode in ((True, "dual"), (False, "none"))
    ]
    attention = attention_rows(
        LLADA_8B, hardware, contexts=run.contexts, block=run.block, drafts=drafts
    )
    return {
        "perf_model": steps[0] + steps[1],
        "perf_model_crossover": crossover_rows(hardware, run.contexts, run),
        "perf_model_marginals": marginals_rows(LLADA_8B, hardware, block=run.block, drafts=drafts),
        "perf_model_attention": attention,
    }


def report(run: Run, tables: dict[str, list[dict]], assumptions: dict) -> None:
    for name, rows in tables.items():
        print(f"== {name} (MODELED) ==")
        check_keys(rows, KEYS.get(name, ()))
        if name == "perf_model":
            for label, cached in (("dual cache", True), ("no cache", False)):
                print(f"-- {label} --")
                print(format_table([r for r in rows if r["cached"] is cached], SHOWN))
        else:
            print(format_table(rows))
        print(f"wrote {write_results(name, rows, meta=assumptions, out_dir=run.results_dir)}")
    if not run.no_plot:
        cached_rows = [r for r in tables["perf_model"] if r["cached"] is True]
        png = plot(cached_rows, run.results_dir / "perf_model.png", assumptions["acceptance"])
        if png:
            print(f"wrote {png}")


def main(argv: Sequence[str] | None = None) -> int:
    run = build_run(argv)
    hardware = build_hardware(run.gpus, run.compute_eff, run.memory_eff)
    acceptance, acceptance_source = measured_acceptance(run)
    assumptions = assumptions_of(run, hardware, acceptance, acceptance_source)
    print("MODELED, not measured. Ceilings (vendor peak x assumed fraction):")
    for hw in hardware:
        print(
            f"  {hw.name}: {hw.flops_per_s / TFLOP:.0f} TFLOP/s, {hw.bytes_per_s / 1e12:.2f} TB/s"
            f" effective; ridge {hw.ridge:.0f} FLOP/byte  [{hw.source}]"
        )
    print(f"  acceptance: {acceptance_source}")
    report(run, model_tables(run, hardware, acceptance), assumptions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
