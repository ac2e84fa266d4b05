"""The ``spiffy-triton`` command: calibrate, generate, bench, graph draw.

    spiffy-triton calibrate --prompts prompts.jsonl --budget 8 --out graph.json
    spiffy-triton calibrate --builtin arith --num-prompts 30 --budget 8 --out graph.json
    spiffy-triton generate --prompt "Q: 4+5+6=?\\nA: " --graph graph.json
    spiffy-triton bench --quick
    spiffy-triton graph draw graph.json --out graph.png

Every subcommand has ``--help``. Bad input (unreadable files, invalid graphs, budget < 1, no
prompts) ends with ``spiffy-triton: error: ...`` and exit status 2.

The parser (`build_parser`, one function per subcommand) is `spiffy_triton.cli_parser`; this
module runs the commands (``cmd_*``) and `main`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .cli_parser import build_parser


class CLIError(Exception):
    """Bad input of the command line: reported as one line, exit status 2."""


def _decode_kwargs(args, model) -> dict:
    block_length = args.block_length
    if block_length is None:  # a block-causal model's trained block size, else LLaDA's 32
        block_length = getattr(model, "trained_block_size", None) or 32
    return {
        "gen_length": args.gen_length,
        "block_length": block_length,
        "steps": args.steps,
        "temperature": args.temperature,
        "remasking": args.remasking,
        "threshold": args.threshold,
        "factor": args.factor,
        "cache": None if args.cache == "none" else args.cache,
        "seed": args.seed,
        "backend": args.backend,
    }


# ------------------------------------------------------------------------------ commands


def _read_text(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise CLIError(f"{option}: cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise CLIError(f"{option}: {path} is not UTF-8 text") from None


def read_prompt_file(path: Path) -> str:
    """`generate --prompt-file`: one prompt. A .json / .jsonl file as `read_prompts` reads it
    (exactly one prompt); a text file as calibrate reads its prompt files: ``\\n`` is a
    newline and the line break ending the file is dropped (the file's own line breaks are
    kept: the whole file is the prompt)."""
    if path.suffix.lower() in (".json", ".jsonl"):
        prompts = read_prompts(path, "--prompt-file")
        if len(prompts) != 1:
            raise CLIError(f"--prompt-file: {path} holds {len(prompts)} prompts; give one")
        return prompts[0]
    text = _read_text(path, "--prompt-file")
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            text = text[: -len(ending)]
            break
    return text.replace("\\n", "\n")


def read_prompts(path: Path, option: str = "--prompts") -> list[str]:
    """Prompts from a .json, .jsonl or text file (see `calibrate --help`)."""
    text = _read_text(path, option)

    def as_prompt(item, where: str) -> str:
        if isinstance(item, dict) and isinstance(item.get("prompt"), str):
            return item["prompt"]
        if isinstance(item, str):
            return item
        raise CLIError(f"{option}: {where} must be a string or an object with a 'prompt' string")

    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, list):
                raise CLIError(f"{option}: {path} must hold a JSON list of prompts")
            prompts = [as_prompt(item, f"item {k}") for k, item in enumerate(data)]
        elif suffix == ".jsonl":
            lines = [(k, line) for k, line in enumerate(text.splitlines(), 1) if line.strip()]
            prompts = [as_prompt(json.loads(line), f"line {k}") for k, line in lines]
        else:
            prompts = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise CLIError(f"{option}: {path} is not valid JSON: {err}") from None
    prompts = [p for p in prompts if p]
    if not prompts:
        raise CLIError(f"{option}: no prompts in {path}")
    return prompts


def _load_model(name: str, backend: str, option: str = "--model"):
    from .models import load_model

    try:
        return load_model(name, backend=backend)
    except FileNotFoundError as err:
        raise CLIError(f"{option}: {err}") from None


def cmd_calibrate(args) -> int:
    from .calibration import (
        collect_traces,
        node_counts,
        save_graph,
        select_graph,
        select_phased_graph,
        simulate,
    )

    if args.budget < 1:
        raise CLIError(f"--budget must be >= 1 (nodes of the graph), got {args.budget}")
    # before the traces, which take minutes: the outputs must be writable
    check_output_path(args.out, "--out")
    check_output_path(args.draw, "--draw")
    if args.prompts is not None:
        prompts = read_prompts(args.prompts)[: args.num_prompts]
    else:
        from .training.tinydata import calibration_prompts

        prompts = [e.prompt for e in calibration_prompts(args.num_prompts)[args.builtin]]
    model = _load_model(args.model, args.backend)
    if model.tokenizer is not None:
        for k, prompt in enumerate(prompts):
            encode_prompt(model, prompt, f"--prompts: prompt {k}")
    kwargs = _decode_kwargs(args, model)
    traces = collect_traces(
        model,
        prompts,
        max_token_rank=args.max_token_rank,
        progress=not args.no_progress,
        **kwargs,
    )
    if args.phases is not None:
        graph = select_phased_graph(traces, args.budget, args.phases, objective=args.objective)
    else:
        graph = select_graph(traces, args.budget, objective=args.objective)
    save_graph(graph, args.out, traces)
    summary = traces.summary()
    simulated = simulate(traces, graph)
    print(
        f"calibrated {graph.name}: {len(prompts)} prompts, {summary['trace_steps']} steps, "
        f"{summary['distinct_formulas']} distinct formulas, "
        f"{summary['collect_time_s']:.1f} s; simulated steps/forward on the calibration "
        f"prompts {simulated['steps_per_nfe']:.3f} (vanilla 1.0)"
    )
    for k, formula in enumerate(graph.nodes):
        print(f"  node {k}: {' '.join(f'({p},{t})' for p, t in formula)}")
    print(f"wrote {args.out}")
    if args.draw is not None:
        from .calibration.drawing import draw_graph

        counts = node_counts(traces, graph)
        draw_graph(graph, args.draw, counts=counts)
        print(f"wrote {args.draw}")
    return 0


def encode_prompt(model, text: str, option: str) -> list[int]:
    """The prompt's ids; characters the tokenizer cannot encode are an error naming them (a
    character tokenizer would turn them into unk, which decodes to nothing)."""
    tokenizer = model.tokenizer
    if hasattr(tokenizer, "unknown_characters"):
        try:
            return tokenizer.encode(text, strict=True)
        except ValueError as err:
            raise CLIError(f"{option}: {err}") from None
    return tokenizer.encode(text)


def check_output_path(path: Path | None, option: str) -> None:
    """Fail before the work when `path` cannot be written: its folder missing or not
    writable, or the path itself a folder."""
    if path is None:
        return
    folder = path.parent
    if path.is_dir():
        raise CLIError(f"{option}: {path} is a folder; give a file name")
    if not folder.is_dir():
        raise CLIError(f"{option}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"{option}: the folder {folder} is not writable")


def _graph_argument(args):
    from .graph import DraftGraph

    if args.graph is not None:
        return DraftGraph.load(args.graph)
    if args.budget is not None:
        DraftGraph.default(args.budget)  # the budget's range, checked before the model loads
        return args.budget  # generate picks the default graph that fits the block
    return None


def cmd_generate(args) -> int:
    import torch

    from .decoding import generate
    from .decoding.drafting import phased_filler
    from .graph import PhasedDraftGraph

    if args.prompt_file is not None:
        prompt = read_prompt_file(args.prompt_file)
    else:
        prompt = args.prompt.replace("\\n", "\n")
    if not prompt:
        raise CLIError("the prompt is empty")
    try:
        graph = _graph_argument(args)
    except ValueError as err:
        raise CLIError(f"--graph/--budget: {err}") from None
    if graph is None and args.max_drafts != "auto":
        raise CLIError("--max-drafts needs a draft graph (--graph or --budget)")
    max_drafts = None if args.max_drafts == "all" else args.max_drafts
    model = _load_model(args.model, args.backend)
    if model.tokenizer is None:
        raise CLIError(f"--model: {args.model} has no tokenizer.json; cannot encode text")
    option = "--prompt" if args.prompt is not None else "--prompt-file"
    prompt_ids = torch.tensor([encode_prompt(model, prompt, option)], dtype=torch.int64)
    filler = (
        phased_filler(graph, backend=args.backend) if isinstance(graph, PhasedDraftGraph) else None
    )
    out = generate(
        model,
        prompt_ids,
        graph=graph,
        max_drafts=max_drafts,
        filler=filler,
        method=args.method,
        draft=_draft_argument(args),
        **_decode_kwargs(args, model),
    )
    text = model.tokenizer.decode(out.tokens[0, prompt_ids.shape[1] :].tolist())
    if args.json:
        print(json.dumps({"prompt": prompt, "completion": text, **out.stats.to_dict()}, indent=1))
    else:
        print(prompt + text)
        mode = "vanilla" if graph is None else f"spiffy ({out.stats.graph})"
        if args.method in ("simsd", "simsd-exact"):
            mode = f"{args.method} (draft: {out.stats.draft})"
        print(
            f"[{mode}] NFE {out.nfe}{_nfe_detail(out.stats)}, steps {out.steps}, steps/NFE "
            f"{out.stats.steps_per_nfe:.3f}, tokens/NFE {args.gen_length / out.nfe:.3f}, "
            f"{out.stats.total_time_s:.2f} s",
            file=sys.stderr,
        )
        if out.stats.draft_budget is not None:  # max_drafts="auto": what it chose and why
            print(f"[auto] {out.stats.draft_budget['decision']['reason']}", file=sys.stderr)
    return 0


def _nfe_detail(stats) -> str:
    """What the NFE of a SimSD run is made of (every target forward counts)."""
    if not hasattr(stats, "verify_forwards"):
        return ""
    if stats.draft_is_target:
        return (
            f" (target forwards: {stats.verify_forwards} verify + {stats.draft_forwards} drafting)"
        )
    return f" (draft model forwards: {stats.draft_forwards}, not counted)"


def _draft_argument(args):
    """`generate`'s draft= from --draft: None unless SimSD; 'self' or a loaded model."""
    if args.method not in ("simsd", "simsd-exact"):
        if args.draft is not None:
            raise CLIError("--draft needs --method simsd or simsd-exact")
        return None
    if args.draft in (None, "self", "previous"):
        return args.draft or "self"
    return _load_model(args.draft, args.backend, "--draft")


