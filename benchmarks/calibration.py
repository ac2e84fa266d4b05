"""Calibrated against default draft graphs: NFE speedup, calibration time, dynamic pruning.

MEASURED on the bundled trained model (a random-weight stand-in of the same shape, flagged in
the output, when the checkpoint is absent). Greedy decoding, no cache (drafts verified as batch
rows: exact), block 32, 64 generated tokens, under three transition rules: one token per step
("1/step", LLaDA's default schedule), two tokens per step ("2/step"), and Fast-dLLM's threshold
rule with tau = 0.9 ("thr0.9").

1. Calibration, per rule: vanilla traces of `--calibration-prompts` arith and as many word
   prompts of the calibration split; for D in {3, 5, 8, 10}, graphs by the paper's degree-1
   accumulation ("degree1"), by expected steps per forward ("steps"), and "steps" per phase
   (2 ranges of the masked count, "steps-2phase"). calib_s = trace collection + selection.
2. NFE speedup (vanilla NFE of the same rule / Spiffy NFE) of the default graphs and the
   calibrated ones on held-out prompts of each of those kinds (arith, word). Spiffy
   NFE is the replay of Spiffy's walk on the held-out vanilla traces
   (`spiffy_triton.calibration.simulate`), exact in this mode; `real_check` decodes
   `--real-check` prompts per kind with `generate` at the largest D and says whether the real
   NFE equals the replay and the tokens equal vanilla's.
3. Pruning: the calibrated "steps" graph of D = 10 (first rule) with max_drafts in
   {8, 5, 3, 2, 1}, real `generate` runs on held-out arithmetic, with the package's
   parent-capped scoring (`spiffy_triton.decoding.pruning`), with decode's built-in max_drafts
   (geometric mean of the node's own pairs), and, for comparison, the calibrated graph of
   max_drafts nodes verified whole ("static graph"): NFE, verified draft rows, tokens equal
   to vanilla.

    python -m benchmarks.calibration [--quick] [--rules 1/step,2/step,thr0.9] [--model DIR]
                                     [--out-dir DIR]

Writes benchmarks/results/calibration.json, calibration_pruning.json and a picture of the
calibrated D = 10 graph with its calibration counts, calibration_graph.png.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.harness import Run
from spiffy_triton.calibration import (
    Traces,
    collect_traces,
    node_counts,
    select_graph,
    select_phased_graph,
    simulate,
)
from spiffy_triton.calibration.drawing import draw_graph
from spiffy_triton.decoding import generate
from spiffy_triton.decoding.drafting import phased_filler
from spiffy_triton.decoding.pruning import pruning_filler
from spiffy_triton.graph import DraftGraph, PhasedDraftGraph
from spiffy_triton.models import CharTokenizer, LLaDAModel, load_model
from spiffy_triton.training.tinydata import calibration_prompts, heldout_prompts

GRAPH_KINDS = ("default", "degree1", "steps", "steps-2phase")
# The kinds the bundled model answers right: calibration and held-out prompts of both.
EVAL_KINDS = ("arith", "word")


def load_bench_model(path: str | None = None):
    """The checkpoint at `path`, else the bundled trained model, else a random-weight model
    of its shape (flagged in the results)."""
    if path is not None:
        return load_model(path, dtype=torch.float32, backend="torch"), f"checkpoint {path}"
    try:
        return load_model("tiny", dtype=torch.float32, backend="torch"), "tiny (bundled, trained)"
    except FileNotFoundError:
        from spiffy_triton.training.train_tiny import tiny_config

        tokenizer = CharTokenizer()
        model = LLaDAModel(tiny_config(tokenizer), backend="torch", tokenizer=tokenizer)
        return model.init_weights(0).eval(), "random-weight stand-in (bundled model missing)"


def checkpoint_sha256(path: str | None) -> str | None:
    """sha256 of the checkpoint's weights (which model the numbers are from)."""
    import hashlib

    from spiffy_triton.models import BUNDLED_MODELS

    weights = Path(path or BUNDLED_MODELS["tiny"]) / "model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None


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
    """`generate` on every prompt; with a graph, every filled node is verified unless
    `kwargs` say otherwise (not the cost-aware "auto" budget: NFE is the measure here)."""
    if graph is not None:
        kwargs.setdefault("max_drafts", None)
    outs = []
    for prompt in prompts:
        ids = torch.tensor([model.tokenizer.encode(prompt)], dtype=torch.int64)
        outs.append(generate(model, ids, graph=graph, **settings, **kwargs))
    return outs


