"""Verify cost model: the predicted wall time of a verify forward, by its shape (part of the
cost-aware draft budget, `spiffy_triton.decoding.budget`).

Fewer forward passes only pay when a verify pass with ``D`` drafts costs less than the steps it
saves. On a compute-bound machine (a CPU) each draft row costs about as much as a root row; on a
memory-bound GPU at 8B scale extra rows are nearly free. This module measures that trade-off on
the machine at hand and picks, every Spiffy iteration, the draft set that maximises the expected
number of steps advanced per unit of predicted cost.

Cost. `VerifyCostModel` predicts a verify forward's wall time from its shape
(`verify_shape`: batch rows, query rows per batch row, keys per batch row):

    ms = intercept + per_row * (batch * rows) + per_row_key * (batch * rows * keys)

(weights and MLP scale with the query rows, attention with query rows times keys). It is given by
the user (`VerifyCostModel(...)`, `.from_dict`) or fitted by `probe_verify_cost`: a short warm-up
that times the decoder's own verify forward at a few draft counts and two context lengths (the
minimum of a few repeats per shape, robust to a busy machine), fitted by non-negative least
squares. Fitted models are cached per (model class and config, device, dtype, torch threads,
cache mode, verify mode, host, package version) in memory, and on disk by default, so that
each command-line call does not measure again (`default_cache_dir`): ``SPIFFY_TRITON_COST_CACHE``
if set (a directory, or ``off`` to keep them in memory only), else
``$XDG_CACHE_HOME/spiffy-triton`` (``~/.cache/spiffy-triton``); `cached_cost_model(...,
cache_dir=...)` names a directory, ``cache_dir=False`` keeps memory only. Delete
``verify_cost_models.json`` there to measure again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..types import CACHE_MODES, VERIFY_MODES
from ..verify_inputs import verify_inputs

CACHE_ENV = "SPIFFY_TRITON_COST_CACHE"
CACHE_OFF = ("off", "0", "false", "no", "none")  # values of CACHE_ENV that disable the disk
CACHE_FILE = "verify_cost_models.json"
PROBE_DRAFT_COUNTS = (0, 1, 3, 6)
PROBE_REPEATS = 3


# ----------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class VerifyShape:
    """One verify forward: ``batch`` sequences of ``rows`` query rows over ``keys`` keys."""

    batch: int
    rows: int
    keys: int

    @property
    def query_rows(self) -> int:
        return self.batch * self.rows

    @property
    def row_keys(self) -> int:
        return self.batch * self.rows * self.keys


def verify_shape(
    cache: str | None,
    verify: str,
    prefix_len: int,
    block_len: int,
    total_len: int,
    num_drafts: int,
) -> VerifyShape:
    """Shape of the verify forward of `spiffy_triton.decoding` with `num_drafts` drafts: the
    shape of the one builder's inputs (`spiffy_triton.verify_inputs`), cached per arguments
    (the auto budget asks every iteration).

    ``prefix_len`` = block start ``s``, ``total_len`` = ``T`` (prompt + generation). Without
    cache every row is a query: batch rows hold the full sequence, packed drafts add ``L`` rows
    each. With a dual cache queries are the block and the drafts over ``[prefix, block, suffix,
    drafts]``; with a prefix cache a copy is block + suffix (``T - s`` rows).
    """
    for name, value in (
        ("prefix_len", prefix_len),
        ("block_len", block_len),
        ("total_len", total_len),
        ("num_drafts", num_drafts),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if block_len < 1 or prefix_len + block_len > total_len:
        raise ValueError(
            f"need block_len >= 1 and prefix_len + block_len <= total_len, got prefix_len "
            f"{prefix_len}, block_len {block_len}, total_len {total_len}"
        )
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be 'packed' or 'batch', got {verify!r}")
    if cache is not None and cache not in CACHE_MODES:
        raise ValueError(f"cache must be None, 'prefix' or 'dual', got {cache!r}")
    return _builder_shape(cache, verify, prefix_len, block_len, total_len, num_drafts)


@functools.lru_cache(maxsize=4096)
def _builder_shape(cache, verify, s: int, length: int, t: int, d: int) -> VerifyShape:
    """The shape of what the one builder (`spiffy_triton.verify_inputs`) makes: batch and query
    rows of its ids, keys of its layout. Built on small uninitialised CPU tensors (ids only: a
    few thousand integers); ``meta`` tensors would cost seconds of one-time set-up per
    process (measured: 2.4 s on the first call, then 0.5 ms a call, against 0.1 ms here)."""
    x = torch.empty((1, t), dtype=torch.int64)
    drafts = torch.empty((d, length), dtype=torch.int64)
    inputs = verify_inputs(x, s, s + length, drafts, cache, verify)
    batch, rows = inputs.input_ids.shape
    return VerifyShape(batch, rows, inputs.layout.num_k_rows)


# ------------------------------------------------------------------------------ cost model


@dataclass(frozen=True)
class VerifyCostModel:
    """``ms = intercept_ms + per_row_ms * query_rows + per_row_key_ms * row_keys``.

    ``source`` says where the coefficients come from (``"given"``, ``"probe"``,
    ``"probe+online"``, a file); ``residual_pct`` is the fit's root-mean-square relative error
    on its ``samples`` timings.
    """

    intercept_ms: float
    per_row_ms: float
    per_row_key_ms: float = 0.0
    source: str = "given"
    residual_pct: float | None = None
    samples: int | None = None

    @property
    def standard_error(self) -> float:
        """Relative standard error of a prediction (residual / sqrt(samples)); 0 if unknown."""
        if not self.residual_pct:
            return 0.0
        return self.residual_pct / 100.0 / math.sqrt(max(1, self.samples or 1))

    def __post_init__(self):
        values = (self.intercept_ms, self.per_row_ms, self.per_row_key_ms)
        for name, value in zip(("intercept_ms", "per_row_ms", "per_row_key_ms"), values):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"VerifyCostModel.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"VerifyCostModel.{name} must be finite and >= 0, got {value}")
        if not any(v > 0 for v in values):
            raise ValueError("VerifyCostModel needs at least one positive coefficient")

    def predict_ms(self, shape: VerifyShape) -> float:
        return (
            self.intercept_ms
            + self.per_row_ms * shape.query_rows
            + self.per_row_key_ms * shape.row_keys
        )

    @classmethod
    def fit(
        cls, samples: Sequence[tuple[VerifyShape, float]], *, source: str = "probe"
    ) -> VerifyCostModel:
        """Non-negative least squares on relative error (each sample weighted by 1 / its time,
        so small and large shapes count alike)."""
        if len(samples) < 2:
            raise ValueError(f"fitting a cost model needs at least 2 samples, got {len(samples)}")
        if any(not (ms > 0 and math.isfinite(ms)) for _, ms in samples):
            raise ValueError("cost samples must have positive finite times")
        # Plain Python: the decoder refits online every few forwards, and a few dozen samples
        # of three features are cheaper solved here than through torch's small-op overhead.
        features = [(1.0, float(s.query_rows), float(s.row_keys)) for s, _ in samples]
        times = [float(ms) for _, ms in samples]
        scale = [max(1.0, max(abs(f[j]) for f in features)) for j in range(3)]
        # Relative error: row i of the scaled design is features_i / (scale * time_i), target 1.
        design = [[f[j] / (scale[j] * t) for j in range(3)] for f, t in zip(features, times)]
        active = [0, 1, 2]
        coef = [0.0, 0.0, 0.0]
        # Active set: drop the most negative coefficient (or a dependent feature) and refit
        # until all are >= 0.
        while active:
            solution = _least_squares_ones([[row[j] for j in active] for row in design])
            if solution is None:  # rank-deficient: the last feature depends on the others
                active.pop()
                continue
            solution = [x / scale[j] for x, j in zip(solution, active)]
            if min(solution) >= 0:
                coef = [0.0, 0.0, 0.0]
                for x, j in zip(solution, active):
                    coef[j] = x
                break
            active.pop(solution.index(min(solution)))
        errors = [(sum(c * x for c, x in zip(coef, f)) - t) / t for f, t in zip(features, times)]
        residual = math.sqrt(sum(e * e for e in errors) / len(errors)) * 100.0
        if not any(c > 0 for c in coef):
            raise ValueError("cost samples do not fit a non-negative cost model")
        return cls(float(coef[0]), float(coef[1]), float(coef[2]), source, residual, len(samples))

    def to_dict(self) -> dict:
        return {
            "intercept_ms": self.intercept_ms,
            "per_row_ms": self.per_row_ms,
            "per_row_key_ms": self.per_row_key_ms,
            "source": self.source,
            "residual_pct": self.residual_pct,
            "samples": self.samples,
        }

    @classmethod
    def from_dict(cls, data: dict) -> VerifyCostModel:
        if not isinstance(data, dict) or "intercept_ms" not in data or "per_row_ms" not in data:
            raise ValueError(
                "a cost model dict needs 'intercept_ms' and 'per_row_ms' (and optionally "
                f"'per_row_key_ms'), got {data!r}"
            )
        return cls(
            data["intercept_ms"],
            data["per_row_ms"],
            data.get("per_row_key_ms", 0.0),
            data.get("source", "given"),
            data.get("residual_pct"),
            data.get("samples"),
        )


def _least_squares_ones(design: Sequence[Sequence[float]]) -> list[float] | None:
    """``argmin |A x - 1|`` for the small dense ``A = design`` (normal equations, Gaussian
    elimination with partial pivoting); None when ``A`` is numerically rank-deficient."""
    m = len(design[0])
    normal = [[sum(row[i] * row[k] for row in design) for k in range(m)] for i in range(m)]
    rhs = [sum(row[i] for row in design) for i in range(m)]
    size = max(normal[i][i] for i in range(m))
    for col in range(m):
        pivot = max(range(col, m), key=lambda r: abs(normal[r][col]))
        if abs(normal[pivot][col]) <= 1e-12 * size:
            return None
        normal[col], normal[pivot] = normal[pivot], normal[col]
        rhs[col], rhs[pivot] = rhs[pivot], rhs[col]
        for r in range(col + 1, m):
            factor = normal[r][col] / normal[col][col]
            for k in range(col, m):
                normal[r][k] -= factor * normal[col][k]
            rhs[r] -= factor * rhs[col]
    x = [0.0] * m
    for r in range(m - 1, -1, -1):
        x[r] = (rhs[r] - sum(normal[r][k] * x[k] for k in range(r + 1, m))) / normal[r][r]
    return x


def probe_verify_cost(
    make_verifier: Callable[[], object],
    *,
    mask_id: int,
    device: torch.device | str,
    cache: str | None,
    verify: str,
    block_length: int,
    contexts: Iterable[tuple[int, int]],
    draft_counts: Sequence[int] = PROBE_DRAFT_COUNTS,
    repeats: int = PROBE_REPEATS,
) -> tuple[VerifyCostModel, list[tuple[VerifyShape, float]]]:
    """Time the decoder's verify forward and fit a `VerifyCostModel`.

    ``make_verifier()`` returns the decoder's verifier (``prefill(x, s, e)`` for cached modes,
    ``verifier(x, s, e, drafts [D, L])``); ``contexts`` are ``(block start, total length)``
    pairs. Each shape runs once to warm up, then `repeats` times; its time is the minimum.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not draft_counts or min(draft_counts) < 0:
        raise ValueError(f"draft_counts must be non-empty counts >= 0, got {draft_counts!r}")
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    samples = []
    for start, total in contexts:
        # Token values do not change the cost: the prompt is token 0, the rest masked.
        x = torch.full((1, total), mask_id, dtype=torch.int64, device=device)
        x[0, :start] = 0 if mask_id != 0 else 1
        end = start + block_length
        verifier = make_verifier()
        if cache is not None:
            verifier.prefill(x, start, end)
        for num_drafts in draft_counts:
            drafts = x[0, start:end].repeat(num_drafts, 1)
            verifier(x, start, end, drafts)  # warm-up
            times = []
            for _ in range(repeats):
                sync()
                begin = time.perf_counter()
                verifier(x, start, end, drafts)
                sync()
                times.append((time.perf_counter() - begin) * 1e3)
            shape = verify_shape(cache, verify, start, block_length, total, num_drafts)
            samples.append((shape, min(times)))
    return VerifyCostModel.fit(samples, source="probe"), samples


