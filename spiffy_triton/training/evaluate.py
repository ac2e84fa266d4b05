"""Evaluation of the bundled small models: held-out answer accuracy per task, vanilla and
Spiffy decoding with the main job's settings (`spiffy_triton.decoding.generate`), and (LLaDA)
how sharp the marginals are and how far the uncached packed layout is from exact."""

from __future__ import annotations

import json
import os
import time

import torch

from ..decoding import generate
from ..layout import SegmentLayout
from ..models import load_model
from . import sequences, tinydata
from .card import plot_training_curve, write_model_card

# Decoding of the accuracy tables: the main job's settings (greedy, low-confidence remasking,
# one token per step); LLaDA with the demo's dual cache, SDAR with its per-block KV commit.
DECODE_SETTINGS = {
    "llada": {"gen_length": 96, "block_length": 32, "cache": "dual"},
    "sdar": {"gen_length": 64, "block_length": sequences.SDAR_BLOCK, "cache": "prefix"},
}
SPIFFY_GRAPH = 8


def task_of(example: tinydata.Example) -> str:
    """The row of the accuracy table: arith split by its number of terms."""
    if example.kind == "arith":
        return f"arith ({example.prompt.count('+') + 1} terms)"
    return example.kind


def _answer_text(tokenizer, ids: list[int], eos_id: int) -> str:
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return tokenizer.decode(ids)


@torch.no_grad()
def decode_accuracy(model, held: dict, settings: dict, spiffy_graph: int = SPIFFY_GRAPH) -> dict:
    """Per task: answer accuracy (the number after ``####`` equals the reference) and exact
    match of the whole answer, for vanilla and for Spiffy (default graph, every node
    verified); how many Spiffy outputs equal vanilla's; the mean NFE of each."""
    tokenizer, eos = model.tokenizer, model.config.eos_token_id
    options = dict(temperature=0.0, remasking="low_confidence", **settings)
    tasks: dict[str, dict] = {}
    for kind, examples in held.items():
        for example in examples:
            prompt = torch.tensor([tokenizer.encode(example.prompt)])
            vanilla = generate(model, prompt, **options)
            spiffy = generate(model, prompt, graph=spiffy_graph, max_drafts=None, **options)
            row = tasks.setdefault(task_of(example), {"n": 0})
            for name, out in (("vanilla", vanilla), ("spiffy", spiffy)):
                text = _answer_text(tokenizer, out.tokens[0, prompt.shape[1] :].tolist(), eos)
                right = kind != "code" and tinydata.extract_answer(text) == example.value
                row[f"{name}_correct"] = row.get(f"{name}_correct", 0) + int(right)
                row[f"{name}_exact"] = row.get(f"{name}_exact", 0) + int(text == example.answer)
                row[f"{name}_nfe"] = row.get(f"{name}_nfe", 0) + out.nfe
            row["identical"] = row.get("identical", 0) + int(
                torch.equal(vanilla.tokens, spiffy.tokens)
            )
            row["n"] += 1
    out = {}
    for task, row in tasks.items():
        n = row["n"]
        entry = {"n": n, "identical": row["identical"]}
        for name in ("vanilla", "spiffy"):
            if not task.startswith("code"):
                entry[f"{name}_answer_accuracy"] = round(row[f"{name}_correct"] / n, 4)
            entry[f"{name}_exact_match"] = round(row[f"{name}_exact"] / n, 4)
            entry[f"{name}_mean_nfe"] = round(row[f"{name}_nfe"] / n, 2)
        out[task] = entry
        print(json.dumps({task: entry}), flush=True)
    return out


def evaluate(args) -> dict:
    """Measure the checkpoint in ``args.out`` and write eval.json, the card and the curve."""
    torch.set_num_threads(args.threads)
    begin = time.time()
    model = load_model(args.out, dtype=torch.float32, backend="torch")
    held = tinydata.heldout_prompts(args.eval_n)
    held["code"] = held["code"][: args.eval_n_code]
    settings = DECODE_SETTINGS[args.arch]
    result = {
        "arch": args.arch,
        "eval_n_per_kind": {k: len(v) for k, v in held.items()},
        "decode_settings": {
            **settings,
            "steps": settings["gen_length"],
            "remasking": "low_confidence",
            "temperature": 0.0,
            "spiffy_graph": f"default({SPIFFY_GRAPH}), every node verified",
        },
        "decode": decode_accuracy(model, held, settings),
    }
    if args.arch == "llada":
        all_examples = [e for kind in tinydata.KINDS for e in held[kind]]
        result["masked_answer_confidence"] = masked_confidence(model, model.tokenizer, all_examples)
        result["uncached_packed_layout"] = packed_layout_difference(
            args.out, held, settings["block_length"]
        )
    result["eval_seconds"] = round(time.time() - begin)
    with open(os.path.join(args.out, "eval.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    plot_training_curve(args.out)
    write_model_card(args.out)
    return result


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
            ids, prompt_lengths = sequences.make_batch(batch, tokenizer, sequences.MAX_LENGTH)
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
