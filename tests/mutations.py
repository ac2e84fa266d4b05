"""The critical lines of spiffy-triton, each with a mutant and the tests that must kill it.

Run with ``python scripts/mutate.py`` (not part of CI; docs/TESTING.md says how long it
takes). Each entry names the module (resolved with importlib at run time, so a file that
moves keeps its entry as long as its import name stays), exact text replacements (each
``old`` must occur exactly once in the module's file) and the pytest node ids or ``-k``
selections that must fail once the replacements are applied. A mutant whose tests all pass
is a survivor: a missing test.

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    module: str
    replacements: tuple[tuple[str, str], ...]
    tests: tuple[str, ...]  # pytest arguments (node ids, files, "-k" expressions)
    why: str


WALK_TESTS = (
    "tests/test_walk.py::test_dream_walk_through_non_first_drafts",
    "tests/test_walk.py::test_sdar_walk_through_non_first_drafts",
)

MUTANTS = (
    # ----------------------------------------------------------------------- the walk
    Mutant(
        "walk-reads-first-draft",
        "spiffy_triton.decoding.methods",
        (("walk.logits = forward.draft_logits[match]", "walk.logits = forward.draft_logits[0]"),),
        WALK_TESTS,
        "the walk must apply R to the logits of the draft it matched",
    ),
    Mutant(
        "walk-lookup-by-mask-pattern",
        "spiffy_triton.decoding.methods",
        (
            (
                "lookup = {tuple(row): k for k, row in enumerate(drafts.states.tolist())}",
                "lookup = {tuple(t == rule.mask_id for t in row): k"
                " for k, row in enumerate(drafts.states.tolist())}",
            ),
            (
                "lookup.get(tuple(state))",
                "lookup.get(tuple(t == rule.mask_id for t in state))",
            ),
        ),
        WALK_TESTS,
        "acceptance must compare whole states (tokens, not only which positions are filled)",
    ),
    Mutant(
        "walk-counts-acceptance-on-node-0",
        "spiffy_triton.decoding.methods",
        (
            (
                "stats.node_accepted[drafts.nodes[match]] += 1",
                "stats.node_accepted[drafts.nodes[0]] += 1",
            ),
        ),
        ("tests/test_walk.py::test_dream_walk_through_non_first_drafts",),
        "per-node acceptance statistics (calibration and the budget learn from them)",
    ),
    # ----------------------------------------------------- mask visibility: reference side
    Mutant(
        "dense-mask-strict-causal",
        "spiffy_triton.layout",
        (
            (
                "((vis == CAUSAL) & (k_off[None, :] <= q_off[:, None]))",
                "((vis == CAUSAL) & (k_off[None, :] < q_off[:, None]))",
            ),
        ),
        ("tests/test_layout.py",),
        "CAUSAL: a row sees keys at offsets <= its own (the diagonal included)",
    ),
    Mutant(
        "reference-attention-ignores-causal",
        "spiffy_triton.reference.graph_attention",
        (("if CAUSAL in relations:", "if False:"),),
        ("tests/test_graph_attention.py::test_reference_matches_dense_formula",),
        "the reference masks CAUSAL segments element by element",
    ),
    Mutant(
        "reference-attention-sees-none-segments",
        "spiffy_triton.layout",
        (
            (
                "if row[j] != NONE and self.k_lengths[j]]",
                "if self.k_lengths[j]]",
            ),
        ),
        ("tests/test_graph_attention.py::test_reference_matches_dense_formula",),
        "NONE segments are never visited",
    ),
    Mutant(
        "spiffy-layout-draft-sees-root",
        "spiffy_triton.layout",
        (("row = [FULL, NONE, FULL] + [NONE] * d", "row = [FULL, FULL, FULL] + [NONE] * d"),),
        ("tests/test_layout.py",),
        "a draft sees prefix, suffix and itself, never the root block",
    ),
    Mutant(
        "prefix-cache-layout-draft-sees-root",
        "spiffy_triton.verify_inputs",
        (("row = [FULL, NONE] + [NONE] * d", "row = [FULL, FULL] + [NONE] * d"),),
        ("tests/test_walk.py::test_llada_verifier_gives_each_draft_its_own_logits",),
        "prefix cache, packed: a draft (with its suffix) sees the prefix and itself only",
    ),
    # ---------------------------------------------------------- mask visibility: kernel side
    Mutant(
        "kernel-strict-causal",
        "spiffy_triton.kernels.graph_attention",
        (
            (
                "(key_offset[None, :] <= q_offset[:, None])",
                "(key_offset[None, :] < q_offset[:, None])",
            ),
        ),
        ("tests/test_graph_attention.py::test_attention_parity",),
        "kernel CAUSAL rule, diagonal included",
    ),
    Mutant(
        "kernel-causal-as-full",
        "spiffy_triton.kernels.graph_attention",
        (("visible = (relation[:, None] == FULL) |", "visible = (relation[:, None] >= FULL) |"),),
        ("tests/test_graph_attention.py::test_attention_parity",),
        "kernel: only FULL tiles are visible without the offset test",
    ),
    Mutant(
        "schedule-skips-diagonal-tile",
        "spiffy_triton.tile_schedule",
        (
            (
                "if relation == CAUSAL and b_lo > a_hi:",
                "if relation == CAUSAL and b_lo >= a_hi:",
            ),
        ),
        ("tests/test_layout.py",),
        "tile schedule: a CAUSAL key tile is skipped only when every key is after every row",
    ),
    # ------------------------------------------------------------------------ top-k insertion
    Mutant(
        "kernel-topk-insert-even-when-smaller",
        "spiffy_triton.kernels.marginals_helpers",
        (
            (
                "return tl.where((slots == slot) & (candidate > smallest), candidate, topk)",
                "return tl.where((slots == slot), candidate, topk)",
            ),
        ),
        ("tests/test_marginals.py::test_marginals_parity",),
        "top-k insertion replaces the smallest slot only by a larger key (a block's later "
        "keys may fall below the ones it just inserted)",
    ),
    Mutant(
        "kernel-topk-one-insert-short",
        "spiffy_triton.kernels.marginals_helpers",
        (
            (
                "for _ in range(tl.minimum(count, K)):",
                "for _ in range(tl.minimum(count, K - 1)):",
            ),
        ),
        ("tests/test_marginals.py::test_marginals_parity",),
        "every block key above the k-th is inserted (up to K)",
    ),
    Mutant(
        "reference-topk-ties-to-highest-id",
        "spiffy_triton.reference.marginals",
        (
            (
                "packed = (key << 32) | (MAX_VOCAB - ids)",
                "packed = (key << 32) | ids",
            ),
            (
                "return MAX_VOCAB - (torch.topk(packed, count, dim=-1).values & MASK32)",
                "return torch.topk(packed, count, dim=-1).values & MASK32",
            ),
        ),
        ("tests/test_marginals.py::test_reference_ties_go_to_lowest_id",),
        "top-k ties go to the lowest vocabulary id",
    ),
    # ------------------------------------------------------ noise keyed by (seed, step, pos)
    Mutant(
        "reference-noise-ignores-step",
        "spiffy_triton.contract",
        (
            (
                "        (positions & MASK32)[:, None],\n"
                "        torch.tensor(step & MASK32, dtype=torch.int64, device=device),",
                "        (positions & MASK32)[:, None],\n"
                "        torch.tensor(0, dtype=torch.int64, device=device),",
            ),
        ),
        ("tests/test_marginals.py::test_noise_is_a_function_of_seed_step_position_vocab",),
        "reference Gumbel noise is keyed by the step",
    ),
    Mutant(
        "reference-noise-ignores-position",
        "spiffy_triton.contract",
        (("(positions & MASK32)[:, None],", "(positions & 0)[:, None],"),),
        ("tests/test_marginals.py::test_noise_is_a_function_of_seed_step_position_vocab",),
        "reference Gumbel noise is keyed by the position",
    ),
    Mutant(
        "reference-noise-ignores-seed-high-word",
        "spiffy_triton.contract",
        (
            (
                "        (seed >> 32) & MASK32,\n    )\n    # Vocabulary",
                "        0,\n    )\n    # Vocabulary",
            ),
        ),
        ("tests/test_marginals.py",),
        "reference Gumbel noise is keyed by the whole 64-bit seed",
    ),
    Mutant(
        "kernel-noise-ignores-step",
        "spiffy_triton.kernels.marginals",
        (
            (
                "step_u = step.to(tl.uint32, bitcast=True)",
                "step_u = (step * 0).to(tl.uint32, bitcast=True)",
            ),
        ),
        ("tests/test_marginals.py::test_marginals_parity",),
        "kernel Gumbel noise is keyed by the step",
    ),
    Mutant(
        "decoder-noise-keyed-by-block-offset",
        "spiffy_triton.decoding.methods",
        (
            (
                "walk.logits, step=run.step, positions=block.positions, top_k=top_k",
                "walk.logits, step=run.step, positions=block.positions - block.start, top_k=top_k",
            ),
        ),
        ("tests/test_dream.py::test_vanilla_generate_is_dream_decoding",),
        "the decoder keys noise by absolute position (what vanilla's written-out loop does)",
    ),
    # --------------------------------------------------------------------------- cache windows
    Mutant(
        "llada-dual-cache-suffix-values-wrong",
        "spiffy_triton.models.llada",
        (
            (
                "suffix_v=v[:, :, block_end:].contiguous() if dual else None,",
                "suffix_v=k[:, :, block_end:].contiguous() if dual else None,",
            ),
        ),
        ("tests/test_models.py",),
        "the dual cache keeps the values after the block",
    ),
    Mutant(
        "llada-prefix-cache-window-shifted",
        "spiffy_triton.models.llada",
        (
            (
                "prefix_k=k[:, :, :block_start].contiguous(),",
                "prefix_k=k[:, :, 1 : block_start + 1].contiguous(),",
            ),
        ),
        ("tests/test_models.py",),
        "the prefix cache holds the keys of [0, block_start)",
    ),
    # ---------------------------------------------------------- SimSD-exact candidate states
    Mutant(
        "simsd-exact-one-token-per-candidate",
        "spiffy_triton.decoding.simsd.accept",
        (("filled += rule.schedule[index]", "filled += 1"),),
        ("tests/test_simsd.py",),
        "candidates follow vanilla's schedule (tokens per step)",
    ),
    Mutant(
        "simsd-exact-least-confident-first",
        "spiffy_triton.decoding.simsd.accept",
        (
            (
                "order = sorted(range(state.shape[0]), key=lambda p: (-float(confidence[p]), p))",
                "order = sorted(range(state.shape[0]), key=lambda p: (float(confidence[p]), p))",
            ),
        ),
        ("tests/test_simsd.py",),
        "candidates fill the draft's most confident positions first",
    ),
    Mutant(
        "interpreter-launches-concurrent",
        "spiffy_triton.triton_mode",
        (
            (
                "return _INTERPRETER_LOCK if interpreter_enabled() else contextlib.nullcontext()",
                "return contextlib.nullcontext()",
            ),
        ),
        ("tests/test_batch_interpreter.py",),
        "batched rows run in threads; interpreted kernel launches must not overlap",
    ),
)