# --------------------------------------------------------------------------------- caching

_MEMORY_CACHE: dict[str, VerifyCostModel] = {}
_LOCK = threading.Lock()


def _version() -> str:
    from .. import __version__

    return __version__


def cost_model_key(model, cache: str | None, verify: str) -> str:
    """Identity of a cost measurement: model class and config, device, dtype, threads, modes."""
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif config is not None and hasattr(config, "__dict__"):
        config = vars(config)
    config_hash = hashlib.sha256(
        json.dumps(config, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = str(param.device) if param is not None else str(getattr(model, "device", "cpu"))
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        device = f"{device}:{torch.cuda.get_device_name(index)}"
    dtype = str(param.dtype) if param is not None else "unknown"
    return "|".join(
        [
            type(model).__name__,
            config_hash,
            device,
            dtype,
            f"threads={torch.get_num_threads()}",
            f"cache={cache}",
            f"verify={verify}",
            f"host={platform.node()}",
            f"version={_version()}",
        ]
    )


def default_cache_dir() -> Path | None:
    """Where fitted cost models persist by default: ``SPIFFY_TRITON_COST_CACHE`` when set (None
    for ``off``, ``0``, ``false``, ``no``, ``none`` or empty), else
    ``$XDG_CACHE_HOME/spiffy-triton`` or ``~/.cache/spiffy-triton``."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        if value.strip().lower() in CACHE_OFF + ("",):
            return None
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "spiffy-triton"


def _cache_file(cache_dir: str | os.PathLike | bool | None) -> Path | None:
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        directory = default_cache_dir()
    elif isinstance(cache_dir, (str, os.PathLike)):
        directory = Path(cache_dir)
    else:
        raise ValueError(
            f"cache_dir must be a directory path, None (the default cache) or False (memory "
            f"only), got {cache_dir!r}"
        )
    return directory / CACHE_FILE if directory is not None else None


def cached_cost_model(
    key: str,
    build: Callable[[], VerifyCostModel],
    *,
    cache_dir: str | os.PathLike | bool | None = None,
) -> VerifyCostModel:
    """The cost model stored under `key` (memory, then the disk cache: `cache_dir`, or
    `default_cache_dir` when None, none when False), else ``build()`` stored under it. A disk
    cache that cannot be written is left out (a warning), never fatal."""
    path = _cache_file(cache_dir)
    with _LOCK:
        if key in _MEMORY_CACHE:
            return _MEMORY_CACHE[key]
    stored = {}
    if path is not None and path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            stored = {}  # a damaged cache is re-measured, never trusted
        if key in stored:
            try:
                model = VerifyCostModel.from_dict(stored[key])
            except ValueError:
                model = None
            if model is not None:
                with _LOCK:
                    _MEMORY_CACHE[key] = model
                return model
    model = build()
    with _LOCK:
        _MEMORY_CACHE[key] = model
    if path is not None:
        stored[key] = model.to_dict()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(stored, indent=1) + "\n")
            tmp.replace(path)
        except OSError as err:
            warnings.warn(
                f"cannot write the verify cost cache {path}: {err}; set {CACHE_ENV}=off or to "
                "a writable directory",
                stacklevel=2,
            )
    return model


def clear_memory_cache() -> None:
    """Forget every cost model measured in this process (the disk cache is left alone)."""
    with _LOCK:
        _MEMORY_CACHE.clear()
