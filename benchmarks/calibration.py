"""Calibrated against default draft graphs: NFE speedup, calibration time, dynamic pruning.

MEASURED on the bundled trained model (a random-weight stand-in of the same shape, flagged in
the output, when the checkpoint is absent). Greedy decoding, one token per step, no cache
(drafts verified as batch rows: exact), block 32.

1. Calibration: vanilla traces of `--calibration-prompts` arithmetic prompts of the
   calibration split; for D in {3, 5, 8, 10}, graphs by the paper's degree-1 accumulation
   ("degree1"), by expected steps per forward ("steps"), and "steps" per phase (2 phases of the
   masked count). Calibration time = trace collection (shared) + selection.
2. NFE speedup (vanilla NFE / Spiffy NFE) of default, degree-1, steps and per-phase graphs on
   held-out prompts of the same kind (arithmetic) and of another (code). Spiffy NFE is the
   replay of Spiffy's walk on the held-out vanilla traces (`spiffy_triton.calibrate.simulate`),
   which is exact in this mode; `--real-check` prompts per kind are also decoded by
   `generate` with every graph, and the table reports real NFE == replayed NFE and identical
   tokens for them.
3. Pruning: the calibrated "steps" graph of D = 10 with max_drafts in {8, 5, 3, 2, 1}, real
   `generate` runs on held-out arithmetic, with the package's parent-capped scoring
   (`spiffy_triton.pruning`) and with decode's built-in max_drafts (geometric mean of the
   node's own pairs): NFE, verified draft rows, tokens equal to vanilla.

    python benchmarks/calibration.py [--quick]

Writes benchmarks/results/calibration.json (and calibration_pruning.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.timing import report
from spiffy_triton.calibrate import (
    Traces,
    collect_traces,
    select_graph,
    select_phased_graph,
    simulate,
)
from spiffy_triton.decode import generate
from spiffy_triton.graph import DraftGraph
from spiffy_triton.models import BUNDLED_MODELS, CharTokenizer, LLaDAModel, load_model
from spiffy_triton.pruning import pruning_filler
from spiffy_triton.tinydata import calibration_prompts, heldout_prompts

GRAPH_KINDS = ("default", "degree1", "steps", "steps-2phase")


def load_bench_model(path: str | None = None):
    """The checkpoint at `path`, else the bundled trained model, else a random-weight model
    of its shape (flagged)."""
    if path is not None:
        return load_model(path, dtype=torch.float32, backend="torch"), f"checkpoint {path}"
    if os.path.isfile(os.path.join(BUNDLED_MODELS["tiny"], "MODEL_CARD.md")):
        return load_model("tiny", dtype=torch.float32, backend="torch"), "tiny (trained)"
    from spiffy_triton.train_tiny import tiny_config

    tokenizer = CharTokenizer()
    model = LLaDAModel(tiny_config(tokenizer), backend="torch", tokenizer=tokenizer)
    return model.init_weights(0).eval(), "random-weight stand-in (trained model not found)"


def first_prompts(traces: Traces, n: int) -> Traces:
    """The traces of the first `n` prompts."""
    per_prompt = len(traces.blocks) // traces.num_prompts
    return dataclasses.replace(traces, blocks=traces.blocks[: n * per_prompt], num_prompts=n)


def build_graphs(traces: Traces, budgets):
    graphs, select_s = {}, {}
    for d in budgets:
        graphs[("default", d)] = DraftGraph.default(d)
        for kind in GRAPH_KINDS[1:]:
            start = time.perf_counter()
            if kind == "steps-2phase":
                graphs[(kind, d)] = select_phased_graph(traces, d, 2, objective="steps")
            else:
                graphs[(kind, d)] = select_graph(traces, d, objective=kind)
            select_s[(kind, d)] = time.perf_counter() - start
    return graphs, select_s


def decode_all(model, prompts, settings, graph=None, **kwargs):
    outs = []
    for prompt in prompts:
        ids = torch.tensor([model.tokenizer.encode(prompt)], dtype=torch.int64)
        outs.append(generate(model, ids, graph=graph, **settings, **kwargs))
    return outs


def real_check(model, prompts, settings, traces, graph, vanilla) -> bool:
    """Decode `prompts` with `graph`: NFE equal to the replay and tokens equal to vanilla."""
    filler = graph.filler(backend="torch") if hasattr(graph, "phases") else None
    outs = decode_all(model, prompts, settings, graph, filler=filler)
    same_tokens = all(torch.equal(o.tokens, v.tokens) for o, v in zip(outs, vanilla))
    return same_tokens and sum(o.nfe for o in outs) == simulate(traces, graph)["nfe"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke configuration (seconds)")
    parser.add_argument("--calibration-prompts", type=int, default=30)
    parser.add_argument("--heldout", type=int, default=12, help="held-out prompts per kind")
    parser.add_argument("--real-check", type=int, default=2, help="prompts per kind decoded")
    parser.add_argument("--pruning-prompts", type=int, default=4)
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--model", default=None, help="checkpoint directory (default: tiny)")
    args = parser.parse_args(argv)
    budgets, max_drafts_list = (3, 5, 8, 10), (8, 5, 3, 2, 1)
    if args.quick:
        args.calibration_prompts, args.heldout, args.real_check, args.pruning_prompts = 3, 1, 1, 1
        args.gen_length = 32
        budgets, max_drafts_list = (3, 8), (1,)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, model_name = load_bench_model(args.model)
    settings = {
        "gen_length": args.gen_length,
        "block_length": args.block_length,
        "backend": "torch",
    }

    calib = [e.prompt for e in calibration_prompts(args.calibration_prompts)["arith"]]
    held = heldout_prompts(args.heldout)
    eval_sets = {
        "arith": [e.prompt for e in held["arith"]],
        "code": [e.prompt for e in held["code"]],
    }

    cal_traces = collect_traces(model, calib, progress=True, **settings)
    graphs, select_s = build_graphs(cal_traces, budgets)
    eval_traces = {
        kind: collect_traces(model, prompts, progress=True, **settings)
        for kind, prompts in eval_sets.items()
    }

    rows = []
    for kind, traces in eval_traces.items():
        check_prompts = eval_sets[kind][: args.real_check]
        check_traces = first_prompts(traces, len(check_prompts))
        check_vanilla = decode_all(model, check_prompts, settings)
        for d in budgets:
            for graph_kind in GRAPH_KINDS:
                graph = graphs[(graph_kind, d)]
                sim = simulate(traces, graph)
                rows.append(
                    {
                        "eval": kind,
                        "D": d,
                        "graph": graph_kind,
                        "vanilla_nfe": traces.vanilla_nfe,
                        "nfe": sim["nfe"],
                        "nfe_speedup": traces.vanilla_nfe / sim["nfe"],
                        "mean_advance": sim["mean_advance"],
                        "in_sample_speedup": cal_traces.vanilla_nfe
                        / simulate(cal_traces, graph)["nfe"],
                        "calib_s": None
                        if graph_kind == "default"
                        else cal_traces.time_s + select_s[(graph_kind, d)],
                        "real_check": real_check(
                            model, check_prompts, settings, check_traces, graph, check_vanilla
                        ),
                    }
                )

    gains = {}
    for kind in eval_traces:
        for graph_kind in GRAPH_KINDS[1:]:
            ratios = []
            for d in budgets:
                by = {r["graph"]: r for r in rows if r["eval"] == kind and r["D"] == d}
                ratios.append(by[graph_kind]["nfe_speedup"] / by["default"]["nfe_speedup"])
            gains[f"{kind}/{graph_kind}"] = {
                "min": min(ratios),
                "mean": sum(ratios) / len(ratios),
                "max": max(ratios),
            }
    meta = {
        "model": model_name,
        "decode": {**settings, "steps": "gen_length (1 token/step)", "cache": None},
        "calibration_prompts": len(calib),
        "heldout_per_kind": args.heldout,
        "real_check_prompts_per_kind": args.real_check,
        "trace_summary": cal_traces.summary(),
        "collect_time_s": cal_traces.time_s,
        "speedup_over_default": gains,
        "quick": args.quick,
    }
    columns = [
        "eval",
        "D",
        "graph",
        "vanilla_nfe",
        "nfe",
        "nfe_speedup",
        "mean_advance",
        "in_sample_speedup",
        "calib_s",
        "real_check",
    ]
    report("calibration", rows, columns, meta=meta)
    print(f"model: {model_name}")
    for key, g in gains.items():
        print(
            f"{key}: NFE speedup / default's speedup = {g['mean']:.3f} on average over D "
            f"(min {g['min']:.3f}, max {g['max']:.3f})"
        )

    # Pruning: real decoding with the D = 10 (quick: largest D) calibrated graph.
    d = max(budgets)
    graph = graphs[("steps", d)]
    prompts = eval_sets["arith"][: args.pruning_prompts]
    vanilla = decode_all(model, prompts, settings)
    vanilla_nfe = sum(o.nfe for o in vanilla)
    prune_rows = []
    for max_drafts in (None, *max_drafts_list):
        scorers = (
            [("none", {})]
            if max_drafts is None
            else [
                ("parent-capped", {"filler": pruning_filler(max_drafts, backend="torch")}),
                ("own-pairs", {"max_drafts": max_drafts}),
            ]
        )
        for scorer, kwargs in scorers:
            outs = decode_all(model, prompts, settings, graph, **kwargs)
            nfe = sum(o.nfe for o in outs)
            verified = sum(o.stats.drafts_verified for o in outs)
            prune_rows.append(
                {
                    "D": d,
                    "max_drafts": max_drafts,
                    "scoring": scorer,
                    "vanilla_nfe": vanilla_nfe,
                    "nfe": nfe,
                    "nfe_speedup": vanilla_nfe / nfe,
                    "verified_rows": verified,
                    "rows_per_forward": 1 + verified / nfe,
                    "same_tokens": all(
                        torch.equal(o.tokens, v.tokens) for o, v in zip(outs, vanilla)
                    ),
                }
            )
    report(
        "calibration_pruning",
        prune_rows,
        meta={"model": model_name, "graph": graph.name, "prompts": len(prompts), **settings},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
