"""Train, and evaluate, the bundled small LLaDA-style model (spiffy_triton/assets/tiny).

    python -m spiffy_triton.train_tiny                 # the bundled recipe (both stages) + eval
    python -m spiffy_triton.train_tiny --eval-only     # measure the checkpoint's card numbers
    python -m spiffy_triton.train_tiny --steps N ...   # one stage of N steps

The bundled recipe (`RECIPE`) is two seeded stages: the second starts from the first's
weights with a fresh optimizer, warm-up and cosine schedule, on new examples (another seed).

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
import tempfile
import time

import torch
import torch.nn.functional as F

from . import tinydata
from .models import BUNDLED_MODELS, CharTokenizer, LLaDAConfig, LLaDAModel, save_checkpoint

MAX_LENGTH = 160
MASK_EPS = 1e-3
# The bundled model's stages: each continues from the previous one's weights.
RECIPE = ({"steps": 900, "warmup": 50, "seed": 0},)


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
    if args.init_from:
        # A further training stage: start from a checkpoint's weights (fresh optimizer).
        from .models import load_checkpoint

        model = load_checkpoint(args.init_from, backend="torch")
        if model.config.to_dict() != tiny_config(tokenizer).to_dict():
            raise ValueError(f"--init-from {args.init_from}: not a checkpoint of tiny_config")
        model.tokenizer = tokenizer
    else:
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
    previous = []
    if args.init_from and os.path.isfile(os.path.join(args.init_from, "training_log.json")):
        with open(os.path.join(args.init_from, "training_log.json"), encoding="utf-8") as f:
            earlier = json.load(f)
        previous = earlier.pop("previous_stages", []) + [earlier]
    summary = {
        "previous_stages": previous,
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
        end = p + (block + 1) * block_length
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


@torch.no_grad()
def packed_layout_difference(path, held, block_length: int, num_drafts: int = 4) -> dict:
    """How far the uncached packed Spiffy layout is from exact on this bidirectional model.

    For each held-out prompt (float64): the root is prompt + a fully masked block + a masked
    suffix of one more block; draft ``i`` fills the first ``2 i + 1`` block positions with the
    reference answer. Each draft's logits from one packed forward are compared with a full
    forward of the sequence holding that draft. Reports the max |logit| and |prob|
    differences and the fraction of positions whose argmax token differs.
    """
    from .layout import SegmentLayout
    from .models import load_model

    model = load_model(path, dtype=torch.float64, backend="torch")
    tokenizer, mask_id = model.tokenizer, model.config.mask_token_id
    max_logit = max_prob = 0.0
    flips = positions = prompts = 0
    for kind in tinydata.KINDS:
        for example in held[kind][:10]:
            prompts += 1
            prompt = tokenizer.encode(example.prompt)
            answer = tokenizer.encode(example.answer)[:block_length]
            s, e = len(prompt), len(prompt) + block_length
            root = torch.tensor(prompt + [mask_id] * (2 * block_length))[None]
            drafts = []
            for i in range(num_drafts):
                draft = torch.full((block_length,), mask_id)
                n = min(2 * i + 1, len(answer))
                draft[:n] = torch.tensor(answer[:n])
                drafts.append(draft)
            t = root.shape[1]
            layout = SegmentLayout.spiffy(s, block_length, t - e, num_drafts)
            ids = torch.cat([root[0], *drafts])[None]
            pos = torch.cat([torch.arange(t), torch.arange(s, e).repeat(num_drafts)])
            packed = model(ids, position_ids=pos, layout=layout)
            for i, draft in enumerate(drafts):
                alone_ids = root.clone()
                alone_ids[0, s:e] = draft
                alone = model(alone_ids)[0, s:e]
                got = packed[0, t + i * block_length : t + (i + 1) * block_length]
                max_logit = max(max_logit, float((got - alone).abs().max()))
                max_prob = max(max_prob, float((got.softmax(-1) - alone.softmax(-1)).abs().max()))
                still_masked = draft == mask_id
                flips += int((got.argmax(-1) != alone.argmax(-1))[still_masked].sum())
                positions += int(still_masked.sum())
    return {
        "prompts": prompts,
        "drafts_per_prompt": num_drafts,
        "max_abs_logit_diff": max_logit,
        "max_abs_prob_diff": round(max_prob, 6),
        "argmax_flip_rate_on_masked_positions": round(flips / max(positions, 1), 6),
        "masked_positions_compared": positions,
        "dtype": "float64",
    }


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
    result["uncached_packed_layout"] = packed_layout_difference(args.out, held, args.block_length)
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
    write_model_card(args.out)
    return result


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_model_card(path: str) -> None:
    """Render MODEL_CARD.md from the measured training_log.json and eval.json in `path`."""
    with open(os.path.join(path, "training_log.json"), encoding="utf-8") as f:
        train_log = json.load(f)
    with open(os.path.join(path, "eval.json"), encoding="utf-8") as f:
        ev = json.load(f)
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    size_mb = os.path.getsize(os.path.join(path, "model.safetensors")) / 2**20
    decode = ev["decode"]
    settings = ev["decode_settings"]
    confidence_rows = "\n".join(
        f"| {ratio} | {v['mean_top1_prob']:.3f} | {v['top1_accuracy']:.3f} |"
        for ratio, v in ev["masked_answer_confidence"].items()
    )
    decode_rows = "\n".join(
        f"| {kind} | {_fmt(v.get('answer_accuracy'))} | {v['exact_match']:.3f} | "
        f"{v['mean_committed_confidence']:.3f} |"
        for kind, v in decode.items()
    )
    packed = ev["uncached_packed_layout"]
    stages = train_log.get("previous_stages", []) + [train_log]
    loss_rows = "\n".join(
        f"| {n} | {e['step']} | {e['loss_ema']:.3f} | {e['heldout_loss']:.3f} | {e['seconds']} |"
        for n, stage in enumerate(stages, 1)
        for e in stage["log"]
        if "heldout_loss" in e
    )
    stage_rows = "\n".join(
        f"| {n} | {'random init' if not st.get('init_from') else 'stage ' + str(n - 1)} | "
        f"{st['steps']} | {st['batch_size']} | {st['lr']:g} | {st.get('warmup', '-')} | "
        f"{st['seed']} | {st['train_seconds'] / 60:.1f} |"
        for n, st in enumerate(stages, 1)
    )
    total_steps = sum(st["steps"] for st in stages)
    total_minutes = sum(st["train_seconds"] for st in stages) / 60
    card = f"""# Model card: spiffy-triton `tiny`