def real_check(model, prompts, settings, traces, graph, vanilla) -> bool:
    """Decode `prompts` with `graph`: NFE equal to the replay and tokens equal to vanilla."""
    filler = phased_filler(graph, backend="torch") if isinstance(graph, PhasedDraftGraph) else None
    outs = decode_all(model, prompts, settings, graph, filler=filler)
    same_tokens = all(torch.equal(o.tokens, v.tokens) for o, v in zip(outs, vanilla))
    return same_tokens and sum(o.nfe for o in outs) == simulate(traces, graph)["nfe"]


SETTINGS = {
    # name: generate's rule settings (beside gen_length, block_length)
    "1/step": {},
    "2/step": {"steps": "half"},
    "thr0.9": {"threshold": 0.9},
}


def rule_settings(name: str, gen_length: int) -> dict:
    settings = dict(SETTINGS[name])
    if settings.get("steps") == "half":
        settings["steps"] = gen_length // 2
    return settings


def calibration_rows(model, name, settings, calib, eval_sets, budgets, real_check_prompts):
    """Rows of one decode setting: every graph kind and budget on each held-out set."""
    cal_traces = collect_traces(model, calib, progress=True, **settings)
    graphs, select_s = build_graphs(cal_traces, budgets)
    rows = []
    for kind, prompts in eval_sets.items():
        traces = collect_traces(model, prompts, progress=True, **settings)
        check_prompts = prompts[:real_check_prompts]
        check_traces = first_prompts(traces, len(check_prompts))
        check_vanilla = decode_all(model, check_prompts, settings)
        for d in budgets:
            for graph_kind in GRAPH_KINDS:
                graph = graphs[(graph_kind, d)]
                sim = simulate(traces, graph)
                # Real decoding of the check prompts at the largest budget (the costliest).
                checked = None
                if d == max(budgets) and check_prompts:
                    checked = real_check(
                        model, check_prompts, settings, check_traces, graph, check_vanilla
                    )
                rows.append(
                    {
                        "rule": name,
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
                        "real_check": checked,
                    }
                )
    return rows, cal_traces, graphs


def gains_over_default(rows) -> dict:
    """Per (rule, eval, graph kind): calibrated NFE speedup / default's, over the budgets."""
    out = {}
    keys = sorted({(r["rule"], r["eval"], r["graph"]) for r in rows if r["graph"] != "default"})
    for rule, kind, graph_kind in keys:
        ratios = []
        for r in rows:
            if (r["rule"], r["eval"], r["graph"]) != (rule, kind, graph_kind):
                continue
            default = next(
                x
                for x in rows
                if (x["rule"], x["eval"], x["D"], x["graph"]) == (rule, kind, r["D"], "default")
            )
            ratios.append(r["nfe_speedup"] / default["nfe_speedup"])
        out[f"{rule}/{kind}/{graph_kind}"] = {
            "min": min(ratios),
            "mean": sum(ratios) / len(ratios),
            "max": max(ratios),
        }
    return out


