"""Train, and evaluate, the bundled small LLaDA-style model (spiffy_triton/assets/tiny).

    python -m spiffy_triton.train_tiny                 # train (seeded), write the checkpoint
    python -m spiffy_triton.train_tiny --eval-only     # measure the checkpoint's card numbers

Objective: LLaDA's masked diffusion as in its SFT stage. Per sequence a masking level
``t ~ U(0, 1)`` (floored at ``eps``); each answer token (EOS padding included, so the model
learns where answers end) is masked with probability ``t``; the prompt is never masked; the
loss is the cross-entropy on masked tokens weighted by ``1 / t``, averaged over answer
tokens. Runs on one CPU thread (`--threads`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import torch
import torch.nn.functional as F

from . import tinydata
from .models import BUNDLED_MODELS, CharTokenizer, LLaDAConfig, LLaDAModel, save_checkpoint

MAX_LENGTH = 160
MASK_EPS = 1e-3


def tiny_config(tokenizer: CharTokenizer) -> LLaDAConfig:
    return LLaDAConfig(
        d_model=256,
        n_heads=4,
        n_kv_heads=2,
        n_layers=4,
        mlp_hidden_size=640,
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


def make_batch(
    examples: list[tinydata.Example], tokenizer: CharTokenizer, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[B, length]`` (answers padded with EOS) and the prompt lengths ``[B]``."""
    ids = torch.full((len(examples), length), tokenizer.eos_token_id, dtype=torch.long)
    prompt_lengths = torch.empty(len(examples), dtype=torch.long)
    for row, example in enumerate(examples):
        prompt = tokenizer.encode(example.prompt)
        text = prompt + tokenizer.encode(example.answer)
        if len(text) > length:
            raise ValueError(f"example of {len(text)} tokens does not fit length {length}")
        ids[row, : len(text)] = torch.tensor(text)
        prompt_lengths[row] = len(prompt)
    return ids, prompt_lengths


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


def diffusion_loss(
    model: LLaDAModel,
    ids: torch.Tensor,
    prompt_lengths: torch.Tensor,
    generator: torch.Generator,
    mask_token_id: int,
) -> torch.Tensor:
    """Masked-diffusion loss (see the module docstring)."""
    noisy, masked, level, is_answer = add_mask_noise(ids, prompt_lengths, generator, mask_token_id)
    logits = model(noisy)
    ce = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")
    weights = (1.0 / level).expand_as(masked)[masked]
    return (ce * weights).sum() / is_answer.sum()


