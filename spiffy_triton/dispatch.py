"""Backend dispatch: the one place that picks a Triton kernel or its PyTorch reference.

Every public kernel entry point goes through here. ``backend`` is one of

- ``"auto"``: Triton for CUDA tensors, the PyTorch reference for CPU tensors;
- ``"triton"``: the Triton kernel (on CPU tensors it runs in the Triton interpreter, see
  `spiffy_triton.triton_mode`);
- ``"torch"``: the pure-PyTorch reference.

The environment variable ``SPIFFY_TRITON_BACKEND`` replaces the meaning of ``"auto"`` (an
explicit ``backend="triton"`` or ``"torch"`` argument always wins), so a whole program can be
switched without touching call sites.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping

import torch

from . import triton_mode
from .layout import SegmentLayout
from .types import BACKENDS, Backend, MarginalsOutput

__all__ = ["BACKENDS", "Backend", "resolve_backend"]

BACKEND_ENV = "SPIFFY_TRITON_BACKEND"


def _validate_name(backend: object, source: str) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {backend!r}")
    return backend


def _one_device_type(tensors: Iterable[torch.Tensor] | Mapping[str, torch.Tensor], op: str) -> str:
    """The device type shared by `tensors` (a mapping names them in the error); a ValueError
    naming every device when they differ (also cuda:0 against cuda:1)."""
    named = tensors.items() if isinstance(tensors, Mapping) else enumerate(tensors)
    placed = [(name, t.device) for name, t in named if isinstance(t, torch.Tensor)]
    if len({device for _, device in placed}) > 1:
        where = ", ".join(f"{name} on {device}" for name, device in placed)
        raise ValueError(f"{op}: all tensors must be on one device, got {where}")
    return placed[0][1].type if placed else "cpu"


def resolve_backend(
    backend: Backend, tensors: Iterable[torch.Tensor] | Mapping[str, torch.Tensor], op: str
) -> str:
    """Return ``"triton"`` or ``"torch"`` for one call of `op` on `tensors`."""
    backend = _validate_name(backend, "backend")
    if backend == "auto":
        env = os.environ.get(BACKEND_ENV)
        if env:
            backend = _validate_name(env.strip().lower(), f"environment variable {BACKEND_ENV}")
    device = _one_device_type(tensors, op)
    if backend == "auto":
        return "triton" if device == "cuda" and triton_mode.triton_available() else "torch"
    if backend == "triton":
        triton_mode.check_triton_runs_on(device, op)
    return backend


def _call(backend: str, family: str, name: str, *args, **kwargs):
    """`name` of ``kernels/<family>.py`` (resolved backend ``"triton"``) or of its twin
    ``reference/<family>.py``. Kernel calls hold `triton_mode.kernel_run_lock` (interpreted
    launches from several threads at once corrupt each other); reference calls need none."""
    if backend == "triton":
        impl = getattr(importlib.import_module(f".kernels.{family}", __package__), name)
        with triton_mode.kernel_run_lock():
            return impl(*args, **kwargs)
    impl = getattr(importlib.import_module(f".reference.{family}", __package__), name)
    return impl(*args, **kwargs)


def graph_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: SegmentLayout,
    *,
    scale: float | None = None,
    return_lse: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of `q` over `k, v` under a `SegmentLayout` (see the kernel's docstring)."""
    resolved = resolve_backend(backend, {"q": q, "k": k, "v": v}, "graph_attention")
    return _call(
        resolved,
        "graph_attention",
        "graph_attention",
        q,
        k,
        v,
        layout,
        scale=scale,
        return_lse=return_lse,
    )


def marginals(
    logits: torch.Tensor,
    *,
    top_k: int = 1,
    temperature: float = 0.0,
    seed: int = 0,
    step: int = 0,
    positions: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> MarginalsOutput:
    """Fused per-row token choice, confidence, top-k, lse and entropy over the vocabulary."""
    resolved = resolve_backend(backend, {"logits": logits, "positions": positions}, "marginals")
    return _call(
        resolved,
        "marginals",
        "marginals",
        logits,
        top_k=top_k,
        temperature=temperature,
        seed=seed,
        step=step,
        positions=positions,
    )


def rank_positions(
    confidence: torch.Tensor, eligible: torch.Tensor, *, backend: Backend = "auto"
) -> torch.Tensor:
    """Positions per row by descending confidence (ties: lower position), ineligible last."""
    tensors = {"confidence": confidence, "eligible": eligible}
    resolved = resolve_backend(backend, tensors, "rank_positions")
    return _call(resolved, "marginals", "rank_positions", confidence, eligible)
