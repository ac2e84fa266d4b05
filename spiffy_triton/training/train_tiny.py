"""Train, and evaluate, the bundled small models (spiffy_triton/assets/tiny, tiny-sdar).

    python -m spiffy_triton.training.train_tiny                # the `tiny` recipe + eval + card
    python -m spiffy_triton.training.train_tiny --arch sdar    # the `tiny-sdar` recipe
    python -m spiffy_triton.training.train_tiny --eval-only    # measure the card's numbers
    python -m spiffy_triton.training.train_tiny --steps N ...  # one stage of N steps

Objectives. ``llada`` (bidirectional): LLaDA's masked diffusion as in its SFT stage. Per
sequence a masking level ``t ~ U(0, 1)`` (floored at ``eps``); each answer token (EOS padding
included, so the model learns where answers end) is masked with probability ``t``; the prompt
is never masked; the loss is the cross-entropy on masked tokens weighted by ``1 / t``,
averaged over answer tokens. ``sdar`` (block-causal, SDAR): the prompt is cut into chunks of
the block length from position 0 and the answer into blocks from the prompt's end, as at
decode time; per sequence one answer block is drawn and masked with probability ``t``, the
blocks before it stay clean (what the decoder has committed), and the loss is the weighted
cross-entropy on that block's masked tokens, averaged over its tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from ..models import (
    BUNDLED_MODELS,
    CharTokenizer,
    LLaDAConfig,
    LLaDAModel,
    QwenConfig,
    SDARModel,
    save_checkpoint,
)
from ..models.sdar import _chunk_lengths, block_causal_layout
from . import tinydata
from .evaluate import evaluate
from .sequences import (
    DIGIT_WEIGHT,
    GEN_LENGTH,
    LONG_PAD_SHARE,
    MAX_LENGTH,
    SDAR_BLOCK,
    make_batch,
)

MASK_EPS = 1e-3
ARCHS = ("llada", "sdar")
_DIGIT_IDS = torch.tensor(CharTokenizer().encode("0123456789"))
# The bundled models' stages: each continues from the previous one's weights.
RECIPES = {
    "llada": (
        {"steps": 3200, "warmup": 100, "seed": 0, "lr": 3e-3, "batch_size": 64},
        {"steps": 1500, "warmup": 50, "seed": 1, "lr": 1.5e-3, "batch_size": 64},
    ),
    "sdar": ({"steps": 1500, "warmup": 100, "seed": 0, "lr": 3e-3, "batch_size": 32},),
}
BUNDLED_NAME = {"llada": "tiny", "sdar": "tiny-sdar"}


def tiny_config(tokenizer: CharTokenizer) -> LLaDAConfig:
    return LLaDAConfig(
        d_model=192,
        n_heads=4,
        n_kv_heads=2,
        n_layers=4,
        mlp_hidden_size=512,
        vocab_size=tokenizer.vocab_size,
        embedding_size=tokenizer.vocab_size,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        max_sequence_length=512,
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def tiny_sdar_config(tokenizer: CharTokenizer) -> QwenConfig:
    return QwenConfig(
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        vocab_size=tokenizer.vocab_size,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        block_size=SDAR_BLOCK,
        model_type="sdar",
    )


def new_model(arch: str, tokenizer: CharTokenizer, seed: int):
    """A freshly initialised model of `arch` (embeddings N(0, 1) for LLaDA, N(0, 0.02)
    Qwen-style for SDAR)."""
    if arch == "llada":
        model = LLaDAModel(tiny_config(tokenizer), backend="torch", tokenizer=tokenizer)
        return model.init_weights(seed=seed)
    model = SDARModel(tiny_sdar_config(tokenizer), backend="torch", tokenizer=tokenizer)
    model.init_weights(seed=seed)
    with torch.no_grad():  # Qwen's init jitters the norms (for tests); training starts at 1
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
    return model


def model_config(arch: str, tokenizer: CharTokenizer):
    return tiny_config(tokenizer) if arch == "llada" else tiny_sdar_config(tokenizer)


def add_mask_noise(
    ids: torch.Tensor, prompt_lengths: torch.Tensor, generator: torch.Generator, mask_token_id: int
):
    """The forward process: per sequence ``t ~ U(eps, 1)``, each answer token masked with
    probability ``t``, prompts never. Returns (noisy ids, masked, t ``[B, 1]``, is_answer)."""
    b, t = ids.shape
    level = (1 - MASK_EPS) * torch.rand(b, 1, generator=generator) + MASK_EPS
    is_answer = torch.arange(t)[None] >= prompt_lengths[:, None]
    masked = (torch.rand(b, t, generator=generator) < level) & is_answer
    noisy = torch.where(masked, torch.full_like(ids, mask_token_id), ids)
    return noisy, masked, level, is_answer


def token_weights(ids: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Per-token loss weights ``[B, T]``: ``1 / t``, times `DIGIT_WEIGHT` on digits."""
    is_digit = torch.isin(ids, _DIGIT_IDS.to(ids.device))
    return torch.where(is_digit, DIGIT_WEIGHT, 1.0) / level


