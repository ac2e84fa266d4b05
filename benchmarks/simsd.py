"""SimSD beside Spiffy on a block-causal (SDAR-style) model: vanilla SDAR, Spiffy, SimSD.

MEASURED on the held-out prompts of the bundled data (arithmetic, word problems, code; the
`heldout_prompts` of the training data module), greedy, one token per step for vanilla, the
same KV cache setting for every row. Rows:

- ``vanilla``: SDAR's confidence-ordered decoding (`generate`, ``remasking="low_confidence"``);
- ``spiffy D=k``: Spiffy with the default graph of k nodes, every node verified (exact);
- ``simsd (draft)``: SimSD's token-level acceptance, references from the target itself at one
  step (``self``), from the target's previous forward (``previous``, no draft forward) or
  from another model of the same vocabulary (``--drafts``, default the bundled ``tiny``);
- ``simsd-exact (draft)``: the exact variant (reference-chain candidates walked by vanilla's
  rule), references ``self`` or ``previous``.

Columns: target forwards (NFE: every forward of the target, its drafting forwards included
when the draft is the target itself, ``self``), generated tokens per target forward, draft
forwards (of ``self``: already in NFE; of another model: not), block rows per target forward
(the block, its drafts or references; not the context), CPU wall
clock (every configuration decodes a prompt back to back), prompts and tokens identical to
vanilla's, and held-out answer accuracy (the number after ``####`` equals the reference;
arithmetic and word problems, as the model card's evaluation).

    python -m benchmarks.simsd [--model tiny-sdar | DIR] [--per-kind 4] [--gen-length 96]
                               [--block-length N] [--cache prefix|none] [--drafts self,tiny]
    python -m benchmarks.simsd --smoke     # random tiny SDAR model, seconds (CI)
    python -m benchmarks.simsd --quick     # the bundled model, 1 prompt per kind, 32 tokens

Writes benchmarks/results/simsd.json (``--smoke``: simsd_smoke.json).
"""

from __future__ import annotations

import time

import torch

from benchmarks import harness
from benchmarks.harness import Run
from spiffy_triton import generate, load_model

try:  # the data module's home after the training code moved (issue 16)
    from spiffy_triton.training import tinydata
except ImportError:
    from spiffy_triton import tinydata

COLUMNS = (
    "method",
    "nfe",
    "tokens_per_forward",
    "nfe_speedup",
    "draft_forwards",
    "block_rows_per_forward",
    "wall_s",
    "wall_speedup",
    "prompts_identical",
    "tokens_identical",
    "accuracy",
)


def smoke_model(seed: int = 0, layers: int = 2):
    """A random-weight SDAR model over the bundled character tokenizer (block 4)."""
    from spiffy_triton.models import CharTokenizer, QwenConfig, SDARModel

    tokenizer = CharTokenizer()
    config = QwenConfig(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=48,
        vocab_size=tokenizer.vocab_size,
        rope_theta=1e4,
        mask_token_id=tokenizer.mask_token_id,
        block_size=4,
        tie_word_embeddings=True,
        model_type="sdar",
        max_position_embeddings=256,
    )
    model = SDARModel(config, backend="torch").init_weights(seed).eval()
    model.tokenizer = tokenizer
    return model


def load_target(name: str):
    try:
        model = load_model(name, dtype=torch.float32, backend="torch")
    except FileNotFoundError as error:
        from spiffy_triton.models import BUNDLED_MODELS

        raise SystemExit(
            f"--model {name!r}: not a bundled model of this checkout (bundled: "
            f"{sorted(BUNDLED_MODELS)}) nor a checkpoint directory ({error}). The trained "
            "tiny-sdar model lands with its own change; until then pass --model DIR or --smoke"
        ) from None
    if model.tokenizer is None:
        raise SystemExit(f"--model {name!r}: no tokenizer stored with the checkpoint")
    return model


def load_drafts(names: list[str], target, smoke: bool) -> tuple[dict, dict]:
    """Draft sources by name ('self' or a model name / directory); skipped ones with why."""
    from spiffy_triton.decoding.simsd import check_draft_model

    drafts, skipped = {}, {}
    for name in names:
        if name in ("self", "previous"):
            drafts[name] = name
            continue
        try:
            model = smoke_model(1, 1) if smoke else load_model(name, backend="torch")
            check_draft_model(model, target)
        except (FileNotFoundError, ValueError) as error:
            skipped[name] = str(error)
            print(f"draft {name!r} skipped: {error}")
            continue
        drafts[name] = model
    return drafts, skipped


def configurations(run: Run, drafts: dict) -> dict[str, dict]:
    configs = {"vanilla": {}}
    for d in run.graphs:
        configs[f"spiffy D={d}"] = {"graph": d, "max_drafts": None}
    for name, draft in drafts.items():
        configs[f"simsd ({name})"] = {"method": "simsd", "draft": draft}
    for name in ("self", "previous"):
        configs[f"simsd-exact ({name})"] = {"method": "simsd-exact", "draft": name}
    return configs


def weights_sha256(name: str) -> str | None:
    """sha256 of the checkpoint's weights (bundled name or directory), to tell runs apart."""
    import hashlib
    import os

    from spiffy_triton.models import BUNDLED_MODELS

    path = os.path.join(BUNDLED_MODELS.get(name, name), "model.safetensors")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def prompts(per_kind: int):
    held = tinydata.heldout_prompts(per_kind)
    return [example for kind in tinydata.KINDS for example in held[kind]]


