"""Measured acceptance (steps per forward) read from the NFE / wall-clock results, and the
modeled time of a whole block."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .hardware import Hardware, ModelShape, StepShape
from .ops import forward_ops, predict


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
