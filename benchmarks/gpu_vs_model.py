"""The GPU check's measurements held against the roofline model, row by row.

    python -m benchmarks.gpu_vs_model                       # reads benchmarks/results/gpu/
    python -m benchmarks.gpu_vs_model --gpu-dir DIR --hardware H200-SXM

Runs anywhere (no GPU): it reads the JSON written by `scripts/gpu_check.sh` and predicts each
measured quantity with the same operator model as `benchmarks/perf_model.py`
(max(bytes / BW_eff, FLOPs / FLOPS_eff) per operator, the ceilings in
`benchmarks/roofline/hardware.py`), then prints and writes ``measured_vs_modeled.json`` beside
the inputs. ``ratio`` = measured / modeled: 1.0 means the kernel runs at the model's assumed
85% of peak bandwidth or 70% of peak FLOP/s; above 1 it is slower than the model.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import Run
from benchmarks.roofline.hardware import HARDWARE, LLADA_8B, StepShape
from benchmarks.roofline.ops import (
    attention_cost,
    forward_ops,
    marginals_bytes,
    predict,
)

DEFAULT_DIR = Path(__file__).resolve().parent / "results" / "gpu"
COLUMNS = ("study", "shape", "method", "measured_ms", "modeled_ms", "ratio", "bound", "note")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _row(study, shape, method, measured_ms, modeled_ms, bound, note) -> dict:
    return dict(
        study=study,
        shape=shape,
        method=method,
        measured_ms=measured_ms,
        modeled_ms=modeled_ms,
        ratio=measured_ms / modeled_ms,
        bound=bound,
        note=note,
    )


def _roofline_ms(num_bytes: float, flops: float, hw) -> tuple[float, str]:
    t_mem, t_compute = num_bytes / hw.bytes_per_s, flops / hw.flops_per_s
    return max(t_mem, t_compute) * 1e3, "compute" if t_compute > t_mem else "memory"


def attention_rows(data: dict, profile: dict | None, hw) -> list[dict]:
    """One layer's attention at LLaDA-8B heads: the kernel and dense-mask SDPA."""
    block = data["meta"]["block"]
    device_ms = {}
    for row in (profile or {}).get("rows", []):
        if row.get("device_ms"):
            key = (row["cached"], row["context"], row["D"], row["method"])
            device_ms[key] = row["device_ms"]
    rows = []
    for row in data["rows"]:
        if row["method"] not in ("triton", "sdpa_dense_mask") or not row.get("ms"):
            continue
        step = StepShape(context=row["context"], block=block, drafts=row["D"], cached=row["cached"])
        num_bytes, flops = attention_cost(
            LLADA_8B, step, dense_mask=row["method"] == "sdpa_dense_mask"
        )
        modeled, bound = _roofline_ms(num_bytes, flops, hw)
        key = (row["cached"], row["context"], row["D"], row["method"])
        kernel_only = device_ms.get(key)
        note = (
            f"device-only {kernel_only:.4f} ms ({kernel_only / modeled:.1f}x)"
            if kernel_only
            else ""
        )
        rows.append(
            _row(
                "graph_attention",
                f"{'dual' if row['cached'] else 'no cache'} C{row['context']} D{row['D']}",
                row["method"],
                row["ms"],
                modeled,
                bound,
                note,
            )
        )
    return rows


def marginals_rows(data: dict, hw) -> list[dict]:
    rows = []
    for row in data["rows"]:
        if row["method"] != "triton" or not row.get("ms"):
            continue
        num_bytes = marginals_bytes(row["rows"], row["vocab"], sampling=row["T"] > 0)
        modeled, bound = _roofline_ms(num_bytes, 0.0, hw)
        rows.append(
            _row(
                "marginals",
                f"rows {row['rows']} V {row['vocab']} T {row['T']:g}",
                "triton",
                row["ms"],
                modeled,
                bound,
                f"{row.get('of_copy_bw', 0):.1%} of measured copy bandwidth",
            )
        )
    return rows


def verify_rows(data: dict, hw) -> list[dict]:
    """The study's 4-layer LLaDA-8B-wide forward (logits out, no marginals)."""
    meta = data["meta"]
    config = meta["config"]
    model = replace(LLADA_8B, n_layers=config["n_layers"])
    block, gen = meta["block"], meta["gen_length"]
    rows = []
    for row in data["rows"]:
        if row.get("study") != "forward" or row["method"] == "torch" or not row.get("ms"):
            continue
        # the block, the prompt and the rest of the generation (gen - block rows) as context
        step = StepShape(context=row["prompt"] + gen - block, block=block, drafts=row["D"])
        fused = row["method"] == "triton"
        ops = [op for op in forward_ops(model, step, fused=fused) if op.name != "marginals"]
        modeled = predict(ops, hw).t_step_ms
        rows.append(
            _row(
                "verify_forward",
                f"prompt {row['prompt']} D{row['D']}",
                row["method"],
                row["ms"],
                modeled,
                "",
                f"vs D0 measured {row['vs_d0']:.3f}",
            )
        )
    return rows


