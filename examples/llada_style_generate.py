"""A decoding loop written the way LLaDA's reference ``generate`` is, driving Spiffy through the
step API (`spiffy_triton.SpiffyStepper`): the loop owns the sequence and the model call; the
stepper proposes the drafts to verify and walks the logits (docs/INTEGRATION.md).

    python examples/llada_style_generate.py

Its tokens and forward count equal `spiffy_triton.generate`'s with the same arguments
(tests/test_step_api.py), and its tokens equal vanilla decoding's (Spiffy is lossless).
"""

from __future__ import annotations

import torch

from spiffy_triton import SpiffyStepper


@torch.no_grad()
def generate(
    model,
    prompt,
    steps=64,
    gen_length=64,
    block_length=32,
    temperature=0.0,
    remasking="low_confidence",
    mask_id=126336,
    graph=8,
    seed=0,
):
    """LLaDA's ``generate`` loop with Spiffy's drafts: each forward evaluates the block's
    current state and the proposed drafts (each a batch row, no mask needed), and one forward
    may advance several steps. Returns the sequence and the number of forwards."""
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long).to(prompt.device)
    x[:, : prompt.shape[1]] = prompt.clone()

    spiffy = SpiffyStepper(
        prompt.shape[1],
        mask_id=mask_id,
        gen_length=gen_length,
        block_length=block_length,
        steps=steps,
        temperature=temperature,
        remasking=remasking,
        graph=graph,
        max_drafts=None,
        seed=seed,
        device=x.device,
    )
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length

    nfe, hint = 0, None
    for num_block in range(num_blocks):
        start = prompt.shape[1] + num_block * block_length
        block = spiffy.begin_block(x, start, hint=hint)
        while not block.done:
            inputs = spiffy.propose(block).inputs(x)  # x, with each draft as another row
            logits = model(inputs.input_ids)
            logits = getattr(logits, "logits", logits)  # a transformers output or a tensor
            nfe += 1
            root, drafts, hint = inputs.split(logits)
            result = spiffy.advance(block, root, drafts)
            x[0, block.start : block.end] = result.state
    return x, nfe


def main() -> None:
    from spiffy_triton import load_model

    model = load_model("tiny", dtype=torch.float32)
    prompt = torch.tensor([model.tokenizer.encode("Q: 4+5+6=?\nA: ")])
    mask_id = model.config.mask_token_id
    for graph in (None, 8):
        out, nfe = generate(model, prompt, mask_id=mask_id, graph=graph)
        text = model.tokenizer.decode(out[0, prompt.shape[1] :].tolist())
        print(f"graph={graph}: {nfe} forwards: {text!r}")


if __name__ == "__main__":
    main()
