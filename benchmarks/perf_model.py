"""Analytic performance model of a Spiffy verify step of LLaDA-8B on one H100 / H200.

THIS IS A MODEL, NOT A MEASUREMENT. It counts the bytes a forward pass moves through HBM and
the FLOPs it does, and turns them into a predicted time with a roofline whose ceilings are
vendor peak numbers times assumed achievable fractions (see `HARDWARE`). Nothing here ran on
a GPU; `benchmarks/graph_attention.py` and `benchmarks/marginals.py` measure on one.

A verify step with D drafts and block length L evaluates the root block and D draft copies:
- cached (Fast-dLLM dual cache, the exact mode): query rows (1 + D) * L, keys = C cached
  context rows (prefix + suffix) + (1 + D) * L fresh rows;
- uncached: query rows = key rows = C + (1 + D) * L (the whole packed sequence).
Every row that belongs to a block copy (root or draft) needs logits and marginals.

Predicted step time = sum over operators of max(bytes / BW_eff, FLOPs / FLOPS_eff)
(+ an optional launch cost per operator). The whole-forward roofline
max(total bytes / BW_eff, total FLOPs / FLOPS_eff) is reported beside it as a lower bound.

Run: `python benchmarks/perf_model.py` (table + benchmarks/results/perf_model*.json + PNG).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.timing import RESULTS_DIR, format_table, write_results

GB = 1e9
TFLOP = 1e12
LOGIT_BYTES = 2  # bf16 logits out of the LM head


@dataclass(frozen=True)
class ModelShape:
    """Dimensions of a LLaMA-style bidirectional transformer (SwiGLU MLP, untied LM head)."""

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_hidden: int
    vocab: int
    weight_bytes: int = 2  # bf16

    def __post_init__(self):
        for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden"):
            if getattr(self, field) <= 0:
                raise ValueError(f"ModelShape.{field} must be positive, got {getattr(self, field)}")
        if self.vocab <= 0 or self.weight_bytes <= 0:
            raise ValueError("ModelShape.vocab and weight_bytes must be positive")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )

    @property
    def q_width(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def attn_params(self) -> int:  # q, k, v, out projections
        return self.d_model * (2 * self.q_width + 2 * self.kv_width)

    @property
    def mlp_params(self) -> int:  # gate, up, down
        return 3 * self.d_model * self.mlp_hidden

    @property
    def layer_params(self) -> int:  # norms' weights are negligible and left out
        return self.attn_params + self.mlp_params

    @property
    def lm_head_params(self) -> int:
        return self.d_model * self.vocab

    @property
    def total_params(self) -> int:
        """Layers + LM head + embedding (untied)."""
        return self.n_layers * self.layer_params + 2 * self.lm_head_params

    @property
    def streamed_weight_bytes(self) -> int:
        """Weights every forward reads in full: all layers and the LM head (the embedding is
        a gather of the rows' token vectors, counted with the activations)."""
        return (self.n_layers * self.layer_params + self.lm_head_params) * self.weight_bytes


LLADA_8B = ModelShape(
    name="LLaDA-8B",
    d_model=4096,
    n_layers=32,
    n_heads=32,
    n_kv_heads=32,
    head_dim=128,
    mlp_hidden=12288,
    vocab=126464,
)


@dataclass(frozen=True)
class Hardware:
    """Roofline ceilings. `peak_*` are vendor datasheet numbers; `*_eff` are ASSUMED fractions
    of them that tuned kernels reach (not measured by this project)."""

    name: str
    peak_tflops: float  # dense bf16 tensor-core, no sparsity
    peak_tbps: float  # HBM bandwidth, TB/s
    compute_eff: float
    memory_eff: float
    source: str

    def __post_init__(self):
        if self.peak_tflops <= 0 or self.peak_tbps <= 0:
            raise ValueError(f"{self.name}: peak_tflops and peak_tbps must be positive")
        for field in ("compute_eff", "memory_eff"):
            value = getattr(self, field)
            if not 0 < value <= 1:
                raise ValueError(f"{self.name}: {field} must be in (0, 1], got {value}")

    @property
    def flops_per_s(self) -> float:
        return self.peak_tflops * TFLOP * self.compute_eff

    @property
    def bytes_per_s(self) -> float:
        return self.peak_tbps * 1e12 * self.memory_eff

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) above which an operator is compute-bound."""
        return self.flops_per_s / self.bytes_per_s


# Assumed achievable fractions: large bf16 GEMMs with cuBLAS/CUTLASS reach roughly 70% of the
# dense peak on Hopper; streaming kernels roughly 85% of HBM bandwidth. Override on the CLI.
DEFAULT_COMPUTE_EFF = 0.70
DEFAULT_MEMORY_EFF = 0.85
HARDWARE = {
    "H100-SXM": Hardware(
        "H100-SXM",
        peak_tflops=989.0,
        peak_tbps=3.35,
        compute_eff=DEFAULT_COMPUTE_EFF,
        memory_eff=DEFAULT_MEMORY_EFF,
        source="NVIDIA H100 SXM5 datasheet: 989 TFLOP/s dense BF16, 3.35 TB/s HBM3, 80 GB",
    ),
    "H200-SXM": Hardware(
        "H200-SXM",
        peak_tflops=989.0,
        peak_tbps=4.8,
        compute_eff=DEFAULT_COMPUTE_EFF,
        memory_eff=DEFAULT_MEMORY_EFF,
        source="NVIDIA H200 SXM datasheet: 989 TFLOP/s dense BF16, 4.8 TB/s HBM3e, 141 GB",
    ),
}


@dataclass(frozen=True)
class StepShape:
    """One verify forward: context C, block length L, D drafts, cached (dual cache) or not."""

    context: int
    block: int
    drafts: int
    cached: bool = True

    def __post_init__(self):
        if self.context < 0:
            raise ValueError(f"context must be >= 0, got {self.context}")
        if self.block <= 0:
            raise ValueError(f"block must be positive, got {self.block}")
        if self.drafts < 0:
            raise ValueError(f"drafts must be >= 0, got {self.drafts}")

    @property
    def block_rows(self) -> int:
        """Rows of the root block and its draft copies: the rows that need logits."""
        return (1 + self.drafts) * self.block

    @property
    def query_rows(self) -> int:
        return self.block_rows if self.cached else self.context + self.block_rows

    @property
    def key_rows(self) -> int:
        return self.context + self.block_rows

    @property
    def fresh_rows(self) -> int:
        """Rows that run through the layers (and whose K/V are computed in this forward)."""
        return self.query_rows

    @property
    def visible_pairs(self) -> int:
        """(query, key) pairs the graph mask lets attend (DESIGN.md section 3). Every block
        copy sees the context and itself: C + L keys; without cache the C context rows also
        see the context and the root (never a draft)."""
        seen = self.context + self.block
        if self.cached:
            return self.block_rows * seen
        return seen * seen + self.drafts * self.block * seen

    @property
    def dense_pairs(self) -> int:
        return self.query_rows * self.key_rows


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


def load_steps_per_forward(path: Path, *, cache: str = "dual") -> dict[int, float]:
    """Mean steps advanced per forward (vanilla NFE / Spiffy NFE) per draft budget D, from the
    NFE study's JSON (`benchmarks/nfe.py`). Reads rows with a draft-count key (`drafts`,
    `num_drafts`, `max_drafts`, `budget`, `D`) and one of `steps_per_forward`,
    `steps_per_nfe`, `nfe_speedup`. Where rows carry them, only the configuration this model
    describes is kept: `cache` ("dual" or "none"), temperature 0, the schedule rule (no
    threshold / factor). Several rows left for one D (prompt kinds, graphs) are averaged."""
    payload = json.loads(Path(path).read_text())
    rows = payload.get("rows", payload) if isinstance(payload, dict) else payload
    rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    for key, wanted in (("cache", cache), ("temperature", 0), ("threshold", None)):
        matching = [r for r in rows if key in r and r[key] == wanted]
        if matching:
            rows = matching
    draft_keys = ("drafts", "num_drafts", "max_drafts", "budget", "D")
    value_keys = ("steps_per_forward", "steps_per_nfe", "nfe_speedup")
    found: dict[int, list[float]] = {}
    for row in rows:
        drafts = next((row[k] for k in draft_keys if isinstance(row.get(k), int)), None)
        value = next((row[k] for k in value_keys if isinstance(row.get(k), (int, float))), None)
        if drafts is not None and value is not None and math.isfinite(value):
            found.setdefault(drafts, []).append(float(value))
    return {d: sum(v) / len(v) for d, v in sorted(found.items())}


def parse_steps_per_forward(text: str) -> dict[int, float]:
    """'3:2.1,5:2.4' -> {3: 2.1, 5: 2.4}."""
    result = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            drafts, value = item.split(":")
            result[int(drafts)] = float(value)
        except ValueError as exc:
            raise ValueError(
                f"--steps-per-forward: expected 'D:value,...' (e.g. '3:2.1,5:2.4'), got {item!r}"
            ) from exc
        if result[int(drafts)] < 1.0:
            raise ValueError(f"--steps-per-forward: D={drafts} advances < 1 step per forward")
    return result


def block_time_ms(
    model: ModelShape,
    hw: Hardware,
    *,
    context: int,
    block: int,
    drafts: int,
    steps_per_forward: float,
    vanilla_steps: int,
    cached: bool,
    launch_us: float = 0.0,
    **kwargs,
) -> float:
    """Predicted time to decode one block of `vanilla_steps` transitions. Cached: one prefill
    forward over the whole sequence (it refreshes the dual cache and gives the first step's
    logits), then verify steps; uncached: verify steps only. Forwards = steps / spf."""
    if steps_per_forward < 1.0:
        raise ValueError(f"steps_per_forward must be >= 1, got {steps_per_forward}")
    forwards = vanilla_steps / steps_per_forward
    step = StepShape(context, block, drafts, cached)
    t_step = predict(forward_ops(model, step, **kwargs), hw, launch_us=launch_us).t_step_ms
    if not cached:
        return forwards * t_step
    prefill = StepShape(context, block, 0, cached=False)
    t_prefill = predict(forward_ops(model, prefill, **kwargs), hw, launch_us=launch_us).t_step_ms
    return t_prefill + max(forwards - 1.0, 0.0) * t_step


def step_rows(
    model: ModelShape,
    hardware: Sequence[Hardware],
    *,
    contexts: Sequence[int],
    drafts: Sequence[int],
    block: int,
    cached: bool,
    steps_per_forward: dict[int, float],
    vanilla_steps: int,
    sampling: bool,
    launch_us: float,
) -> list[dict]:
    rows = []
    for hw in hardware:
        for context in contexts:
            base = predict(
                forward_ops(model, StepShape(context, block, 0, cached), sampling=sampling),
                hw,
                launch_us=launch_us,
            )
            vanilla_block = block_time_ms(
                model,
                hw,
                context=context,
                block=block,
                drafts=0,
                steps_per_forward=1.0,
                vanilla_steps=vanilla_steps,
                cached=cached,
                launch_us=launch_us,
                sampling=sampling,
            )
            for d in drafts:
                step = StepShape(context, block, d, cached)
                ops = forward_ops(model, step, sampling=sampling)
                pred = predict(ops, hw, launch_us=launch_us)
                composed = predict(
                    forward_ops(model, step, sampling=sampling, fused=False),
                    hw,
                    launch_us=launch_us,
                )
                groups = group_totals(ops)
                weights = model.streamed_weight_bytes
                kv_cache = (
                    model.n_layers * 2 * context * model.kv_width * model.weight_bytes
                    if cached
                    else 0
                )
                logits = step.block_rows * model.vocab * LOGIT_BYTES
                marg = groups["marginals"][0]
                spf = steps_per_forward.get(d, 1.0 if d == 0 else None)
                block_ms = (
                    block_time_ms(
                        model,
                        hw,
                        context=context,
                        block=block,
                        drafts=d,
                        steps_per_forward=spf,
                        vanilla_steps=vanilla_steps,
                        cached=cached,
                        launch_us=launch_us,
                        sampling=sampling,
                    )
                    if spf is not None
                    else None
                )
                row = {
                    "gpu": hw.name,
                    "cached": cached,
                    "C": context,
                    "D": d,
                    "query_rows": step.query_rows,
                    # an additive split of the bytes: weights + cache + activations + logits
                    # (LM head output) + marginals (reads of the logits) = total
                    "weights_GB": weights / GB,
                    "kv_cache_GB": kv_cache / GB,
                    "activations_GB": (pred.bytes - weights - kv_cache - logits - marg) / GB,
                    "logits_GB": logits / GB,
                    "marginals_GB": marg / GB,
                    "total_GB": pred.bytes / GB,
                    "linear_TFLOP": groups["linear"][1] / TFLOP,
                    "attn_TFLOP": groups["attention"][1] / TFLOP,
                    "lm_head_TFLOP": groups["lm_head"][1] / TFLOP,
                    "total_TFLOP": pred.flops / TFLOP,
                    "intensity": pred.flops / pred.bytes,
                    "t_mem_ms": pred.t_memory_ms,
                    "t_compute_ms": pred.t_compute_ms,
                    "t_step_ms": pred.t_step_ms,
                    "bound": "compute" if pred.compute_bound else "memory",
                    "step_cost_vs_D0": pred.t_step_ms / base.t_step_ms,
                    "t_step_composed_ms": composed.t_step_ms,
                    "fused_saving_pct": 100.0 * (1.0 - pred.t_step_ms / composed.t_step_ms),
                    "steps_per_forward": spf,
                    "speedup_per_step": (
                        spf * base.t_step_ms / pred.t_step_ms if spf is not None else None
                    ),
                    "speedup_per_block": (
                        vanilla_block / block_ms if block_ms is not None else None
                    ),
                    "tokens_per_s": block * 1e3 / block_ms if block_ms is not None else None,
                }
                rows.append(row)
    return rows


def marginals_rows(
    model: ModelShape, hardware: Sequence[Hardware], *, block: int, drafts: Sequence[int]
) -> list[dict]:
    rows = []
    for sampling in (False, True):
        for d in drafts:
            n = (1 + d) * block
            fused = marginals_bytes(n, model.vocab, sampling=sampling)
            composed = marginals_bytes(n, model.vocab, sampling=sampling, fused=False)
            row = {
                "temperature": ">0" if sampling else "0",
                "D": d,
                "rows": n,
                "fused_MB": fused / 1e6,
                "composition_MB": composed / 1e6,
                "ratio": composed / fused,
            }
            for hw in hardware:
                row[f"saved_ms_{hw.name}"] = (composed - fused) / hw.bytes_per_s * 1e3
            rows.append(row)
    return rows


def attention_rows(
    model: ModelShape, hardware: Sequence[Hardware], *, contexts, block, drafts
) -> list[dict]:
    rows = []
    for cached in (True, False):
        for context in contexts:
            for d in drafts:
                step = StepShape(context, block, d, cached)
                g_bytes, g_flops = attention_cost(model, step)
                s_bytes, s_flops = attention_cost(model, step, dense_mask=True)
                row = {
                    "cached": cached,
                    "C": context,
                    "D": d,
                    "visible_frac": step.visible_pairs / step.dense_pairs,
                    "graph_MB_layer": g_bytes / 1e6,
                    "sdpa_MB_layer": s_bytes / 1e6,
                    "graph_GFLOP_layer": g_flops / 1e9,
                    "sdpa_GFLOP_layer": s_flops / 1e9,
                }
                for hw in hardware:
                    t_graph = max(g_bytes / hw.bytes_per_s, g_flops / hw.flops_per_s)
                    t_sdpa = max(s_bytes / hw.bytes_per_s, s_flops / hw.flops_per_s)
                    row[f"saved_ms_fwd_{hw.name}"] = model.n_layers * (t_sdpa - t_graph) * 1e3
                rows.append(row)
    return rows


def plot(step_table: list[dict], out_path: Path, acceptance: str = "") -> Path | None:
    """Predicted step time and speedup against D, one line per GPU and context."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    has_speedup = any(r["D"] > 0 and r["speedup_per_block"] is not None for r in step_table)
    fig, axes = plt.subplots(1, 2 if has_speedup else 1, figsize=(11 if has_speedup else 6, 4))
    axes = list(axes) if has_speedup else [axes]
    series: dict[tuple, list[dict]] = {}
    for r in step_table:
        series.setdefault((r["gpu"], r["C"], r["cached"]), []).append(r)
    for (gpu, context, cached), rows in series.items():
        label = f"{gpu} C={context}{'' if cached else ' uncached'}"
        axes[0].plot([r["D"] for r in rows], [r["t_step_ms"] for r in rows], "o-", label=label)
        if has_speedup:
            pts = [(r["D"], r["speedup_per_block"]) for r in rows if r["speedup_per_block"]]
            axes[1].plot(*zip(*pts), "o-", label=label)
    axes[0].set(
        xlabel="drafts D", ylabel="predicted verify step (ms)", title="MODEL: LLaDA-8B step"
    )
    if has_speedup:
        axes[1].set(
            xlabel=f"drafts D   (acceptance: {acceptance})"[:90],
            ylabel="predicted tokens/s speedup",
            title="MODEL: speedup per block",
        )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def build_hardware(names: Sequence[str], compute_eff: float, memory_eff: float) -> list[Hardware]:
    unknown = [n for n in names if n not in HARDWARE]
    if unknown:
        raise ValueError(f"--gpus: unknown {unknown}; expected some of {sorted(HARDWARE)}")
    return [
        Hardware(hw.name, hw.peak_tflops, hw.peak_tbps, compute_eff, memory_eff, hw.source)
        for hw in (HARDWARE[n] for n in names)
    ]