def batch_stream(tokenizer: CharTokenizer, batch_size: int, seed: int):
    """Single-kind batches (kinds drawn by `tinydata.TRAIN_MIX`), padded to a length a little
    above the longest example so that every position up to MAX_LENGTH gets trained."""
    rng = random.Random(seed)
    streams = {k: tinydata.iter_examples("train", kinds=(k,), seed=seed) for k in tinydata.KINDS}
    kinds, weights = zip(*tinydata.TRAIN_MIX.items())
    while True:
        kind = rng.choices(kinds, weights)[0]
        batch = [next(streams[kind]) for _ in range(batch_size)]
        longest = max(len(e.prompt) + len(e.answer) for e in batch)
        length = min(MAX_LENGTH, 16 * math.ceil(longest / 16) + 16 * rng.randint(0, 2))
        yield make_batch(batch, tokenizer, length)


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def heldout_loss(model: LLaDAModel, tokenizer: CharTokenizer, n: int = 96, seed: int = 0):
    """Mean masked-diffusion loss on held-out examples (fixed masks)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    examples = tinydata.examples("heldout", n, seed=seed)
    total = 0.0
    for i in range(0, n, 32):
        ids, prompt_lengths = make_batch(examples[i : i + 32], tokenizer, MAX_LENGTH)
        loss = diffusion_loss(model, ids, prompt_lengths, generator, tokenizer.mask_token_id)
        total += float(loss) * len(ids)
    model.train()
    return total / n


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = CharTokenizer()
    model = LLaDAModel(tiny_config(tokenizer), backend="torch", tokenizer=tokenizer)
    model.init_weights(seed=args.seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    generator = torch.Generator().manual_seed(args.seed)
    batches = batch_stream(tokenizer, args.batch_size, args.seed)
    log = []
    start = time.time()
    running = None
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        ids, prompt_lengths = next(batches)
        loss = diffusion_loss(model, ids, prompt_lengths, generator, tokenizer.mask_token_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            elapsed = time.time() - start
            entry = {"step": step + 1, "loss_ema": round(running, 4), "seconds": round(elapsed)}
            if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
                entry["heldout_loss"] = round(heldout_loss(model, tokenizer), 4)
                save_checkpoint(model, args.out)
            log.append(entry)
            print(json.dumps(entry), flush=True)
    summary = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
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


# --------------------------------------------------------------------------- evaluation


def transfer_schedule(num_masked: int, steps: int) -> list[int]:
    """Tokens unmasked per step: num_masked // steps each, remainder over the first steps
    (LLaDA's get_num_transfer_tokens)."""
    base, remainder = divmod(num_masked, steps)
    return [base + (1 if i < remainder else 0) for i in range(steps)]


@torch.no_grad()
def vanilla_decode(model, prompt_ids: torch.Tensor, gen_length: int, block_length: int, steps: int):
    """LLaDA's generate at temperature 0 with low-confidence remasking, without cache: blocks
    decoded left to right, ``steps // num_blocks`` steps per block, each step commits the most
    confident masked positions of the current block. Returns ids and per-step confidences."""
    mask_id = model.config.mask_token_id
    b, p = prompt_ids.shape
    x = torch.full((b, p + gen_length), mask_id, dtype=torch.long)
    x[:, :p] = prompt_ids
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    confidences = []
    for block in range(num_blocks):
        start, end = p + block * block_length, p + (block + 1) * block_length
        schedule = transfer_schedule(block_length, steps_per_block)
        for count in schedule:
            logits = model(x).double()
            probs = logits.softmax(-1)
            tokens = logits.argmax(-1)
            confidence = probs.gather(-1, tokens[..., None])[..., 0]
            eligible = x == mask_id
            eligible[:, end:] = False
            confidence = torch.where(eligible, confidence, torch.full_like(confidence, -1.0))
            chosen = confidence.topk(count, dim=-1).indices
            x.scatter_(1, chosen, tokens.gather(1, chosen))
            confidences.append(confidence.gather(1, chosen).flatten())
    return x, torch.cat(confidences)


@torch.no_grad()
def masked_confidence(model, tokenizer, examples, ratios=(0.25, 0.5, 0.75, 1.0), seed=0):
    """Mean top-1 probability and top-1 accuracy at masked answer positions of held-out text
    (answer characters and the first EOS), with the answer masked at each ratio (positions
    drawn by a seeded generator)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for ratio in ratios:
        probs_sum = correct = count = 0.0
        for i in range(0, len(examples), 32):
            batch = examples[i : i + 32]
            ids, prompt_lengths = make_batch(batch, tokenizer, MAX_LENGTH)
            positions = torch.arange(ids.shape[1])[None]
            is_answer = positions >= prompt_lengths[:, None]
            masked = (torch.rand(ids.shape, generator=generator) < ratio) & is_answer
            noisy = torch.where(masked, torch.full_like(ids, tokenizer.mask_token_id), ids)
            # Score the answer text and its first EOS, not the long EOS padding after it.
            text_end = torch.tensor([len(e.prompt) + len(e.answer) for e in batch])
            scored = masked & (positions <= text_end[:, None])
            probs = model(noisy).double().softmax(-1)[scored]
            top_prob, top_token = probs.max(-1)
            probs_sum += float(top_prob.sum())
            correct += float((top_token == ids[scored]).sum())
            count += int(scored.sum())
        out[str(ratio)] = {
            "mean_top1_prob": round(probs_sum / count, 4),
            "top1_accuracy": round(correct / count, 4),
        }
    return out


def evaluate(args: argparse.Namespace) -> dict:
    from .models import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.out, dtype=torch.float32, backend="torch")
    tokenizer = model.tokenizer
    held = tinydata.heldout_prompts(args.eval_n)
    result = {"eval_n_per_kind": args.eval_n, "decode": {}}
    for kind in ("arith", "word", "code"):
        examples = held[kind]
        by_length: dict[int, list[int]] = {}
        for i, e in enumerate(examples):
            by_length.setdefault(len(e.prompt), []).append(i)
        correct = exact = 0
        step_conf = []
        for indices in by_length.values():
            prompts = torch.tensor([tokenizer.encode(examples[i].prompt) for i in indices])
            ids, conf = vanilla_decode(
                model, prompts, args.gen_length, args.block_length, args.gen_length
            )
            step_conf.append(conf)
            for row, i in enumerate(indices):
                text = tokenizer.decode(ids[row, prompts.shape[1] :].tolist())
                exact += text == examples[i].answer
                if kind != "code":
                    correct += tinydata.extract_answer(text) == examples[i].value
        entry = {
            "exact_match": round(exact / len(examples), 4),
            "mean_committed_confidence": round(float(torch.cat(step_conf).mean()), 4),
        }
        if kind != "code":
            entry["answer_accuracy"] = round(correct / len(examples), 4)
        result["decode"][kind] = entry
        print(json.dumps({kind: entry}), flush=True)
    all_examples = [e for kind in tinydata.KINDS for e in held[kind]]
    result["masked_answer_confidence"] = masked_confidence(model, tokenizer, all_examples)
    result["decode_settings"] = {
        "gen_length": args.gen_length,
        "block_length": args.block_length,
        "steps": args.gen_length,
        "remasking": "low_confidence",
        "temperature": 0.0,
    }
    print(json.dumps(result, indent=1), flush=True)
    with open(os.path.join(args.out, "eval.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=BUNDLED_MODELS["tiny"], help="checkpoint directory")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--eval-only", action="store_true", help="only evaluate --out")
    parser.add_argument("--eval-n", type=int, default=100, help="held-out prompts per kind")
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    args = parser.parse_args(argv)
    if args.save_every % args.log_every:
        parser.error("--save-every must be a multiple of --log-every")
    if not args.eval_only:
        train(args)
    evaluate(args)


if __name__ == "__main__":
    main()