def diffusion_loss(model, ids, prompt_lengths, generator, mask_token_id) -> torch.Tensor:
    """Masked-diffusion loss of the bidirectional model (see the module docstring)."""
    noisy, masked, level, is_answer = add_mask_noise(ids, prompt_lengths, generator, mask_token_id)
    logits = model(noisy)
    ce = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")
    return (ce * token_weights(ids, level)[masked]).sum() / is_answer.sum()


def add_block_noise(
    ids: torch.Tensor,
    prompt_lengths: torch.Tensor,
    block_length: int,
    generator: torch.Generator,
    mask_token_id: int,
):
    """SDAR's forward process: per sequence one answer block drawn uniformly and a level
    ``t ~ U(eps, 1)``; that block's tokens masked with probability ``t``, everything else
    clean. Every row must have the same prompt length and the answer whole blocks. Returns
    (noisy ids, masked, t ``[B, 1]``, in_block, the block-causal layout)."""
    b, t = ids.shape
    p = int(prompt_lengths[0])
    if not bool((prompt_lengths == p).all()):
        raise ValueError("add_block_noise: every row needs the same prompt length")
    num_blocks = (t - p) // block_length
    if num_blocks < 1 or p + num_blocks * block_length != t:
        raise ValueError(f"length {t} is not the prompt ({p}) plus whole blocks of {block_length}")
    layout = block_causal_layout(
        0, _chunk_lengths(0, p, block_length) + (block_length,) * num_blocks
    )
    block = torch.randint(num_blocks, (b, 1), generator=generator)
    level = (1 - MASK_EPS) * torch.rand(b, 1, generator=generator) + MASK_EPS
    which = (torch.arange(t)[None] - p).div(block_length, rounding_mode="floor")
    in_block = which == block
    masked = (torch.rand(b, t, generator=generator) < level) & in_block
    noisy = torch.where(masked, torch.full_like(ids, mask_token_id), ids)
    return noisy, masked, level, in_block, layout


def block_diffusion_loss(model, ids, prompt_lengths, generator, mask_token_id) -> torch.Tensor:
    """SDAR's block-diffusion loss (see the module docstring): rows of one prompt length
    (`batch_stream` groups them), so that one block-causal layout serves the batch."""
    noisy, masked, level, in_block, layout = add_block_noise(
        ids, prompt_lengths, model.config.block_size, generator, mask_token_id
    )
    logits = model(noisy, layout=layout)
    ce = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")
    return (ce * token_weights(ids, level)[masked]).sum() / in_block.sum()


LOSSES = {"llada": diffusion_loss, "sdar": block_diffusion_loss}


def _padded_length(arch: str, batch, rng: random.Random) -> int:
    longest = max(len(e.prompt) + len(e.answer) for e in batch)
    if arch == "sdar":  # the answer's blocks (one more, all EOS, half the time)
        p = len(batch[0].prompt)
        blocks = math.ceil((longest + 1 - p) / SDAR_BLOCK) + rng.randint(0, 1)
        return p + SDAR_BLOCK * blocks
    short = 16 * math.ceil(longest / 16) + 16 * rng.randint(0, 2)
    if rng.random() < LONG_PAD_SHARE:
        short = max(longest, max(len(e.prompt) for e in batch) + GEN_LENGTH)
    return min(MAX_LENGTH, short)


