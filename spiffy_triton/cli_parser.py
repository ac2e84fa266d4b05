"""The ``spiffy-triton`` command line's parser (`build_parser`): one function per subcommand
(`SUBCOMMANDS`), the decoding options they share, and the argument types. The commands
themselves are in `spiffy_triton.cli`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .types import BACKENDS, CACHE_MODES, METHODS, REMASKINGS

MODEL_HELP = (
    "a bundled model: 'tiny' (LLaDA-style, bidirectional) or 'tiny-sdar' (SDAR-style, "
    "block-causal); or a checkpoint directory of a LLaDA, Dream or SDAR model (config.json, "
    "*.safetensors or a sharded index, tokenizer.json)"
)
THRESHOLD_HELP = (
    "Fast-dLLM confidence threshold in [0, 1]: commit every masked position whose confidence "
    "is >= it (at least one per step); 1.0 commits only certain positions, in practice one "
    "token per step; off when not given"
)


class FORMATTER(argparse.ArgumentDefaultsHelpFormatter):
    """Every --help shows the defaults: ``(default: X)`` where the help does not say it
    already and the default is a value (not None / off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _max_drafts(text: str):
    if text in ("auto", "all"):
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 'all' or an integer >= 1, got {text!r}"
        ) from None


def _add_decode_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding")
    group.add_argument("--model", default="tiny", help=MODEL_HELP)
    group.add_argument("--gen-length", type=_positive_int, default=64, help="tokens to generate")
    group.add_argument(
        "--block-length",
        type=_positive_int,
        default=None,
        help="block size (default: a block-causal model's trained block size, else 32)",
    )
    group.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="LLaDA schedule steps (default: gen-length)",
    )
    group.add_argument(
        "--temperature", type=float, default=0.0, help="0: argmax; > 0: Gumbel-max sampling"
    )
    group.add_argument(
        "--remasking",
        choices=REMASKINGS,
        default="low_confidence",
        help="which masked positions a schedule step commits",
    )
    rule = group.add_mutually_exclusive_group()
    rule.add_argument("--threshold", type=float, default=None, help=THRESHOLD_HELP)
    rule.add_argument(
        "--factor",
        type=float,
        default=None,
        help="Fast-dLLM factor rule (> 0): commit the n most confident positions with "
        "(k + 1)(1 - c_k) < factor for every k <= n; off when not given",
    )
    group.add_argument(
        "--cache",
        choices=("none", *CACHE_MODES),
        default="none",
        help="KV cache; 'none' is the API's cache=None (either spelling works in both)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of sampling and random remasking")
    group.add_argument("--backend", choices=BACKENDS, default="auto", help="kernel backend")


def add_calibrate(sub) -> None:
    """``spiffy-triton calibrate`` (`cli.cmd_calibrate`)."""
    cal = sub.add_parser(
        "calibrate",
        formatter_class=FORMATTER,
        help="calibrate a draft graph on vanilla decoding of prompts",
        description="Run vanilla decoding on calibration prompts, record the true future "
        "states as formulas, and select a draft graph of BUDGET nodes (docs/CALIBRATION.md).",
    )
    source = cal.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--prompts",
        type=Path,
        help="prompts file: .json (list of strings or {'prompt': ...}), .jsonl (one per line), "
        "or text (one prompt per line; write a newline inside a prompt as \\n)",
    )
    source.add_argument(
        "--builtin",
        choices=("arith", "word", "code"),
        help="the bundled model's calibration prompts of this kind",
    )
    cal.add_argument("--num-prompts", type=_positive_int, default=30, help="prompts to use")
    cal.add_argument("--budget", type=int, required=True, help="number of graph nodes D (>= 1)")
    cal.add_argument("--out", type=Path, required=True, help="output graph JSON")
    cal.add_argument(
        "--objective",
        choices=("steps", "degree1"),
        default="steps",
        help="expected steps per forward, or the paper's degree-1 objective",
    )
    cal.add_argument(
        "--phases", type=_positive_int, default=None, help="one graph per masked-count range"
    )
    cal.add_argument(
        "--max-token-rank", type=_positive_int, default=4, help="deepest token rank recorded"
    )
    cal.add_argument("--draw", type=Path, default=None, help="also write a PNG of the graph")
    cal.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_decode_options(cal)