A LLaDA-format masked-diffusion language model in miniature, trained by this project on CPU
so that everything in the package runs offline on a real (not random) model. It loads with
`spiffy_triton.load_model("tiny")` (with its tokenizer) and uses LLaDA's parameter names and
config keys, so it is also the test fixture for the LLaDA checkpoint loader.

All numbers below are measured and written by `python -m spiffy_triton.train_tiny`
(training + evaluation) or `python -m spiffy_triton.train_tiny --eval-only` (evaluation of
the committed checkpoint); the raw numbers are in `training_log.json` and `eval.json`.

## Architecture

Bidirectional LLaMA-style transformer (RMSNorm, SwiGLU, RoPE, GQA, no causal mask):
d_model {config["d_model"]}, {config["n_layers"]} layers, {config["n_heads"]} query heads,
{config["n_kv_heads"]} KV heads (head_dim {config["d_model"] // config["n_heads"]}),
mlp_hidden_size {config["mlp_hidden_size"]}, vocabulary {config["vocab_size"]},
rope_theta {config["rope_theta"]:g}, max_sequence_length {config["max_sequence_length"]}
(trained on sequences of at most {MAX_LENGTH} tokens).
{train_log["parameters"]:,} parameters, stored as float32 safetensors ({size_mb:.1f} MB).

## Tokenizer

Character level (`tokenizer.json`): ids 0-3 are `<|eos|>` (also padding), `<|bos|>`,
`<|mask|>` (id {config["mask_token_id"]}), `<|unk|>`; then newline and printable ASCII 32-126.
Prompts are encoded as plain characters (no BOS).

## Data (`spiffy_triton/tinydata.py`, generated, nothing downloaded)

- `arith`: `Q: 23+4*5=?\\nA: ` -> `4*5=20; 23+20=43. #### 43` (2-3 operations of + - *,
  operands 1-99, factors 2-12, products first, non-negative intermediates);
- `word`: four templates of short word problems with the same worked-answer format;
- `code`: `# f: sum of xs\\n` -> a short Python function (eight templates with random names
  and constants).

Training mix 40% arith / 30% word / 30% code. Splits are disjoint by a CRC32 hash of the
prompt (10% held-out, 10% calibration, 80% train), so no held-out prompt is ever trained on.
`tinydata.heldout_prompts(n)` returns the held-out prompts per kind used below.

## Training

LLaDA's SFT objective: per sequence `t ~ U(0.001, 1)`, each answer token (the EOS padding
included, so the model learns where answers end) masked with probability `t`, prompts never
masked; loss = cross-entropy on masked tokens / t, averaged over answer tokens. Sequences
are one example padded with EOS to a length up to 160; batches of one kind.

Stages (`RECIPE` in `train_tiny.py`; a later stage, if any, starts from the previous
stage's weights with a fresh AdamW, warm-up and cosine schedule, and a new data seed).
Initialisation: embedding N(0, 1), every matrix N(0, 1/fan_in), norms 1 (`init_weights`).
AdamW betas (0.9, 0.98), weight decay 0.01, linear warm-up then cosine to 10% of
the peak lr, gradient clipping 1.0, {train_log["threads"]} CPU thread:

| stage | starts from | steps | batch | peak lr | warm-up | seed | minutes |
|---:|---|---:|---:|---:|---:|---:|---:|
{stage_rows}

In all {total_steps} steps ({total_steps * train_log["batch_size"]:,} sequences),
{total_minutes:.1f} minutes wall clock on a 2-core machine shared with other jobs (the time
depends on their load). Final training loss (EMA) {train_log["final_loss_ema"]:.3f};
held-out loss {train_log["final_heldout_loss"]:.3f} (96 held-out examples, fixed masks).
Losses are the weighted objective above (nats per answer token, EOS padding included).

| stage | step | train loss (EMA) | held-out loss | seconds |
|---:|---:|---:|---:|---:|
{loss_rows}

## Evaluation ({ev["eval_n_per_kind"]} held-out prompts per kind)

Vanilla decoding as LLaDA's `generate`: temperature {settings["temperature"]},
`{settings["remasking"]}` remasking, gen_length {settings["gen_length"]}, block_length
{settings["block_length"]}, steps {settings["steps"]} (one token per step), no cache.
"answer accuracy" = the number after `####` equals the reference; "exact match" = the whole
generated answer equals the reference text; "committed confidence" = mean softmax
probability of the token committed at each step (what Spiffy's drafts are built from).

| kind | answer accuracy | exact match | mean committed confidence |
|---|---:|---:|---:|
{decode_rows}

Sharpness of the marginals on held-out text: the answer of every held-out example masked
at random with the given ratio; mean top-1 probability and top-1 accuracy over the masked
answer characters (and the first EOS):

| mask ratio | mean top-1 probability | top-1 accuracy |
|---:|---:|---:|
{confidence_rows}

Uncached packed verification layout on this bidirectional model (float64,
{packed["prompts"]} held-out prompts, {packed["drafts_per_prompt"]} drafts each, see
`packed_layout_difference`): drafts in one packed forward vs each draft's own full forward
differ by at most {packed["max_abs_logit_diff"]:.3g} in a logit and
{packed["max_abs_prob_diff"]:.3g} in a probability; the argmax token differs at a fraction
{packed["argmax_flip_rate_on_masked_positions"]:.4f} of {packed["masked_positions_compared"]}
masked positions. This layout is near-lossless only; verification with a KV cache (exact
against cached vanilla decoding) or with drafts as separate batch rows is exact.

## Reproduce

```bash
python -m spiffy_triton.train_tiny              # all stages (seeded) + evaluation + this card
python -m spiffy_triton.train_tiny --eval-only  # evaluate the committed checkpoint
```

## Limitations

A few million parameters trained for minutes on one CPU thread: see the accuracy table for
how often its arithmetic is right. It is a test and benchmark model for decoding algorithms
(NFE, acceptance, losslessness), not a useful language model; its prompts must follow the
formats above.
"""
    with open(os.path.join(path, "MODEL_CARD.md"), "w", encoding="utf-8") as f:
        f.write(card)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=BUNDLED_MODELS["tiny"], help="checkpoint directory")
    parser.add_argument(
        "--steps", type=int, default=None, help="train one stage (default: the RECIPE)"
    )
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init-from", default=None, help="start from this checkpoint (a further stage)"
    )
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
        if args.steps is not None:
            train(args)
        else:
            run_recipe(args)
    evaluate(args)


def run_recipe(args: argparse.Namespace) -> None:
    """Train the `RECIPE` stages; intermediate stages live in a temporary directory (their
    logs are kept in the final ``training_log.json``)."""
    with tempfile.TemporaryDirectory(prefix="tiny-stages-") as scratch:
        init_from = args.init_from
        for i, stage in enumerate(RECIPE):
            last = i == len(RECIPE) - 1
            out = args.out if last else os.path.join(scratch, str(i + 1))
            os.makedirs(out, exist_ok=True)
            stage_args = argparse.Namespace(**{**vars(args), **stage, "out": out})
            stage_args.init_from = init_from
            train(stage_args)
            init_from = out


if __name__ == "__main__":
    main()