GOAL_COLUMNS = ("goal", "shape", "measured", "target", "met")


def goal_rows(attention: dict | None, marginals: dict | None, verify: dict | None) -> list[dict]:
    """Issue 24's goals, each measured against its target, from the same JSON."""
    rows = []
    by_shape: dict[tuple, dict[str, float]] = {}
    for row in (attention or {}).get("rows", []):
        if row.get("ms"):
            by_shape.setdefault((row["cached"], row["context"], row["D"]), {})[row["method"]] = row[
                "ms"
            ]
    for (cached, context, drafts), ms in sorted(by_shape.items()):
        shape = f"{'dual' if cached else 'no cache'} C{context} D{drafts}"
        for other, target in (("flex_block_mask", 1.3), ("sdpa_dense_mask", 2.0)):
            if "triton" in ms and other in ms:
                ratio = ms[other] / ms["triton"]
                rows.append(
                    dict(
                        goal=f"attention vs {other}",
                        shape=shape,
                        measured=ratio,
                        target=target,
                        met=ratio >= target,
                    )
                )
        if drafts > 0 and "triton" in ms and "separate_rows" in ms:
            ratio = ms["separate_rows"] / ms["triton"]
            rows.append(
                dict(
                    goal="attention vs separate rows",
                    shape=shape,
                    measured=ratio,
                    target=1.5,
                    met=ratio >= 1.5,
                )
            )
    for row in (marginals or {}).get("rows", []):
        if row["method"] == "triton" and row.get("of_copy_bw") is not None:
            rows.append(
                dict(
                    goal="marginals of copy bandwidth",
                    shape=f"rows {row['rows']} V {row['vocab']} T {row['T']:g}",
                    measured=row["of_copy_bw"],
                    target=0.85,
                    met=row["of_copy_bw"] >= 0.85,
                )
            )
    for row in (verify or {}).get("rows", []):
        if row.get("study") == "forward" and row["D"] == 8 and row["method"] == "triton":
            rows.append(
                dict(
                    goal="verify forward D8 / D0 (kernel)",
                    shape=f"prompt {row['prompt']}",
                    measured=row["vs_d0"],
                    target=1.3,
                    met=row["vs_d0"] <= 1.3,
                )
            )
    return rows


def build_run(argv=None) -> Run:
    parser = harness.parser(__doc__, quick=(), out_dir=())
    parser.add_argument("--gpu-dir", type=Path, default=DEFAULT_DIR, help="gpu_check results")
    parser.add_argument("--hardware", default="H200-SXM", choices=sorted(HARDWARE))
    args = parser.parse_args(argv)
    return harness.build_run("gpu_vs_model", args).with_sizes(out_dir=args.gpu_dir)


def measure(run: Run) -> tuple[list[dict], list[dict], dict]:
    """Measured / modeled rows, the goal rows and the measured results read (empty when no
    GPU result is there)."""
    hw = HARDWARE[run.hardware]
    found = {
        name: _load(run.out_dir / f"{name}.json")
        for name in ("graph_attention", "profile_graph_attention", "marginals", "verify_cost")
    }
    attention, marginals, verify = (
        found[n] for n in ("graph_attention", "marginals", "verify_cost")
    )
    rows: list[dict] = []
    if attention:
        rows += attention_rows(attention, found["profile_graph_attention"], hw)
    if marginals:
        rows += marginals_rows(marginals, hw)
    if verify:
        rows += verify_rows(verify, hw)
    return rows, goal_rows(attention, marginals, verify), found


def main(argv=None) -> int:
    run = build_run(argv)
    rows, goals, found = measure(run)
    if not rows:
        print(f"gpu_vs_model: no GPU results in {run.out_dir} (run scripts/gpu_check.sh)")
        return 2
    hw = HARDWARE[run.hardware]
    measured = found["graph_attention"] or found["marginals"] or found["verify_cost"]
    device = measured["machine"].get("device")
    meta = dict(
        measured_on=device,
        modeled_for=run.hardware,
        hardware=dict(eff_TBps=hw.bytes_per_s / 1e12, eff_TFLOPs=hw.flops_per_s / 1e12),
        ratio="measured / modeled (> 1: slower than the model)",
    )
    run.report(rows, COLUMNS, meta=meta, name="measured_vs_modeled")
    met = sum(row["met"] for row in goals)
    goal_meta = dict(measured_on=device, met=f"{met} of {len(goals)}")
    run.report(goals, GOAL_COLUMNS, key=("goal", "shape"), meta=goal_meta, name="gpu_goals")
    print(f"goals met: {met} of {len(goals)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
