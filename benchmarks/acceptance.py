"""Where Spiffy's acceptance is lost on the bundled model, and what the graph variants gain.

MEASURED on vanilla traces (`spiffy_triton.calibration.collect_traces`): greedy, one token per
step, block 32, `--gen-length` generated tokens, no cache (drafts as batch rows: exact), on
held-out arith and word prompts; graphs calibrated on calibration-split prompts of the same
kinds. Spiffy's NFE is the exact replay of its walk on the held-out traces
(`spiffy_triton.calibration.simulate`, equal to `generate`'s NFE in this mode).

1. Per step in the block (root with ``32 - k`` masked positions), what happens to the root
   with the default graph of `--drafts` nodes: no ranks (no drafts possible), next state not
   expressible (a committed token outside the top-4 of the stale marginals), the true next
   state not among the graph's nodes, or ``m >= 1`` states accepted; and the mean advance.
2. Per node of the default and the calibrated graph: how often its formula is on the true path
   and how often it is accepted.
3. Variants at D in {8, 10}: default graph; calibrated ("steps" objective) from top-1 tokens
   only (chains cut at the first rank-2+ token) and from the top-4; per phase of the block
   (2 and 4 ranges of the masked count); and the graph the same selector picks on the held-out
   traces themselves (its best case there: a ceiling estimate for calibration). NFE speedup over
   vanilla on held-out prompts.

    python -m benchmarks.acceptance [--quick] [--per-kind 10] [--calibration 20]

Writes benchmarks/results/acceptance.json and acceptance_loss.png.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.harness import Run
from spiffy_triton.calibration import (
    Traces,
    collect_traces,
    select_graph,
    select_phased_graph,
    simulate,
)
from spiffy_triton.graph import DraftGraph
from spiffy_triton.models import load_model
from spiffy_triton.training.tinydata import calibration_prompts, heldout_prompts

KINDS = ("arith", "word")
OUTCOMES = ("no ranks", "not expressible", "not in graph", "accepted")


def top1_only(traces: Traces) -> Traces:
    """The traces a top-1-token calibration sees: each chain cut before its first state that
    commits a token of rank 2 or more."""

    def cut(step):
        chain = []
        for formula in step.chain:
            if any(token_rank > 1 for _, token_rank in formula):
                break
            chain.append(formula)
        expressible = step.expressible
        if expressible and not chain:
            expressible = False
        return dataclasses.replace(step, chain=tuple(chain), expressible=expressible)

    blocks = [
        dataclasses.replace(
            b,
            steps=tuple(cut(s) for s in b.steps),
            start_variants=tuple(cut(s) for s in b.start_variants),
        )
        for b in traces.blocks
    ]
    return dataclasses.replace(traces, blocks=blocks, max_token_rank=1)


def accepted(chain, nodes) -> int:
    m = 0
    while m < len(chain) and chain[m] in nodes:
        m += 1
    return m


def outcome(step, nodes) -> str:
    if not step.ranked:
        return "no ranks"
    if step.expressible is False:
        return "not expressible"
    if not step.chain or step.chain[0] not in nodes:
        return "not in graph"  # (an empty chain: the next state fills the block)
    return "accepted"


def per_step_rows(traces: Traces, graph: DraftGraph) -> list[dict]:
    nodes = set(graph.nodes)
    by_k: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    advance: dict[int, int] = collections.Counter()
    for step in traces.steps:
        k = traces.block_length - step.num_masked
        by_k[k][outcome(step, nodes)] += 1
        advance[k] += 1 + accepted(step.chain, nodes)
    rows = []
    for k in sorted(by_k):
        total = sum(by_k[k].values())
        row = {"step_in_block": k, "roots": total, "mean_advance": advance[k] / total}
        row.update({name: by_k[k][name] / total for name in OUTCOMES})
        rows.append(row)
    return rows


def per_node_rows(traces: Traces, graph: DraftGraph, label: str) -> list[dict]:
    nodes = set(graph.nodes)
    on_path, taken = collections.Counter(), collections.Counter()
    for step in traces.steps:
        on_path.update(step.chain)
        taken.update(step.chain[: accepted(step.chain, nodes)])
    roots = sum(s.ranked for s in traces.steps)
    return [
        {
            "graph": label,
            "node": i,
            "formula": " ".join(f"({p},{t})" for p, t in formula),
            "on_true_path": on_path[formula] / roots,
            "accepted": taken[formula] / roots,
        }
        for i, formula in enumerate(graph.nodes)
    ]


def variant_rows(cal: Traces, held: Traces, budgets) -> list[dict]:
    cal_top1 = top1_only(cal)
    rows = []
    for d in budgets:
        graphs = {
            "default": DraftGraph.default(d),
            "calibrated, top-1 tokens": select_graph(cal_top1, d),
            "calibrated, top-4 tokens": select_graph(cal, d),
            "calibrated, 2 phases": select_phased_graph(cal, d, 2),
            "calibrated, 4 phases": select_phased_graph(cal, d, 4),
            # Not a calibration: picked on the held-out traces themselves, the selector's best
            # case there (a ceiling estimate for calibrated graphs; the selector is greedy).
            "selected on held-out (bound)": select_graph(held, d),
        }
        base = None
        for name, graph in graphs.items():
            sim = simulate(held, graph)
            speedup = held.vanilla_nfe / sim["nfe"]
            base = base or speedup
            rows.append(
                {
                    "D": d,
                    "graph": name,
                    "vanilla_nfe": held.vanilla_nfe,
                    "nfe": sim["nfe"],
                    "nfe_speedup": speedup,
                    "vs_default": speedup / base,
                    "mean_advance": sim["mean_advance"],
                }
            )
    return rows


def plot(step_rows, node_rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=80)
    ks = [r["step_in_block"] for r in step_rows]
    bottom = [0.0] * len(ks)
    for name in OUTCOMES:
        values = [r[name] for r in step_rows]
        left.bar(ks, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    twin = left.twinx()
    twin.plot(ks, [r["mean_advance"] for r in step_rows], "k.-", label="mean advance")
    twin.set_ylabel("steps per forward at this root")
    left.set_xlabel("step in block (decoded positions of the root)")
    left.set_ylabel("share of roots")
    left.set_title("default graph: outcome per step in block")
    left.legend(fontsize=7, loc="lower left")
    labels = sorted({r["graph"] for r in node_rows})
    width = 0.8 / len(labels)
    for j, (label, color) in enumerate(zip(labels, ("tab:blue", "tab:orange", "tab:green"))):
        rows = [r for r in node_rows if r["graph"] == label]
        xs = [r["node"] + j * width for r in rows]
        on_path = [r["on_true_path"] for r in rows]
        right.bar(xs, on_path, width, color=color, alpha=0.3)
        right.bar(xs, [r["accepted"] for r in rows], width, color=color, label=label)
    right.set_xlabel("node (light: on the true path, dark: accepted)")
    right.set_ylabel("share of ranked roots")
    right.set_title("per node")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_run(argv=None) -> Run:
    parser = harness.parser(__doc__, quick_help="smoke configuration")
    parser.add_argument("--per-kind", type=int, default=10, help="held-out prompts per kind")
    parser.add_argument("--calibration", type=int, default=20, help="calibration prompts per kind")
    parser.add_argument("--gen-length", type=int, default=96)
    parser.add_argument("--drafts", type=int, default=8, help="D of the per-step analysis")
    parser.add_argument("--model", default="tiny", help="bundled name or checkpoint directory")
    run = harness.build_run("acceptance", parser.parse_args(argv), budgets=(8, 10))
    if run.quick:
        return run.with_sizes(per_kind=1, calibration=2, gen_length=32, budgets=(8,))
    return run


def measure(run: Run) -> tuple[list[dict], dict]:
    """The graph variants' rows; the per-step and per-node analyses go to the meta."""
    torch.set_num_threads(1)
    model = load_model(run.model, dtype=torch.float32, backend="torch")
    settings = {"gen_length": run.gen_length, "block_length": 32, "backend": "torch"}
    held_set, cal_set = heldout_prompts(run.per_kind), calibration_prompts(run.calibration)
    held = collect_traces(model, [e.prompt for k in KINDS for e in held_set[k]], **settings)
    cal = collect_traces(model, [e.prompt for k in KINDS for e in cal_set[k]], **settings)
    default, calibrated = DraftGraph.default(run.drafts), select_graph(cal, run.drafts)
    node_rows = per_node_rows(held, default, "default")
    node_rows += per_node_rows(held, calibrated, "calibrated")
    meta = {
        "model": run.model,
        "decode": {**settings, "cache": None, "verify": "batch (exact)", "steps": "1/step"},
        "kinds": KINDS,
        "heldout_per_kind": run.per_kind,
        "calibration_per_kind": run.calibration,
        "heldout_traces": held.summary(),
        "per_step_in_block": per_step_rows(held, default),
        "per_node": node_rows,
        "quick": run.quick,
    }
    return variant_rows(cal, held, run.budgets), meta


def main(argv=None) -> int:
    run = build_run(argv)
    rows, meta = measure(run)
    run.report(rows, key=("D", "graph"), meta=meta)
    step_rows = meta["per_step_in_block"]
    picture = run.results_dir / "acceptance_loss.png"
    plot(step_rows, meta["per_node"], picture)
    print(f"wrote {picture}")
    lost = {name: sum(r[name] * r["roots"] for r in step_rows) for name in OUTCOMES}
    total = sum(lost.values())
    print("roots (default graph): " + ", ".join(f"{k} {v / total:.1%}" for k, v in lost.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