def batch_stream(
    tokenizer: CharTokenizer, batch_size: int, seed: int, arch: str = "llada", split="train"
):
    """Single-kind batches (kinds drawn by `tinydata.TRAIN_MIX`). LLaDA: padded a little above
    the longest example, or (`LONG_PAD_SHARE` of them) to the main job's generation length past the
    longest prompt. SDAR: rows of one prompt length (buffered per length) padded to whole
    blocks."""
    rng = random.Random(seed)
    streams = {k: tinydata.iter_examples(split, kinds=(k,), seed=seed) for k in tinydata.KINDS}
    buffers = {k: {} for k in tinydata.KINDS}
    kinds, weights = zip(*tinydata.TRAIN_MIX.items())
    while True:
        kind = rng.choices(kinds, weights)[0]
        if arch == "llada":
            batch = [next(streams[kind]) for _ in range(batch_size)]
        else:
            while True:
                example = next(streams[kind])
                bucket = buffers[kind].setdefault(len(example.prompt), [])
                bucket.append(example)
                if len(bucket) == batch_size:
                    batch = buffers[kind].pop(len(example.prompt))
                    break
        yield make_batch(batch, tokenizer, _padded_length(arch, batch, rng))


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def heldout_loss(model, tokenizer: CharTokenizer, arch: str, n: int = 96, seed: int = 0):
    """Mean training loss on batches of the held-out split (fixed examples and masks)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    batches = batch_stream(tokenizer, 16, 10_000 + seed, arch, split="heldout")
    total = 0.0
    for _ in range(n // 16):
        ids, prompt_lengths = next(batches)
        loss = LOSSES[arch](model, ids, prompt_lengths, generator, tokenizer.mask_token_id)
        total += float(loss)
    model.train()
    return total / (n // 16)


def progress(step: int, total: int, start: float, loss: float) -> None:
    """A one-line progress bar on stderr (steps, loss, elapsed and remaining minutes)."""
    done = step / total
    elapsed = time.time() - start
    bar = "#" * int(30 * done) + "." * (30 - int(30 * done))
    eta = elapsed / done - elapsed if done else 0.0
    print(
        f"\r[{bar}] {step}/{total} loss {loss:.3f} {elapsed / 60:.1f} min, {eta / 60:.1f} min left",
        end="\n" if step == total else "",
        file=sys.stderr,
        flush=True,
    )


def _load_stage(args, tokenizer):
    from ..models import load_model

    model = load_model(args.init_from, backend="torch")
    if model.config.to_dict() != model_config(args.arch, tokenizer).to_dict():
        raise ValueError(
            f"--init-from {args.init_from}: not a checkpoint of the {args.arch} recipe"
        )
    model.tokenizer = tokenizer
    return model


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = CharTokenizer()
    if args.init_from:  # a further training stage: fresh optimizer
        model = _load_stage(args, tokenizer)
    else:
        model = new_model(args.arch, tokenizer, args.seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    generator = torch.Generator().manual_seed(args.seed)
    batches = batch_stream(tokenizer, args.batch_size, args.seed, args.arch)
    loss_fn = LOSSES[args.arch]
    log = []
    start = time.time()
    running = None
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        ids, prompt_lengths = next(batches)
        loss = loss_fn(model, ids, prompt_lengths, generator, tokenizer.mask_token_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            progress(step + 1, args.steps, start, running)
            entry = {
                "step": step + 1,
                "loss_ema": round(running, 4),
                "seconds": round(time.time() - start),
            }
            if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
                entry["heldout_loss"] = round(heldout_loss(model, tokenizer, args.arch), 4)
                save_checkpoint(model, args.out)
                tokenizer.save(os.path.join(args.out, "tokenizer.json"))
                print(json.dumps(entry), flush=True)
            log.append(entry)
    write_training_log(args, model, log, start)


def write_training_log(args, model, log, start) -> None:
    previous = []
    if args.init_from and os.path.isfile(os.path.join(args.init_from, "training_log.json")):
        with open(os.path.join(args.init_from, "training_log.json"), encoding="utf-8") as f:
            earlier = json.load(f)
        previous = earlier.pop("previous_stages", []) + [earlier]
    summary = {
        "previous_stages": previous,
        "arch": args.arch,
        "init_from": args.init_from,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup": args.warmup,
        "seed": args.seed,
        "threads": args.threads,
        "parameters": model.num_parameters(),
        "train_seconds": round(time.time() - start),
        "final_loss_ema": log[-1]["loss_ema"],
        "final_heldout_loss": log[-1]["heldout_loss"],
        "log": log,
    }
    with open(os.path.join(args.out, "training_log.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="llada", choices=ARCHS, help="which bundled model")
    parser.add_argument("--out", default=None, help="checkpoint directory (default: bundled)")
    parser.add_argument(
        "--steps", type=int, default=None, help="train one stage (default: the recipe)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init-from", default=None, help="start from this checkpoint (a further stage)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--eval-only", action="store_true", help="only evaluate --out")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    parser.add_argument("--eval-n", type=int, default=40, help="held-out prompts per kind")
    parser.add_argument("--eval-n-code", type=int, default=6, help="held-out code prompts")
    args = parser.parse_args(argv)
    if args.save_every % args.log_every:
        parser.error("--save-every must be a multiple of --log-every")
    if args.out is None:
        args.out = BUNDLED_MODELS[BUNDLED_NAME[args.arch]]
    if not args.eval_only:
        if args.steps is not None:
            train(args)
        else:
            run_recipe(args)
    if not args.no_eval:
        evaluate(args)


def run_recipe(args: argparse.Namespace) -> None:
    """Train the recipe's stages; intermediate stages live in a temporary directory (their
    logs are kept in the final ``training_log.json``)."""
    recipe = RECIPES[args.arch]
    with tempfile.TemporaryDirectory(prefix="tiny-stages-") as scratch:
        init_from = args.init_from
        for i, stage in enumerate(recipe):
            last = i == len(recipe) - 1
            out = args.out if last else os.path.join(scratch, str(i + 1))
            os.makedirs(out, exist_ok=True)
            stage_args = argparse.Namespace(**{**vars(args), **stage, "out": out})
            stage_args.init_from = init_from
            train(stage_args)
            init_from = out


if __name__ == "__main__":
    main()