def add_generate(sub) -> None:
    """``spiffy-triton generate`` (`cli.cmd_generate`)."""
    gen = sub.add_parser(
        "generate",
        formatter_class=FORMATTER,
        help="decode a prompt, vanilla or Spiffy",
        description="Decode a prompt with the bundled or a given model; with --graph or "
        "--budget, Spiffy decoding (same output as vanilla, fewer forwards).",
    )
    text = gen.add_mutually_exclusive_group(required=True)
    text.add_argument("--prompt", help="prompt text (\\n is a newline)")
    text.add_argument(
        "--prompt-file",
        type=Path,
        help="file holding the prompt: text (read as calibrate reads prompt files: \\n is a "
        "newline, the final line break is dropped; the file's own line breaks are kept), or "
        ".json / .jsonl holding one prompt",
    )
    drafts = gen.add_mutually_exclusive_group()
    drafts.add_argument(
        "--graph", type=Path, help="draft graph JSON (from calibrate); vanilla without it"
    )
    drafts.add_argument(
        "--budget", type=int, help="use the built-in default graph of D nodes; vanilla without it"
    )
    gen.add_argument(
        "--max-drafts",
        type=_max_drafts,
        default="auto",
        help="drafts verified per forward: 'auto' (cost-aware: the drafts worth their measured "
        "cost on this machine; it says what it chose and why), 'all' (every filled node: the "
        "fewest forwards; the API's None, 'all' works there too), or N (dynamic pruning to "
        "the best N)",
    )
    gen.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="decoding method (default: spiffy with --graph/--budget, else vanilla); simsd "
        "and simsd-exact need a block-causal (SDAR) model",
    )
    gen.add_argument(
        "--draft",
        default=None,
        help="SimSD's reference source (API: draft=, the same spellings): 'self' (the "
        "default, as in the API: the target at one step), "
        "'previous' (the target's tokens from its previous forward), a bundled model name or "
        "a checkpoint directory of the same vocabulary",
    )
    gen.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_decode_options(gen)


def add_bench(sub) -> None:
    """``spiffy-triton bench``: its options are run_all's (`cli.cmd_bench`)."""
    sub.add_parser(
        "bench",
        help="run the benchmark studies (benchmarks/run_all.py)",
        description="Run every benchmark study of the repository checkout "
        "(python -m benchmarks.run_all); arguments after 'bench' are passed on, e.g. --quick. "
        "Results go to a new folder of the user's cache unless --out-dir names one.",
        add_help=False,  # `bench --help` shows run_all's options and studies (cmd_bench)
    )


def add_graph(sub) -> None:
    """``spiffy-triton graph draw`` (`cli.cmd_graph_draw`)."""
    graph = sub.add_parser("graph", help="draft graph tools", description="Draft graph tools.")
    graph_sub = graph.add_subparsers(dest="graph_command", required=True, metavar="TOOL")
    draw = graph_sub.add_parser(
        "draw",
        formatter_class=FORMATTER,
        help="draw a graph as a PNG",
        description="A PNG of a draft graph: nodes as formulas (position rank, token rank), "
        "edges parent to child, node counts when the JSON has them.",
    )
    which = draw.add_mutually_exclusive_group(required=True)
    which.add_argument("graph", nargs="?", type=Path, help="graph JSON")
    which.add_argument("--default", type=int, help="draw the built-in default graph of D nodes")
    draw.add_argument("--out", type=Path, required=True, help="output PNG")
    draw.add_argument("--title", default=None, help="title above the drawing")


# The subcommands, in the order --help lists them.
SUBCOMMANDS = (add_calibrate, add_generate, add_bench, add_graph)


def build_parser() -> argparse.ArgumentParser:
    """The ``spiffy-triton`` parser: ``--version`` and one subparser per `SUBCOMMANDS` entry."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="spiffy-triton",
        description="Spiffy lossless speculative decoding for diffusion LMs.",
        formatter_class=FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"spiffy-triton {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser
