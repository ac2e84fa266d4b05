"""Bytes and FLOPs of a verify forward per operator, and their roofline time (MODELED)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .hardware import LOGIT_BYTES, Hardware, ModelShape, StepShape


@dataclass(frozen=True)
class Op:
    """One operator of the forward: its HBM traffic and FLOPs, repeated `count` times."""

    name: str
    group: str
    bytes: float
    flops: float
    count: int = 1


# Marginals of N rows x V vocabulary. The composition is eager PyTorch computing the same
# outputs as the fused kernel (token, its probability, top-k, lse, entropy): each op is counted
# as ONE read of its inputs and one write of its outputs - a lower bound for eager PyTorch
# (its softmax over a 126k row takes several passes). Entries: (op, bytes read, bytes written)
# per logit element; `s` stands for the logits' element size.
def composition_passes(logit_bytes: int, sampling: bool) -> list[tuple[str, float, float]]:
    passes = [
        ("upcast logits to fp32", logit_bytes, 4),
        ("log_softmax", 4, 4),
        ("exp -> probs", 4, 4),
        ("logsumexp (lse)", 4, 0),
        ("topk over probs", 4, 0),
        ("probs * log_probs", 8, 4),
        ("sum -> entropy", 4, 0),
    ]
    if sampling:
        passes += [
            ("rand_like (uniform noise)", 0, 4),
            ("log", 4, 4),
            ("neg", 4, 4),
            ("log", 4, 4),
            ("neg -> gumbel", 4, 4),
            ("logits / T", 4, 4),
            ("add noise", 8, 4),
            ("argmax (token)", 4, 0),
        ]
    else:
        passes.append(("argmax (token)", 4, 0))
    return passes


def marginals_bytes(
    rows: int,
    vocab: int,
    *,
    logit_bytes: int = LOGIT_BYTES,
    sampling: bool = False,
    fused: bool = True,
) -> float:
    """HBM bytes to compute the marginals of a [rows, vocab] logits tensor. Fused: one read of
    the logits (per-row outputs are negligible); composition: see `composition_passes`."""
    elements = rows * vocab
    if fused:
        return float(elements * logit_bytes)
    return float(elements * sum(r + w for _, r, w in composition_passes(logit_bytes, sampling)))


def attention_cost(
    model: ModelShape, step: StepShape, *, dense_mask: bool = False
) -> tuple[float, float]:
    """(bytes, FLOPs) of one layer's attention. Graph attention visits only visible pairs and
    reads no mask. Dense-mask SDPA computes every (query, key) pair and reads an additive bf16
    mask [Mq, Mk] once per layer (reuse across heads in L2 assumed: this favours SDPA), after
    converting the boolean mask (read 1 byte, write 2 bytes per pair). Q/K/V/O and the cache
    are each read or written once (K/V reuse across query tiles in L2 assumed)."""
    act = model.weight_bytes
    q_bytes = step.query_rows * model.q_width * act
    o_bytes = q_bytes
    kv_bytes = 2 * step.key_rows * model.kv_width * act
    pairs = step.dense_pairs if dense_mask else step.visible_pairs
    flops = 4.0 * pairs * model.head_dim * model.n_heads
    mask_bytes = (1 + 2 + 2) * step.dense_pairs if dense_mask else 0
    return float(q_bytes + o_bytes + kv_bytes + mask_bytes), flops


def forward_ops(
    model: ModelShape,
    step: StepShape,
    *,
    fused: bool = True,
    sampling: bool = False,
    logit_bytes: int = LOGIT_BYTES,
) -> list[Op]:
    """The operators of one verify forward with their bytes and FLOPs.

    `fused=True`: graph attention + fused marginals (this package's kernels);
    `fused=False`: dense-mask SDPA + eager marginals composition.
    """
    n = step.fresh_rows
    d, h, act = model.d_model, model.mlp_hidden, model.weight_bytes
    qw, kvw = model.q_width, model.kv_width
    layers = model.n_layers

    def gemm(name: str, k: int, m: int) -> Op:  # [n, k] @ [k, m]
        return Op(name, "linear", float((k * m + n * k + n * m) * act), 2.0 * n * k * m, layers)

    def elementwise(name: str, read: float, written: float) -> Op:
        return Op(name, "elementwise", float((read + written) * act), 0.0, layers)

    attn_bytes, attn_flops = attention_cost(model, step, dense_mask=not fused)
    ops = [
        Op("embedding gather", "elementwise", float(2 * n * d * act), 0.0),
        elementwise("attn_norm", n * d, n * d),
        gemm("q_proj", d, qw),
        gemm("k_proj", d, kvw),
        gemm("v_proj", d, kvw),
        elementwise("rope q,k", n * (qw + kvw), n * (qw + kvw)),
        Op("attention", "attention", attn_bytes, attn_flops, layers),
        gemm("attn_out", qw, d),
        elementwise("residual add", 2 * n * d, n * d),
        elementwise("ff_norm", n * d, n * d),
        gemm("ff_proj (gate)", d, h),
        gemm("up_proj", d, h),
        elementwise("silu(gate) * up", 2 * n * h, n * h),
        gemm("ff_out (down)", h, d),
        elementwise("residual add", 2 * n * d, n * d),
    ]
    if not fused:
        # the boolean [Mq, Mk] mask is built once per forward
        ops.append(Op("build dense mask", "attention", float(step.dense_pairs), 0.0))
    rows = step.block_rows
    ops += [
        Op("ln_f", "elementwise", float(2 * rows * d * act), 0.0),
        Op(
            "lm_head",
            "lm_head",
            float(model.lm_head_params * act + rows * d * act + rows * model.vocab * logit_bytes),
            2.0 * rows * d * model.vocab,
        ),
        Op(
            "marginals",
            "marginals",
            marginals_bytes(
                rows, model.vocab, logit_bytes=logit_bytes, sampling=sampling, fused=fused
            ),
            0.0,
        ),
    ]
    return ops


@dataclass(frozen=True)
class Prediction:
    bytes: float
    flops: float
    t_memory_ms: float  # whole forward: bytes / BW_eff
    t_compute_ms: float  # whole forward: FLOPs / FLOPS_eff
    t_roofline_ms: float  # max of the two: a lower bound
    t_step_ms: float  # sum over operators of their own roofline (+ launches): the prediction
    compute_bound: bool  # whole forward above the ridge
    launches: int


def predict(ops: Sequence[Op], hw: Hardware, *, launch_us: float = 0.0) -> Prediction:
    total_bytes = sum(op.bytes * op.count for op in ops)
    total_flops = sum(op.flops * op.count for op in ops)
    t_memory = total_bytes / hw.bytes_per_s
    t_compute = total_flops / hw.flops_per_s
    per_op = sum(op.count * max(op.bytes / hw.bytes_per_s, op.flops / hw.flops_per_s) for op in ops)
    launches = sum(op.count for op in ops)
    return Prediction(
        bytes=total_bytes,
        flops=total_flops,
        t_memory_ms=t_memory * 1e3,
        t_compute_ms=t_compute * 1e3,
        t_roofline_ms=max(t_memory, t_compute) * 1e3,
        t_step_ms=(per_op + launches * launch_us * 1e-6) * 1e3,
        compute_bound=t_compute > t_memory,
        launches=launches,
    )


def group_totals(ops: Sequence[Op]) -> dict[str, tuple[float, float]]:
    """{group: (bytes, FLOPs)} summed over operators."""
    totals: dict[str, tuple[float, float]] = {}
    for op in ops:
        b, f = totals.get(op.group, (0.0, 0.0))
        totals[op.group] = (b + op.bytes * op.count, f + op.flops * op.count)
    return totals


def crossover_drafts(
    model: ModelShape,
    hw: Hardware,
    *,
    context: int,
    block: int,
    cached: bool = True,
    max_drafts: int = 1024,
    **kwargs,
) -> int | None:
    """Smallest D whose whole verify forward is compute-bound on `hw`, or None up to
    `max_drafts`. Bytes and FLOPs both grow with D, FLOPs faster, so the first D found is the
    crossover."""
    for drafts in range(max_drafts + 1):
        ops = forward_ops(model, StepShape(context, block, drafts, cached), **kwargs)
        if predict(ops, hw).compute_bound:
            return drafts
    return None