def parse_ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 0:
        raise ValueError(f"{name}: expected non-negative integers, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", default="H100-SXM,H200-SXM")
    parser.add_argument("--contexts", default="512,1024,2048", help="context lengths C")
    parser.add_argument("--drafts", default="0,1,2,3,4,5,6,7,8,10,12,16", help="draft counts D")
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--compute-eff", type=float, default=DEFAULT_COMPUTE_EFF)
    parser.add_argument("--memory-eff", type=float, default=DEFAULT_MEMORY_EFF)
    parser.add_argument("--launch-us", type=float, default=0.0, help="cost per kernel launch")
    parser.add_argument("--sampling", action="store_true", help="temperature > 0 (Gumbel)")
    parser.add_argument(
        "--vanilla-steps", type=int, default=32, help="vanilla transitions per block"
    )
    parser.add_argument(
        "--acceptance-json",
        default=f"{RESULTS_DIR / 'nfe.json'},{RESULTS_DIR / 'wallclock.json'}",
        help="measured acceptance: the first of these JSON files that has steps per forward",
    )
    parser.add_argument(
        "--steps-per-forward",
        default=None,
        help="PLACEHOLDER acceptance 'D:spf,...' used only when no acceptance JSON has any",
    )
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--quick", action="store_true", help="fewer contexts and drafts")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    hardware = build_hardware(
        [n.strip() for n in args.gpus.split(",") if n.strip()], args.compute_eff, args.memory_eff
    )
    contexts = [1024] if args.quick else parse_ints(args.contexts, "--contexts")
    drafts = [0, 3, 5, 8, 10] if args.quick else parse_ints(args.drafts, "--drafts")
    out_dir = Path(args.out_dir) if args.out_dir else RESULTS_DIR

    # Acceptance per cache mode: rows of the cached model read dual-cache acceptance, rows of
    # the uncached model the no-cache one (the same when the JSON does not tell them apart).
    acceptance = {"dual": {}, "none": {}}
    acceptance_source = "none measured: speedup not predicted"
    for path in (Path(p.strip()) for p in args.acceptance_json.split(",") if p.strip()):
        if path.is_file():
            acceptance = {c: load_steps_per_forward(path, cache=c) for c in acceptance}
        if acceptance["dual"]:
            acceptance_source = f"measured on the bundled model: {path.name}"
            break
    if not acceptance["dual"] and args.steps_per_forward:
        placeholder = parse_steps_per_forward(args.steps_per_forward)
        acceptance = {"dual": placeholder, "none": placeholder}
        acceptance_source = "PLACEHOLDER given on the command line (not measured)"
    drafts = sorted(set(drafts) | set(acceptance["dual"]) | set(acceptance["none"]))

    assumptions = {
        "label": "MODELED, not measured: analytic bytes/FLOPs + roofline with assumed ceilings",
        "model": asdict(LLADA_8B),
        "params_total": LLADA_8B.total_params,
        "streamed_weight_GB": LLADA_8B.streamed_weight_bytes / GB,
        "hardware": {
            hw.name: {
                **asdict(hw),
                "eff_TFLOPs": hw.flops_per_s / TFLOP,
                "eff_TBps": hw.bytes_per_s / 1e12,
                "ridge_flop_per_byte": hw.ridge,
            }
            for hw in hardware
        },
        "block": args.block,
        "sampling": args.sampling,
        "launch_us": args.launch_us,
        "vanilla_steps_per_block": args.vanilla_steps,
        "acceptance": acceptance_source,
        "steps_per_forward": acceptance,
    }

    print("MODELED, not measured. Ceilings (vendor peak x assumed fraction):")
    for hw in hardware:
        print(
            f"  {hw.name}: {hw.flops_per_s / TFLOP:.0f} TFLOP/s, {hw.bytes_per_s / 1e12:.2f} TB/s"
            f" effective; ridge {hw.ridge:.0f} FLOP/byte  [{hw.source}]"
        )
    print(f"  acceptance: {acceptance_source}")

    crossover = []
    for hw in hardware:
        for context in contexts:
            for cached in (True, False):
                crossover.append(
                    {
                        "gpu": hw.name,
                        "C": context,
                        "cached": cached,
                        "compute_bound_from_D": crossover_drafts(
                            LLADA_8B,
                            hw,
                            context=context,
                            block=args.block,
                            cached=cached,
                            sampling=args.sampling,
                        ),
                    }
                )
    common = dict(
        contexts=contexts,
        drafts=drafts,
        block=args.block,
        vanilla_steps=args.vanilla_steps,
        sampling=args.sampling,
        launch_us=args.launch_us,
    )
    cached_rows = step_rows(
        LLADA_8B, hardware, cached=True, steps_per_forward=acceptance["dual"], **common
    )
    uncached_rows = step_rows(
        LLADA_8B, hardware, cached=False, steps_per_forward=acceptance["none"], **common
    )
    tables = {
        "perf_model": (cached_rows + uncached_rows, None),
        "perf_model_crossover": (crossover, None),
        "perf_model_marginals": (
            marginals_rows(LLADA_8B, hardware, block=args.block, drafts=drafts),
            None,
        ),
        "perf_model_attention": (
            attention_rows(LLADA_8B, hardware, contexts=contexts, block=args.block, drafts=drafts),
            None,
        ),
    }
    shown = (
        "gpu C D query_rows total_GB total_TFLOP intensity t_mem_ms t_compute_ms t_step_ms "
        "bound step_cost_vs_D0 fused_saving_pct steps_per_forward speedup_per_block"
    ).split()
    for name, (rows, _) in tables.items():
        print(f"== {name} (MODELED) ==")
        if name == "perf_model":
            for label, part in (("dual cache", cached_rows), ("no cache", uncached_rows)):
                print(f"-- {label} --")
                print(format_table(part, shown))
        else:
            print(format_table(rows))
        path = write_results(name, rows, meta=assumptions, out_dir=out_dir)
        print(f"wrote {path}")
    if not args.no_plot:
        png = plot(cached_rows, out_dir / "perf_model.png", acceptance_source)
        if png:
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
