"""spiffy-triton: Spiffy lossless speculative decoding for diffusion LMs, with Triton kernels.

Public API (docs/DESIGN.md §7). Names resolve lazily so that ``import spiffy_triton`` stays
cheap and does not import triton until a kernel is used.
"""

from pathlib import Path as _Path

from . import _sources
from . import triton_mode as _triton_mode

# spiffy_triton.kernels / .reference from the top-level folders of a checkout (_sources.py).
_sources.install(_Path(__file__).resolve().parent)

# Importing the package sets TRITON_INTERPRET=1 when it is unset and there is no CUDA device,
# so backend="triton" runs on CPU tensors; it must happen before anything imports triton. Why,
# and what is left alone: spiffy_triton/triton_mode.py (the one place), docs/DESIGN.md §4.
_triton_mode.configure()

__version__ = "0.1.0"

_EXPORTS = {
    "SegmentLayout": ".layout",
    "graph_attention": ".dispatch",
    "marginals": ".dispatch",
    "rank_positions": ".dispatch",
    "MarginalsOutput": ".types",
    "DraftGraph": ".graph",
    "calibrate": ".calibration",
    "load_model": ".models",
    "generate": ".decoding",
    "GenerateOutput": ".decoding",
    "AutoDraftBudget": ".decoding.budget",
    "VerifyCostModel": ".decoding.cost_model",
    "graph_attention_op": ".ops",
    "marginals_op": ".ops",
    "register_hf_attention": ".models.hf_adapter",
    "SpiffyStepper": ".decoding.steps",
    "generate_batch": ".decoding.batch",
    "BatchGenerateOutput": ".decoding.batch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'spiffy_triton' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
