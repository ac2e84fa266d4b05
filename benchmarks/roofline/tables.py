"""The study's rows (verify steps, marginals, attention) and its plot (MODELED)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .acceptance import block_time_ms
from .hardware import GB, LOGIT_BYTES, TFLOP, Hardware, ModelShape, StepShape
from .ops import attention_cost, forward_ops, group_totals, marginals_bytes, predict


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
    common = dict(
        block=block,
        cached=cached,
        vanilla_steps=vanilla_steps,
        sampling=sampling,
        launch_us=launch_us,
    )
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
                spf = steps_per_forward.get(d, 1.0 if d == 0 else None)
                rows.append(_step_row(model, hw, context, d, spf, base, vanilla_block, **common))
    return rows


def _step_row(
    model: ModelShape,
    hw: Hardware,
    context: int,
    d: int,
    spf: float | None,
    base,
    vanilla_block: float,
    *,
    block: int,
    cached: bool,
    vanilla_steps: int,
    sampling: bool,
    launch_us: float,
) -> dict:
    """One row of the verify-step table: ``d`` drafts at context ``context`` on `hw`
    (`base`: the prediction with no drafts; `spf`: measured steps per forward, if any)."""
    common = dict(
        vanilla_steps=vanilla_steps, cached=cached, launch_us=launch_us, sampling=sampling
    )
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
    kv_cache = model.n_layers * 2 * context * model.kv_width * model.weight_bytes if cached else 0
    logits = step.block_rows * model.vocab * LOGIT_BYTES
    marg = groups["marginals"][0]
    block_ms = None
    if spf is not None:
        block_ms = block_time_ms(
            model, hw, context=context, block=block, drafts=d, steps_per_forward=spf, **common
        )
    return {
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
        "speedup_per_step": (spf * base.t_step_ms / pred.t_step_ms if spf is not None else None),
        "speedup_per_block": (vanilla_block / block_ms if block_ms is not None else None),
        "tokens_per_s": block * 1e3 / block_ms if block_ms is not None else None,
    }


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
