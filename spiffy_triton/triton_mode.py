"""Decide, once per process, whether Triton kernels compile for the GPU or run interpreted.

Triton reads ``TRITON_INTERPRET`` when a ``@triton.jit`` function is *defined*, and its own
library functions (``tl.max``, ``tl.sum``, ...) are defined when ``triton`` is first imported.
So the choice must be made before anything imports triton. ``spiffy_triton`` makes it on
import: if the user has not set ``TRITON_INTERPRET`` and this process has no CUDA device, it
sets ``TRITON_INTERPRET=1`` so that ``backend="triton"`` runs the kernels on CPU tensors in
the interpreter. If triton was imported earlier (by the user), nothing is changed and the
mode triton already has is the mode used; `check_triton_runs_on` says clearly when that
mode cannot run the given tensors.

No project imports: this sits at the bottom of the module map.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading

_ENV = "TRITON_INTERPRET"


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "on", "yes")


def configure() -> None:
    """Switch the interpreter on for CUDA-less processes, if it is still possible."""
    if _ENV in os.environ or "triton" in sys.modules:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ[_ENV] = "1"


def triton_available() -> bool:
    if "triton" in sys.modules:
        return sys.modules["triton"] is not None  # None: imports of triton are blocked
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def triton_library_interpreted() -> bool | None:
    """Whether triton's own `@jit` library (tl.sum, tl.max...) was defined interpreted;
    None while triton is not imported (it will follow the environment variable)."""
    if sys.modules.get("triton.language") is None:
        return None
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.sum, InterpretedFunction)


def interpreter_enabled() -> bool:
    """True when triton kernels defined in this process run in the interpreter."""
    return _truthy(os.environ.get(_ENV)) and triton_library_interpreted() is not False


def check_triton_runs_on(device_type: str, op: str) -> None:
    """Raise a clear error when the Triton kernels of `op` cannot run on `device_type`."""
    if not triton_available():
        raise RuntimeError(
            f"{op}: backend='triton' needs the `triton` package, which is not installed. "
            "Install it (`pip install triton`) or use backend='torch'."
        )
    if device_type == "cuda":
        return
    if device_type == "cpu":
        if interpreter_enabled():
            return
        if _truthy(os.environ.get(_ENV)):
            raise RuntimeError(
                f"{op}: backend='triton' got CPU tensors, but triton was imported before "
                "TRITON_INTERPRET=1 was set, so its library is compiled for the GPU and the "
                "interpreter cannot run the kernels. Set TRITON_INTERPRET=1 in the environment "
                "before Python starts (or before the first import of triton or spiffy_triton), "
                "or use backend='torch'."
            )
        raise RuntimeError(
            f"{op}: backend='triton' got CPU tensors, but Triton kernels in this process are "
            "compiled for the GPU (TRITON_INTERPRET is off). Set TRITON_INTERPRET=1 in the "
            "environment before Python starts (or before importing triton/spiffy_triton) to "
            "run the kernels on CPU in the Triton interpreter, move the tensors to a CUDA "
            "device, or use backend='torch'."
        )
    raise RuntimeError(
        f"{op}: backend='triton' supports CUDA tensors (and CPU tensors under the Triton "
        f"interpreter), got tensors on device type {device_type!r}. Use backend='torch'."
    )


def traceable(kernel):
    """``torch.library.wrap_triton(kernel)``: a launch that ``make_fx`` / ``torch.compile``
    record as one graph node inside a `torch.library.triton_op` (spiffy_triton.ops), and a
    plain launch otherwise (also in the interpreter, where wrap_triton gives the kernel back).
    torch < 2.6 has no wrap_triton: the kernel itself (launches stay eager-only)."""
    try:
        from torch.library import wrap_triton
    except ImportError:
        return kernel
    return wrap_triton(kernel)


_INTERPRETER_LOCK = threading.RLock()


def kernel_run_lock():
    """A lock around one kernel call when the kernels run in the interpreter, else a no-op.

    The interpreter runs a launch's program instances on process-wide state (the patched
    ``tl`` functions, the grid), so launches from two threads at once fail or mix their grids
    (measured: ``x >= grid_dim[0]`` and ``_semantic`` errors with batched `generate`, which
    runs a thread per row). Compiled kernels launch concurrently as usual."""
    return _INTERPRETER_LOCK if interpreter_enabled() else contextlib.nullcontext()
