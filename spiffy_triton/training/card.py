"""Model cards and training curves of the bundled small models, rendered from the measured
``training_log.json`` and ``eval.json`` in the checkpoint directory."""

from __future__ import annotations

import json
import os

from . import sequences, tinydata

CURVE_FILE = "training_curve.png"


def _read(path: str, name: str) -> dict:
    with open(os.path.join(path, name), encoding="utf-8") as f:
        return json.load(f)


def _stages(train_log: dict) -> list[dict]:
    return train_log.get("previous_stages", []) + [train_log]


def plot_training_curve(path: str) -> str:
    """Training loss (EMA) and held-out loss against the step, written next to the weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offset, steps, train, held_steps, held = 0, [], [], [], []
    for stage in _stages(_read(path, "training_log.json")):
        for e in stage["log"]:
            steps.append(offset + e["step"])
            train.append(e["loss_ema"])
            if "heldout_loss" in e:
                held_steps.append(offset + e["step"])
                held.append(e["heldout_loss"])
        offset += stage["steps"]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    ax.plot(steps, train, label="training loss (EMA)")
    ax.plot(held_steps, held, "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / answer token)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(os.path.basename(os.path.normpath(path)))
    fig.tight_layout()
    out = os.path.join(path, CURVE_FILE)
    fig.savefig(out)
    plt.close(fig)
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


ACCURACY_HEADER = (
    "| task | prompts | answer (vanilla) | answer (Spiffy) | exact (vanilla) | exact (Spiffy) "
    "| identical | NFE vanilla | NFE Spiffy |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def accuracy_rows(decode: dict) -> str:
    return "\n".join(
        f"| {task} | {v['n']} | {_fmt(v.get('vanilla_answer_accuracy'))} | "
        f"{_fmt(v.get('spiffy_answer_accuracy'))} | {v['vanilla_exact_match']:.3f} | "
        f"{v['spiffy_exact_match']:.3f} | {v['identical']}/{v['n']} | "
        f"{v['vanilla_mean_nfe']:.1f} | {v['spiffy_mean_nfe']:.1f} |"
        for task, v in decode.items()
    )


def training_section(train_log: dict) -> str:
    stages = _stages(train_log)
    loss_rows = "\n".join(
        f"| {n} | {e['step']} | {e['loss_ema']:.3f} | {e['heldout_loss']:.3f} | {e['seconds']} |"
        for n, stage in enumerate(stages, 1)
        for e in stage["log"]
        if "heldout_loss" in e
    )
    stage_rows = "\n".join(
        f"| {n} | {'random init' if not st.get('init_from') else 'stage ' + str(n - 1)} | "
        f"{st['steps']} | {st['batch_size']} | {st['lr']:g} | {st.get('warmup', '-')} | "
        f"{st['seed']} | {st['threads']} | {st['train_seconds'] / 60:.1f} |"
        for n, st in enumerate(stages, 1)
    )
    total_steps = sum(st["steps"] for st in stages)
    sequences = sum(st["steps"] * st["batch_size"] for st in stages)
    total_minutes = sum(st["train_seconds"] for st in stages) / 60
    return f"""AdamW betas (0.9, 0.98), weight decay 0.01 (matrices), linear warm-up then cosine to
10% of the peak lr, gradient clipping 1.0. Answer digits weigh {sequences.DIGIT_WEIGHT:g}x in the
loss (`DIGIT_WEIGHT`: they carry the sums; the other answer tokens are copies, format and EOS).
Stages (`RECIPES` in `train_tiny.py`; a later stage, if any, starts from the previous stage's
weights with a fresh optimizer and schedule):

| stage | starts from | steps | batch | peak lr | warm-up | seed | threads | minutes |
|---:|---|---:|---:|---:|---:|---:|---:|---:|
{stage_rows}

In all {total_steps} steps ({sequences:,} sequences), {total_minutes:.1f} minutes wall clock on a
2-core machine shared with other jobs (the time depends on their load). Final training loss
(EMA) {train_log["final_loss_ema"]:.3f}; held-out loss {train_log["final_heldout_loss"]:.3f}
(96 held-out examples, fixed masks). Training curve: `{CURVE_FILE}`.

| stage | step | train loss (EMA) | held-out loss | seconds |
|---:|---:|---:|---:|---:|
{loss_rows}"""


def _data_section() -> str:
    mix, share2 = tinydata.TRAIN_MIX, tinydata.SUM2_SHARE
    (a2, b2), (a3, b3), (aw, bw) = tinydata.SUM2_RANGE, tinydata.SUM3_RANGE, tinydata.WORD_RANGE
    return f"""## Data (`spiffy_triton/training/tinydata.py`, generated, nothing downloaded)

