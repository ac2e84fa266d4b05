"""spiffy-triton: Spiffy lossless speculative decoding for diffusion LMs, with Triton kernels.

Public API (DESIGN.md section 7). Names resolve lazily so that ``import spiffy_triton`` stays
cheap and does not import triton until a kernel is used.
"""

from . import triton_mode as _triton_mode

# Must run before anything imports triton (see spiffy_triton/triton_mode.py).
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