def pruning_rows(model, graph, cal_traces, prompts, settings, max_drafts_list):
    """Real decoding with `graph` pruned to each max_drafts by both scorings, beside the
    calibrated graph of max_drafts nodes verified whole (the static alternative)."""
    vanilla = decode_all(model, prompts, settings)
    vanilla_nfe = sum(o.nfe for o in vanilla)
    rows = []
    for max_drafts in (None, *max_drafts_list):
        if max_drafts is None:
            scorers = [("none", {})]
        else:
            scorers = [
                ("parent-capped", {"filler": pruning_filler(max_drafts, backend="torch")}),
                ("own-pairs", {"max_drafts": max_drafts}),
                ("static graph", {"graph": select_graph(cal_traces, max_drafts)}),
            ]
        for scorer, kwargs in scorers:
            kwargs = {"graph": graph, **kwargs}
            outs = decode_all(model, prompts, settings, **kwargs)
            nfe = sum(o.nfe for o in outs)
            verified = sum(o.stats.drafts_verified for o in outs)
            rows.append(
                {
                    "D": len(kwargs["graph"]),
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
    return rows


COLUMNS = (
    "rule", "eval", "D", "graph", "vanilla_nfe", "nfe", "nfe_speedup", "mean_advance",
    "in_sample_speedup", "calib_s", "real_check",
)  # fmt: skip
KEY = ("rule", "eval", "D", "graph")


def build_run(argv=None) -> Run:
    parser = harness.parser(__doc__, quick_help="smoke configuration (seconds)")
    parser.add_argument("--calibration-prompts", type=int, default=20)
    parser.add_argument("--heldout", type=int, default=8, help="held-out prompts per kind")
    parser.add_argument("--real-check", type=int, default=1, help="prompts per kind decoded")
    parser.add_argument("--pruning-prompts", type=int, default=3)
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument(
        "--rules",
        type=harness.str_list,
        default=",".join(SETTINGS),
        help=f"decode rules, from {list(SETTINGS)}",
    )
    parser.add_argument("--model", default=None, help="checkpoint directory (default: tiny)")
    args = parser.parse_args(argv)
    for rule in args.rules:
        if rule not in SETTINGS:
            parser.error(f"--rules: {rule!r} is not one of {list(SETTINGS)}")
    run = harness.build_run("calibration", args, budgets=(3, 5, 8, 10), max_drafts=(8, 5, 3, 2, 1))
    if run.quick:
        run = run.with_sizes(
            calibration_prompts=3, heldout=1, real_check=1, pruning_prompts=1, gen_length=32
        )
        run = run.with_sizes(budgets=(3, 8), max_drafts=(1,), rules=["1/step"])
    return run


def measure(run: Run, model, model_name: str):
    """The calibration table of every rule, its meta, and the first rule's graphs and
    calibration traces (for the pruning study)."""
    base = {"gen_length": run.gen_length, "block_length": run.block_length, "backend": "torch"}
    calib_set = calibration_prompts(run.calibration_prompts)
    calib = [e.prompt for kind in EVAL_KINDS for e in calib_set[kind]]
    held = heldout_prompts(run.heldout)
    eval_sets = {kind: [e.prompt for e in held[kind]] for kind in EVAL_KINDS}
    rows, summaries, first = [], {}, None
    for rule in run.rules:
        settings = {**base, **rule_settings(rule, run.gen_length)}
        rule_rows, cal_traces, graphs = calibration_rows(
            model, rule, settings, calib, eval_sets, run.budgets, run.real_check
        )
        rows += rule_rows
        summaries[rule] = cal_traces.summary()
        first = first or (graphs, cal_traces)
    meta = {
        "model": model_name,
        "model_sha256": checkpoint_sha256(run.model),
        "decode": {**base, "cache": None, "verify": "batch (exact)", "temperature": 0},
        "rules": {r: rule_settings(r, run.gen_length) for r in run.rules},
        "calibration_prompts": len(calib),
        "kinds": EVAL_KINDS,
        "heldout_per_kind": run.heldout,
        "real_check_prompts_per_kind": run.real_check,
        "trace_summary": summaries,
        "speedup_over_default": gains_over_default(rows),
        "quick": run.quick,
    }
    return rows, meta, first, eval_sets["arith"][: run.pruning_prompts]


def pruning(run: Run, model, model_name: str, first, prompts) -> None:
    """Pruning: real decoding with the largest calibrated "steps" graph of the first rule."""
    graphs, traces = first
    graph = graphs[("steps", max(run.budgets))]
    picture = run.results_dir / "calibration_graph.png"
    draw_graph(graph, picture, counts=node_counts(traces, graph), title=graph.name)
    print(f"wrote {picture}")
    settings = {"gen_length": run.gen_length, "block_length": run.block_length, "backend": "torch"}
    settings.update(rule_settings(run.rules[0], run.gen_length))
    run.report(
        pruning_rows(model, graph, traces, prompts, settings, run.max_drafts),
        key=("max_drafts", "scoring"),
        meta={"model": model_name, "graph": graph.name, "prompts": len(prompts), **settings},
        name="calibration_pruning",
    )


def main(argv=None) -> int:
    run = build_run(argv)
    torch.set_num_threads(1)
    model, model_name = load_bench_model(run.model)
    rows, meta, first, pruning_prompts = measure(run, model, model_name)
    run.report(rows, COLUMNS, key=KEY, meta=meta)
    print(f"model: {model_name}")
    for key, g in meta["speedup_over_default"].items():
        print(
            f"{key}: NFE speedup / default graph's = {g['mean']:.3f} on average over D "
            f"(min {g['min']:.3f}, max {g['max']:.3f})"
        )
    pruning(run, model, model_name, first, pruning_prompts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