Tasks chosen for what a model of a couple of million parameters learns in under an hour on a
CPU: sums of small numbers, with a short worked answer that does one addition or subtraction
per step (left to right) and ends with `#### <value>`. The operands are digits on purpose:
every task then draws on one small table of sums and differences, which this model learns
in the budget. With larger operands it did not learn the sums in time (operands up to 30:
0% held-out after 1200 steps of 64; up to 20: no held-out sum right from one forward after
1000 steps).

- `arith`: a two-term sum of digits {a2}-{b2} ({share2:.0%}), `Q: 8+7=?\\nA: ` -> `8+7=15. #### 15`,
  or a three-term sum of digits {a3}-{b3}, `Q: 7+5+9=?\\nA: ` -> `7+5=12; 12+9=21. #### 21`;
- `word`: four templates of short word problems with numbers {aw}-{bw} (a sum, a difference, a
  sum of two people's items, a sum then a difference), e.g.
  `Q: Ann has 3 pens, gets 5 more. How many now?\\nA: ` -> `3+5=8. #### 8`;
- `code`: `# f: sum of xs\\n` -> a short Python function (eight templates), {mix["code"]:.0%} of
  training; not a task this model is meant to get right (exact match below).

Training mix {mix["arith"]:.0%} arith / {mix["word"]:.0%} word / {mix["code"]:.0%} code. Splits
are disjoint by a CRC32 hash of the prompt (10% held-out, 10% calibration, 80% train), so no
held-out prompt is ever trained on. `tinydata.heldout_prompts(n)` returns the held-out prompts
per kind used below. Two-term digit sums have only 81 prompts, 8 of them held out: that row of
the table is all of them (its sums also occur inside training examples of the other tasks)."""


TOKENIZER_SECTION = """## Tokenizer

Character level (`tokenizer.json`): ids 0-3 are `<|eos|>` (also padding), `<|bos|>`,
`<|mask|>` (id 2), `<|unk|>`; then newline and printable ASCII 32-126. Prompts are encoded
as plain characters (no BOS)."""


def evaluation_section(ev: dict) -> str:
    s = ev["decode_settings"]
    counts = ", ".join(f"{n} {k}" for k, n in ev["eval_n_per_kind"].items())
    return f"""## Evaluation (held-out prompts: {counts})

Decoding as the main job: `spiffy_triton.decoding.generate`, temperature {s["temperature"]},
`{s["remasking"]}` remasking, gen_length {s["gen_length"]}, block_length {s["block_length"]},
{s["steps"]} steps (one token per step), cache `{s["cache"]}`; vanilla, and Spiffy with the
{s["spiffy_graph"]}. "answer" = the number after `####` equals the reference; "exact" = the
whole answer text equals the reference; "identical" = Spiffy's tokens equal vanilla's (lossless
by construction); NFE = forward passes per prompt.

{ACCURACY_HEADER}
{accuracy_rows(ev["decode"])}"""


TARGET_ACCURACY = 0.6  # issue #16: held-out answer accuracy of the main job's kinds


def _verdict(decode: dict) -> str:
    """Whether every arithmetic task reaches `TARGET_ACCURACY` (measured, vanilla), and which
    do not."""
    accuracy = {
        task: v["vanilla_answer_accuracy"]
        for task, v in decode.items()
        if "vanilla_answer_accuracy" in v
    }
    low, high = min(accuracy.values()), max(accuracy.values())
    if low >= TARGET_ACCURACY:
        return f"Held-out answer accuracy is {low:.0%}-{high:.0%} on every arithmetic task."
    short = ", ".join(f"{t} ({a:.0%})" for t, a in accuracy.items() if a < TARGET_ACCURACY)
    return (
        f"Held-out answer accuracy is {low:.0%}-{high:.0%} per task; **below the "
        f"{TARGET_ACCURACY:.0%} this project aims for on {short}**."
    )


def write_model_card(path: str) -> None:
    """Render MODEL_CARD.md of the checkpoint in `path` (LLaDA or SDAR recipe)."""
    train_log = _read(path, "training_log.json")
    ev = _read(path, "eval.json")
    config = _read(path, "config.json")
    size_mb = os.path.getsize(os.path.join(path, "model.safetensors")) / 2**20
    render = _sdar_card if ev.get("arch") == "sdar" else _llada_card
    card = render(train_log, ev, config, size_mb)
    with open(os.path.join(path, "MODEL_CARD.md"), "w", encoding="utf-8") as f:
        f.write(card)


def _llada_card(train_log: dict, ev: dict, config: dict, size_mb: float) -> str:
    confidence_rows = "\n".join(
        f"| {ratio} | {v['mean_top1_prob']:.3f} | {v['top1_accuracy']:.3f} |"
        for ratio, v in ev["masked_answer_confidence"].items()
    )
    packed = ev["uncached_packed_layout"]
    verdict = _verdict(ev["decode"])
    return f"""# Model card: spiffy-triton `tiny`

A LLaDA-format masked-diffusion language model in miniature, trained by this project on CPU
so that everything in the package runs offline on a real model that gets its answers right.
It loads with `spiffy_triton.load_model("tiny")` (with its tokenizer) and uses LLaDA's
parameter names and config keys, so it is also the test fixture for the LLaDA loader.

All numbers below are measured and written by `python -m spiffy_triton.training.train_tiny`
(training + evaluation) or `... --eval-only` (evaluation of the committed checkpoint); the raw
numbers are in `training_log.json` and `eval.json`.

## Architecture

Bidirectional LLaMA-style transformer (RMSNorm, SwiGLU, RoPE, GQA, no causal mask):
d_model {config["d_model"]}, {config["n_layers"]} layers, {config["n_heads"]} query heads,
{config["n_kv_heads"]} KV heads (head_dim {config["d_model"] // config["n_heads"]}),
mlp_hidden_size {config["mlp_hidden_size"]}, vocabulary {config["vocab_size"]},
rope_theta {config["rope_theta"]:g}, max_sequence_length {config["max_sequence_length"]}
(trained on sequences of at most {sequences.MAX_LENGTH} tokens).
{train_log["parameters"]:,} parameters, stored as float32 safetensors ({size_mb:.1f} MB).

{TOKENIZER_SECTION}

{_data_section()}

## Training

LLaDA's SFT objective: per sequence `t ~ U(0.001, 1)`, each answer token (the EOS padding
included, so the model learns where answers end) masked with probability `t`, prompts never
masked; loss = cross-entropy on masked tokens / t, averaged over answer tokens. Batches of
one kind, padded a little past the longest example, or ({sequences.LONG_PAD_SHARE:.0%} of
them) {sequences.GEN_LENGTH} tokens past the longest prompt, as the main job generates.
Initialisation: embedding N(0, 1), every matrix N(0, 1/fan_in), norms 1 (`init_weights`).
{training_section(train_log)}

{evaluation_section(ev)}

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
python -m spiffy_triton.training.train_tiny              # the seeded recipe + evaluation + card
python -m spiffy_triton.training.train_tiny --eval-only  # evaluate the committed checkpoint
```

## Limitations

A small model trained for minutes: it knows the formats above and nothing else. {verdict}
It is a test and benchmark model for decoding algorithms (NFE, acceptance, losslessness),
not a useful language model.
"""


def _sdar_card(train_log: dict, ev: dict, config: dict, size_mb: float) -> str:
    block = config["block_size"]
    return f"""# Model card: spiffy-triton `tiny-sdar`

A block-causal (SDAR-style) diffusion language model in miniature, trained by this project on
CPU with the same tokenizer and data as `tiny`: attention is bidirectional inside a block of
{block} tokens and causal across blocks, and the model denoises one block at a time given the
clean blocks before it. It loads with `spiffy_triton.load_model("tiny-sdar")` (an
`SDARModel`, Qwen3 names and config keys, `model_type` "sdar").

All numbers below are measured and written by
`python -m spiffy_triton.training.train_tiny --arch sdar` (or `... --arch sdar --eval-only`);
the raw numbers are in `training_log.json` and `eval.json`.

## Architecture

Qwen3-style transformer (RMSNorm, q/k norms, SwiGLU, RoPE, GQA, tied embeddings),
block-causal attention: hidden_size {config["hidden_size"]}, {config["num_hidden_layers"]} layers,
{config["num_attention_heads"]} query heads, {config["num_key_value_heads"]} KV heads (head_dim
{config["head_dim"]}), intermediate_size {config["intermediate_size"]}, vocabulary
{config["vocab_size"]}, rope_theta {config["rope_theta"]:g}. **Trained block length:
{block}** (`block_size` in config.json; decode with `block_length={block}`).
{train_log["parameters"]:,} parameters, stored as float32 safetensors ({size_mb:.1f} MB).

{TOKENIZER_SECTION}

{_data_section()}

## Training

SDAR's block-diffusion objective: the prompt is cut into chunks of {block} from position 0 and
the answer (with one or two EOS-padded blocks after it) into blocks of {block} from the
prompt's end, as `generate` does; attention is block-causal over those chunks. Per sequence
one answer block is drawn uniformly and a level `t ~ U(0.001, 1)`; that block's tokens are
masked with probability `t`, the blocks before it stay clean (what the decoder has committed
when it decodes the block); loss = cross-entropy on its masked tokens / t, averaged over the
block's tokens. Rows of a batch share their prompt length (one layout per batch).
Initialisation: Qwen-style N(0, 0.02), output projections scaled by 1/sqrt(2 layers), norms 1.
{training_section(train_log)}

{evaluation_section(ev)}

## Reproduce

```bash
python -m spiffy_triton.training.train_tiny --arch sdar              # recipe + eval + card
python -m spiffy_triton.training.train_tiny --arch sdar --eval-only  # evaluate the checkpoint
```

## Limitations

Smaller and trained for less time than `tiny`. {_verdict(ev["decode"])} A test model for
block-causal decoding (SimSD, Spiffy on SDAR), not a useful language model.
"""