def repository_root() -> Path | None:
    """The repository checkout this package runs from, if it is one (benchmarks ship only
    with the repository)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "benchmarks" / "run_all.py").is_file() else None


def cmd_bench(args) -> int:
    root = repository_root()
    if root is None:
        raise CLIError(
            "the benchmarks ship with the repository, not the installed package: clone the "
            "spiffy-triton repository, install it with `pip install -e .`, and run "
            "`spiffy-triton bench` (or `python -m benchmarks.run_all`) from there"
        )
    if any(a in ("-h", "--help") for a in args.bench_args):
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        from benchmarks import run_all

        run_all.build_parser("spiffy-triton bench").print_help()
        return 0
    command = [sys.executable, "-m", "benchmarks.run_all", *args.bench_args]
    return subprocess.call(command, cwd=root)


def cmd_graph_draw(args) -> int:
    from .calibration import stored_counts
    from .calibration.drawing import draw_graph
    from .graph import DraftGraph, PhasedDraftGraph

    counts = None
    try:
        if args.graph is not None:
            graph = DraftGraph.load(args.graph)
            if isinstance(graph, PhasedDraftGraph):
                raise CLIError(f"{args.graph} holds per-phase graphs; draw one phase from its JSON")
            counts = stored_counts(args.graph)
            if counts is not None and len(counts) != len(graph):
                raise CLIError(
                    f"{args.graph}: 'counts' has {len(counts)} entries for {len(graph)} nodes"
                )
        else:
            graph = DraftGraph.default(args.default)
    except ValueError as err:
        raise CLIError(str(err)) from None
    try:
        draw_graph(graph, args.out, counts=counts, title=args.title)
    except OSError as err:
        raise CLIError(f"--out: cannot write {args.out}: {err.strerror}") from None
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `bench` passes every option it does not know on to run_all.
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "bench":
        args.bench_args = unknown
    handlers = {"calibrate": cmd_calibrate, "generate": cmd_generate, "bench": cmd_bench}
    handler = cmd_graph_draw if args.command == "graph" else handlers[args.command]
    try:
        return handler(args)
    except CLIError as err:
        parser.exit(2, f"spiffy-triton: error: {err}\n")
    except ValueError as err:
        # Validation errors of the library name the argument and what was expected.
        parser.exit(2, f"spiffy-triton: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