def decode_totals(target, configs: dict, examples, run: Run, block: int) -> dict[str, dict]:
    """Every configuration on every prompt (vanilla first): totals of NFE, draft forwards,
    block rows, wall time and agreement with vanilla."""
    tok = target.tokenizer
    totals = {name: dict(nfe=0, draft=0, rows=0, wall=0.0, same=0, tokens=0, correct=0, scored=0)
              for name in configs}  # fmt: skip
    common = dict(gen_length=run.gen_length, block_length=block, cache=run.cache, backend="torch")
    for example in examples:
        ids = torch.tensor([tok.encode(example.prompt)])
        reference = None
        for name, kwargs in configs.items():
            start = time.perf_counter()
            out = generate(target, ids, **common, **kwargs)
            wall = time.perf_counter() - start
            generated = out.tokens[0, ids.shape[1] :]
            reference = generated if reference is None else reference  # vanilla runs first
            t = totals[name]
            t["nfe"] += out.nfe  # every target forward (drafting ones of draft="self" too)
            t["wall"] += wall
            t["draft"] += getattr(out.stats, "draft_forwards", 0)
            # rows of the block, its drafts or its references (not the context's); a drafting
            # forward of the target runs the block's rows
            extra = out.stats.drafts_verified * block
            t["rows"] += out.nfe * block + extra + getattr(out.stats, "references_verified", 0)
            t["same"] += bool(torch.equal(generated, reference))
            t["tokens"] += int((generated == reference).sum())
            if example.value is not None:
                t["scored"] += 1
                t["correct"] += (
                    tinydata.extract_answer(tok.decode(generated.tolist())) == example.value
                )
    return totals


def summary_rows(totals: dict[str, dict], n: int, gen_tokens: int) -> list[dict]:
    base = totals["vanilla"]
    return [
        {
            "method": name,
            "nfe": t["nfe"],
            "tokens_per_forward": gen_tokens / t["nfe"],
            "nfe_speedup": base["nfe"] / t["nfe"],
            "draft_forwards": t["draft"],
            "block_rows_per_forward": t["rows"] / t["nfe"],
            "wall_s": t["wall"],
            "wall_speedup": base["wall"] / t["wall"],
            "prompts_identical": t["same"] / n,
            "tokens_identical": t["tokens"] / gen_tokens,
            "accuracy": t["correct"] / t["scored"] if t["scored"] else None,
        }
        for name, t in totals.items()
    ]


def measure(run: Run) -> tuple[list[dict], dict]:
    torch.set_num_threads(run.threads)
    target = smoke_model() if run.smoke else load_target(run.model)
    block = run.block_length or target.config.block_size or 4
    drafts, skipped = load_drafts(run.drafts, target, run.smoke)
    examples = prompts(run.per_kind)
    totals = decode_totals(target, configurations(run, drafts), examples, run, block)
    meta = {
        "model": "random tiny SDAR (smoke)" if run.smoke else run.model,
        "weights_sha256": None if run.smoke else weights_sha256(run.model),
        "prompts": len(examples),
        "per_kind": run.per_kind,
        "gen_length": run.gen_length,
        "block_length": block,
        "cache": run.cache,
        "threads": run.threads,
        "quick": run.quick,
        "accuracy_prompts": totals["vanilla"]["scored"],
        "drafts_skipped": skipped,
        "rule": "greedy; vanilla one token per step, low_confidence",
    }
    return summary_rows(totals, len(examples), len(examples) * run.gen_length), meta


def build_run(argv=None) -> Run:
    parser = harness.parser(
        __doc__, quick_help="1 prompt per kind, 32 tokens", out_dir=("--out", "--out-dir")
    )
    parser.add_argument("--model", default="tiny-sdar", help="bundled name or SDAR checkpoint dir")
    parser.add_argument("--smoke", action="store_true", help="random tiny model, 2 prompts")
    parser.add_argument("--per-kind", type=int, default=4, help="held-out prompts per kind")
    parser.add_argument("--gen-length", type=int, default=96)
    parser.add_argument("--block-length", type=int, default=None, help="default: the model's")
    parser.add_argument("--cache", choices=("prefix", "none"), default="prefix")
    parser.add_argument("--graphs", default="4", help="Spiffy default-graph sizes, e.g. 4,8")
    parser.add_argument(
        "--drafts",
        default="self,previous,tiny",
        help="SimSD draft sources: self, previous, bundled model names or checkpoint dirs",
    )
    parser.add_argument("--threads", type=int, default=1)
    run = harness.build_run("simsd", parser.parse_args(argv))
    if run.quick:
        run = run.with_sizes(per_kind=1, gen_length=min(run.gen_length, 32))
    drafts = harness.str_list(run.drafts)
    if run.smoke:
        run = run.with_sizes(per_kind=min(run.per_kind, 1), gen_length=min(run.gen_length, 8))
        drafts = [d if d in ("self", "previous") else "smoke" for d in drafts]
    cache = None if run.cache == "none" else run.cache
    return run.with_sizes(cache=cache, graphs=harness.int_list(run.graphs), drafts=drafts)


def main(argv=None) -> list[dict]:
    run = build_run(argv)
    rows, meta = measure(run)
    run.report(rows, COLUMNS, key=("method",), meta=meta, name="simsd_smoke" if run.smoke else None)
    return rows


if __name__ == "__main__":
    main()
