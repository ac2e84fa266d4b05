"""Cost-aware draft budget: how many drafts one verify forward should carry (``max_drafts="auto"``).

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
cache mode, verify mode) in memory, and on disk under ``~/.cache/spiffy_triton`` when asked
(`cached_cost_model(..., cache_dir=...)`, or ``SPIFFY_TRITON_COST_CACHE=<dir>``).

Benefit. `AcceptanceEstimator` estimates, per filled draft, the probability that the walk passes
through it, as a chain of conditional rates (node given its parent; see the class). A node's
prior rate is the share of calibration steps whose true path went through it (calibration
counts, `calibration_prior`), or, without counts, the default graphs' prior
(`spiffy_triton.graph.prior_step_probability`) summed over the node's orders of unmasking. The
run's own outcomes update it (Beta posterior), and the current marginals enter through bands:
the rate is learned separately per band of the probability of the tokens the node adds under
``P_last`` (`CONFIDENCE_BANDS`), each band shrunk towards the node's overall rate.

Selection (`select_drafts`). The walk reaches a draft only through its ancestors, so drafts
are taken greedily by estimate, a node becoming eligible once one of its direct parents (largest
filled strict subsets) is taken or when it has none; the expected advance of the first ``k``
is ``1 + sum of their estimates``. The chosen ``k`` maximises ``advance(k) / cost(k)`` over
``k = 0 .. len(candidates)``; ``k = 0`` (a plain step: one root forward, one step) is always a
candidate, so in expectation auto is never worse than vanilla decoding. The decision is
conservative: each estimate enters about one posterior standard deviation low
(``AcceptanceEstimator.spread``), and drafts are taken only when they beat the plain step by
more than the cost fit's relative standard error (`VerifyCostModel.standard_error`).

Host time. An iteration costs its forward (the cost model), plus, with drafts, the filling and
selecting (timed as they run, `AutoDraftBudget.host_ms`), plus host time per step advanced
(marginals, rule, layout, bookkeeping: vanilla pays it per step too), measured from every
iteration's wall time (`AutoDraftBudget.end_iteration`). The estimates get a slow correction:
the decayed ratio of the extra steps iterations with drafts made over what the estimates
expected (`DecayedRatio`), which catches estimates off for the rule at hand.

Online refit. A probe of a few shapes on a noisy machine is off by 10-20%; a measured cost
model is refitted every ``REFIT_EVERY`` verify forwards on the run's own last
``ONLINE_WINDOW`` forwards (`AutoDraftBudget.record_forward`, fed by the decoder), anchored by
the probe's predictions.

Back-off. Filling and scoring cost host time even when no draft is chosen. Before filling, the
budget asks whether any draft set could beat a plain step with every node at the best rate
learned for it (`AutoDraftBudget.drafts_may_pay`); if not, the step is a plain vanilla step,
except one in ``EXPLORE_EVERY`` (filling is how the rates are learned). After a second empty
selection in a row it also skips the next 1, then 2, 4, ... (at most ``MAX_BACKOFF``)
iterations' filling (`AutoDraftBudget.wants_drafts`). A selection with drafts resets the
back-off.

Memory. ``max_drafts="auto"`` uses one budget per model and decoding setting for the process
(`shared_budget`): rates, host times and the refitted cost model carry over between calls.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import json
import math
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .drafting import probability_filler
from .graph import DraftGraph, prior_step_probability

CACHE_ENV = "SPIFFY_TRITON_COST_CACHE"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "spiffy_triton"
CACHE_FILE = "verify_cost_models.json"
PROBE_DRAFT_COUNTS = (0, 1, 3, 6)
PROBE_REPEATS = 3
DEFAULT_PRIOR_STRENGTH = 4.0  # pseudo-observations behind an acceptance prior
MAX_BACKOFF = 8  # most plain steps in a row after choosing no drafts
EXPLORE_EVERY = 2 * MAX_BACKOFF + 1  # fill one in this many steps at which drafts cannot pay
ONLINE_WINDOW = 48  # the run's most recent verify forwards an online refit uses
REFIT_EVERY = 16  # forwards between online refits
# Band edges of a node's added-token probability under P_last: rates are learned per band.
CONFIDENCE_BANDS = (0.5, 0.8, 0.95)
# Realized-over-predicted ratios (`DecayedRatio`): decay per observation, prior observations.
RATIO_DECAY = 0.97
RATIO_PRIOR_WEIGHT = 8.0
HOST_EWMA = 0.2  # weight of the newest sample in the host-time running means


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
    """Shape of the verify forward of `spiffy_triton.decode` with `num_drafts` drafts.

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
    if verify not in ("packed", "batch"):
        raise ValueError(f"verify must be 'packed' or 'batch', got {verify!r}")
    t, s, length, d = total_len, prefix_len, block_len, num_drafts
    packed = verify == "packed"
    if cache is None:
        if packed:
            return VerifyShape(1, t + d * length, t + d * length)
        return VerifyShape(1 + d, t, t)
    if cache == "dual":
        if packed:
            return VerifyShape(1, (1 + d) * length, t + d * length)
        return VerifyShape(1 + d, length, t)
    if cache == "prefix":
        real = t - s
        if packed:
            return VerifyShape(1, (1 + d) * real, s + (1 + d) * real)
        return VerifyShape(1 + d, real, t)
    raise ValueError(f"cache must be None, 'prefix' or 'dual', got {cache!r}")


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
        ]
    )


def _cache_file(cache_dir: str | os.PathLike | None) -> Path | None:
    directory = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV)
    return Path(directory) / CACHE_FILE if directory else None


def cached_cost_model(
    key: str,
    build: Callable[[], VerifyCostModel],
    *,
    cache_dir: str | os.PathLike | None = None,
) -> VerifyCostModel:
    """The cost model stored under `key` (memory, then disk when a cache directory is given or
    ``SPIFFY_TRITON_COST_CACHE`` is set), else ``build()`` stored under it."""
    with _LOCK:
        if key in _MEMORY_CACHE:
            return _MEMORY_CACHE[key]
    path = _cache_file(cache_dir)
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
        path.parent.mkdir(parents=True, exist_ok=True)
        stored[key] = model.to_dict()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored, indent=1) + "\n")
        tmp.replace(path)
    return model


def clear_cost_cache() -> None:
    """Forget every cost model measured in this process and every shared auto budget
    (`shared_budget`); the disk cache is left alone."""
    with _LOCK:
        _MEMORY_CACHE.clear()
        _SHARED_BUDGETS.clear()


# Per model (weakly held: a freed model takes its budgets along), per decoding setting.
_SHARED_BUDGETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def shared_budget(model, setting: Hashable) -> AutoDraftBudget:
    """The process's `AutoDraftBudget` for `model` under `setting` (what ``max_drafts="auto"``
    uses; the decoder's setting is the cost key, the graph, the block length and the rule less
    its seed). Acceptance rates and realized costs are properties of the model, the rule and
    the machine, not of one call: a short call (a threshold rule decodes 64 tokens in about 20
    forwards) would otherwise spend most of itself relearning them. Only which drafts get
    verified depends on this history, never the tokens. Pass your own `AutoDraftBudget` to keep
    a run apart (e.g. one per thread); `clear_cost_cache` forgets them all."""
    with _LOCK:
        per_model = _SHARED_BUDGETS.setdefault(model, {})
        budget = per_model.get(setting)
        if budget is None:
            budget = per_model[setting] = AutoDraftBudget()
        return budget


# ------------------------------------------------------------------------------ acceptance


def confidence_band(probability: float) -> int:
    """Index of `probability`'s band in `CONFIDENCE_BANDS` (0: below the first edge)."""
    return sum(probability >= edge for edge in CONFIDENCE_BANDS)


def prior_path_probability(formula: Sequence[tuple[int, int]]) -> float:
    """Probability, under the default graphs' prior, that one-token-per-step decoding passes
    through `formula`'s state: the sum over every order of unmasking its pairs."""
    pairs = tuple(formula)
    reach: dict[frozenset, float] = {frozenset(): 1.0}
    # Subsets by increasing size; each is reached from the subsets one pair smaller.
    for size in range(1, len(pairs) + 1):
        for subset in _subsets(pairs, size):
            total = 0.0
            for pair in subset:
                parent = subset - {pair}
                total += reach[parent] * prior_step_probability(parent, pair)
            reach[subset] = total
    return reach[frozenset(pairs)]


def _subsets(pairs: tuple, size: int) -> list[frozenset]:
    return [frozenset(c) for c in itertools.combinations(pairs, size)]


def calibration_prior(path: str | os.PathLike) -> list[float]:
    """Per node of a calibrated graph file (`spiffy_triton.calibrate.save_graph` with traces):
    the share of ranked calibration steps whose true path went through the node."""
    data = json.loads(Path(path).read_text())
    counts = data.get("counts") if isinstance(data, dict) else None
    info = data.get("calibration", {}) if isinstance(data, dict) else {}
    steps = info.get("ranked_steps") or info.get("trace_steps")
    if not isinstance(counts, list) or not steps:
        raise ValueError(
            f"{path}: not a calibrated graph with counts (save it with "
            "spiffy_triton.calibrate.save_graph(graph, path, traces))"
        )
    return [min(1.0, c / steps) for c in counts]


class AcceptanceEstimator:
    """Per filled draft of one graph: the probability that decoding passes through its state;
    see the module docstring. `prior` gives each node's prior on-path rate (default: the
    graph prior).

    The estimate chains conditional rates, as the walk does: a node is reached through one of
    its parents, so ``estimate(q) = estimate(best direct parent of q) * cond(q)`` (``cond`` alone
    for a node without filled parents: its parent is the root), where ``cond(q)`` is the rate at
    which the true path, having reached a direct parent of ``q`` (largest filled strict subset),
    stepped onto ``q`` next. Every filled candidate, verified or not, is an observation of
    ``cond`` after each forward: the decoder knows the true states it walked to ``X_1 .. X_m``
    (``X_0`` = root); if some ``X_i``, ``i < m``, is one of the candidate's direct parents, the
    candidate is a hit if ``X_{i+1} = q``, unknown if ``X_{i+1}`` lies strictly inside ``q``,
    a miss otherwise; if the walk never stepped on from a parent, it says nothing about ``q``.
    Conditioning on the parent keeps deep nodes' rates free of the bias of walks that stop
    early (a walk that stops before a deep node's parent neither hits nor misses it).

    The current marginals enter by band: each observation is also counted in the band
    (`CONFIDENCE_BANDS`) of the ``P_last`` probability of the tokens the node adds to its
    parent, and the estimate is the band's rate with the node's overall rate as its prior
    (``prior_strength`` pseudo-observations).
    """

    def __init__(
        self,
        graph: DraftGraph,
        prior: Sequence[float] | None = None,
        *,
        prior_strength: float = DEFAULT_PRIOR_STRENGTH,
    ):
        if prior is None:
            prior = [prior_path_probability(f) for f in graph.nodes]
        prior = list(prior)
        if len(prior) != len(graph):
            raise ValueError(f"prior has {len(prior)} rates, the graph has {len(graph)} nodes")
        if any(not (0.0 <= p <= 1.0) for p in prior):
            raise ValueError(f"prior rates must be in [0, 1], got {prior}")
        if not (prior_strength > 0 and math.isfinite(prior_strength)):
            raise ValueError(f"prior_strength must be > 0, got {prior_strength!r}")
        self.graph = graph
        self.prior = prior
        self.prior_strength = float(prior_strength)
        # Conditional prior: the node's rate over its most likely immediate parent's.
        self.cond_prior = []
        for node in range(len(graph)):
            parents = [prior[p] for p in graph.immediate_parents(node)]
            base = max(parents) if parents else 1.0
            self.cond_prior.append(min(1.0, prior[node] / base) if base > 0 else 0.0)
        self.observed = [0] * len(graph)
        self.hits = [0] * len(graph)
        # The same counts split by how likely the node's added tokens were (`CONFIDENCE_BANDS`).
        self.band_observed = [[0] * (len(CONFIDENCE_BANDS) + 1) for _ in graph.nodes]
        self.band_hits = [[0] * (len(CONFIDENCE_BANDS) + 1) for _ in graph.nodes]
        # Of the last `estimates` call, per node: the probability of the tokens it adds to its
        # parent, and the states (pair sets) of its direct parents (the root: empty set).
        self._step_joint: dict[int, float] = {}
        self._stages: dict[int, list[frozenset]] = {}
        self.spread: list[float] = []  # of the last `estimates` call

    def cond_rate(self, node: int) -> float:
        """Posterior mean of the node's conditional rate."""
        alpha = self.cond_prior[node] * self.prior_strength + self.hits[node]
        return alpha / (self.prior_strength + self.observed[node])

    def band_rate(self, node: int, band: int) -> float:
        """The node's conditional rate within `band`, its overall rate as the band's prior."""
        return (self.band_hits[node][band] + self.prior_strength * self.cond_rate(node)) / (
            self.band_observed[node][band] + self.prior_strength
        )

    def upper_bounds(self) -> list[float]:
        """Per node, an on-path probability no fill can beat by much: the chain of its best
        band's conditional rates (before filling, when the bands are not known yet)."""
        order, direct_parents = graph_structure(self.graph, frozenset(range(len(self.graph))))
        bound = [0.0] * len(self.graph)
        for node in order:
            best = max(self.band_rate(node, b) for b in range(len(CONFIDENCE_BANDS) + 1))
            parents = direct_parents[node]
            bound[node] = best * (max(bound[p] for p in parents) if parents else 1.0)
        return bound

    def estimates(self, candidates: Sequence) -> list[float]:
        """On-path probability of each filled candidate (``.node``, ``.probs``) now: chained
        conditional rates, each the node's rate in the band of the probability of the tokens
        it adds to its parent (shrunk towards its overall rate). ``self.spread`` then holds
        each estimate's posterior standard deviation (of its own band rate, times its base)."""
        index = {c.node: i for i, c in enumerate(candidates)}
        order, direct_parents = graph_structure(self.graph, frozenset(index))
        joints = [math.prod(c.probs) for c in candidates]
        out = [0.0] * len(candidates)
        self.spread = [0.0] * len(candidates)
        self._step_joint = {}
        self._stages = {}
        for node in order:  # parents before children
            i = index[node]
            c = candidates[i]
            direct = direct_parents[node]
            base, parent_joint = 1.0, 1.0
            if direct:
                best = max(direct, key=lambda p: (out[index[p]], -p))
                base = out[index[best]]
                parent_joint = joints[index[best]]
            step_joint = joints[i] / parent_joint if parent_joint > 0 else 0.0
            self._step_joint[c.node] = step_joint
            self._stages[c.node] = [
                frozenset(zip(candidates[index[p]].positions, candidates[index[p]].tokens))
                for p in direct
            ] or [frozenset()]
            band = confidence_band(step_joint)
            rate = self.band_rate(c.node, band)
            out[i] = base * rate
            # the posterior's spread of the band rate, carried through the chain's base
            seen = self.band_observed[c.node][band] + self.prior_strength + 1.0
            self.spread[i] = base * math.sqrt(rate * (1.0 - rate) / seen)
        return out

    def observe(
        self, candidates: Iterable, path: Sequence[frozenset], *, complete: bool = False
    ) -> None:
        """Record one forward. `path`: the true states it walked to, each as the set of
        ``(block offset, token)`` pairs decoded since the root; `complete`: the last one is
        the full block (nothing lies beyond it)."""
        states = [frozenset(), *path]
        for candidate in candidates:
            stages = self._stages.get(candidate.node)
            if stages is None:
                continue
            pairs = frozenset(zip(candidate.positions, candidate.tokens))
            stepped = [i for i in range(len(states) - 1) if states[i] in stages]
            if not stepped:
                continue  # the walk never stepped on from one of its parents
            after = states[stepped[-1] + 1]
            if after == pairs:
                hit = True
            elif after < pairs and not complete:
                continue  # an intermediate state: whether the path reaches it is unknown
            else:
                hit = False
            node = candidate.node
            self.observed[node] += 1
            self.hits[node] += hit
            step_joint = self._step_joint.get(node)
            if step_joint is None:
                step_joint = math.prod(candidate.probs)
            band = confidence_band(step_joint)
            self.band_observed[node][band] += 1
            self.band_hits[node][band] += hit


# ------------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Selection:
    chosen: tuple  # the candidates to verify, in node order
    expected_advance: float  # expected steps this forward advances
    predicted_ms: float  # predicted verify time
    considered: int  # filled candidates it chose from


def select_drafts(
    graph: DraftGraph,
    candidates: Sequence,
    estimates: Sequence[float],
    cost_ms: Callable[[int], float],
    *,
    max_drafts: int | None = None,
    min_gain: float = 0.0,
    per_step_ms: float = 0.0,
) -> Selection:
    """The candidates maximising expected steps advanced / predicted cost (module docstring).

    `estimates[i]` is candidate ``i``'s walk-through probability, `cost_ms(k)` the predicted
    time of a verify iteration with ``k`` drafts; `per_step_ms` the host time every step
    advanced costs besides (so ``k`` drafts cost ``cost_ms(k) + advance * per_step_ms``);
    `max_drafts` caps ``k``. Drafts are taken only if their advance per cost beats the plain
    step's by the relative margin `min_gain`.
    """
    if not (min_gain >= 0 and math.isfinite(min_gain)):
        raise ValueError(f"min_gain must be a finite number >= 0, got {min_gain!r}")
    if len(estimates) != len(candidates):
        raise ValueError(f"{len(estimates)} estimates for {len(candidates)} candidates")
    by_node = {c.node: i for i, c in enumerate(candidates)}
    if len(by_node) != len(candidates):
        raise ValueError("two candidates for the same graph node")
    present = set(by_node)
    _, direct_parents = graph_structure(graph, frozenset(present))
    parents = {n: set(direct_parents[n]) for n in present}
    limit = len(candidates) if max_drafts is None else min(max_drafts, len(candidates))
    order: list[int] = []
    taken: set[int] = set()
    while len(order) < limit:
        eligible = [n for n in present - taken if not parents[n] or parents[n] & taken]
        if not eligible:
            break
        # Highest estimate first; ties: fewer pairs, then node order.
        pick = min(eligible, key=lambda n: (-estimates[by_node[n]], len(graph.nodes[n]), n))
        taken.add(pick)
        order.append(pick)
    if not (per_step_ms >= 0 and math.isfinite(per_step_ms)):
        raise ValueError(f"per_step_ms must be a finite number >= 0, got {per_step_ms!r}")
    plain_cost = _positive(cost_ms(0), 0) + per_step_ms
    best_k, best_ratio = 0, (1.0 + min_gain) / plain_cost
    best_cost, advance, best_advance = plain_cost, 1.0, 1.0
    for k, node in enumerate(order, start=1):
        advance += estimates[by_node[node]]
        cost = _positive(cost_ms(k), k) + advance * per_step_ms
        # a tie goes to more drafts: a draft that costs nothing is worth verifying
        if advance / cost >= best_ratio * (1 - 1e-12):
            best_k, best_ratio, best_cost, best_advance = k, advance / cost, cost, advance
    chosen = tuple(candidates[by_node[n]] for n in sorted(order[:best_k]))
    return Selection(chosen, best_advance, best_cost, len(candidates))


@functools.lru_cache(maxsize=512)
def graph_structure(
    graph: DraftGraph, present: frozenset[int]
) -> tuple[tuple[int, ...], dict[int, tuple[int, ...]]]:
    """The `present` nodes of `graph` by increasing size (parents first), and per node its
    direct parents among them: present strict subsets inside no other present strict subset.
    Cached: a decode run asks for the same few sets every iteration."""
    pairs = {n: frozenset(graph.nodes[n]) for n in present}
    direct = {}
    for node in present:
        inside = [p for p in graph.parents(node) if p in present]
        direct[node] = tuple(
            p for p in inside if not any(pairs[p] < pairs[o] for o in inside if o != p)
        )
    order = tuple(sorted(present, key=lambda n: (len(pairs[n]), n)))
    return order, direct


def _positive(cost: float, k: int) -> float:
    if not (cost > 0 and math.isfinite(cost)):
        raise ValueError(f"predicted cost of {k} drafts must be positive and finite, got {cost}")
    return cost


# ------------------------------------------------------------------------------ the budget


class DecayedRatio:
    """``sum(realized) / sum(predicted)`` over observations decayed by `decay` each, with a
    prior of `prior_weight` observations at ratio 1 (scaled by the first prediction), so a few
    outliers cannot swing it. 1.0 before any observation."""

    def __init__(self, decay: float = RATIO_DECAY, prior_weight: float = RATIO_PRIOR_WEIGHT):
        if not (0 < decay <= 1) or not (prior_weight > 0 and math.isfinite(prior_weight)):
            raise ValueError(
                f"need 0 < decay <= 1 and prior_weight > 0, got {decay}, {prior_weight}"
            )
        self.decay = decay
        self.prior_weight = prior_weight
        self.realized = self.predicted = 0.0
        self.count = 0

    def add(self, realized: float, predicted: float) -> None:
        if not (math.isfinite(realized) and predicted > 0 and math.isfinite(predicted)):
            return
        if self.count == 0:
            self.realized = self.predicted = self.prior_weight * predicted
        self.realized = self.decay * self.realized + max(0.0, realized)
        self.predicted = self.decay * self.predicted + predicted
        self.count += 1

    @property
    def ratio(self) -> float:
        return self.realized / self.predicted if self.predicted > 0 else 1.0


def _lower(estimate: float, spread: float) -> float:
    """``estimate**2 / (estimate + spread)``: about ``estimate - spread`` for a small spread,
    positive for a positive estimate, never above it."""
    return estimate * estimate / (estimate + spread) if estimate > 0 else 0.0


class AutoDraftBudget:
    """``max_drafts="auto"``: per iteration, the draft set with the most expected steps per
    predicted millisecond (module docstring). Pass an instance as `generate(max_drafts=...)`
    to give the cost model or the acceptance prior, to cap the drafts, or to keep a run apart;
    ``"auto"`` uses the process's budget for the model and setting (`shared_budget`).

    Args:
        cost_model: a `VerifyCostModel` (or its dict); None measures one (`probe_verify_cost`,
            cached per model, device, dtype and mode).
        prior: per graph node prior walk-through rate (`calibration_prior`); None uses the
            graph prior.
        max_drafts: most drafts per forward (None: the graph's filled nodes).
        cache_dir: where fitted cost models persist (None: ``SPIFFY_TRITON_COST_CACHE`` or
            memory only).
        adapt: refit the cost model on the run's own verify forwards (`record_forward`);
            None: only when it was measured (a given `cost_model` is kept as given).
    """

    def __init__(
        self,
        cost_model: VerifyCostModel | dict | None = None,
        *,
        prior: Sequence[float] | None = None,
        prior_strength: float = DEFAULT_PRIOR_STRENGTH,
        max_drafts: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        adapt: bool | None = None,
    ):
        if isinstance(cost_model, dict):
            cost_model = VerifyCostModel.from_dict(cost_model)
        if cost_model is not None and not isinstance(cost_model, VerifyCostModel):
            raise ValueError(
                f"cost_model must be a VerifyCostModel, a dict or None, got {type(cost_model)}"
            )
        if max_drafts is not None and (
            isinstance(max_drafts, bool) or not isinstance(max_drafts, int) or max_drafts < 0
        ):
            raise ValueError(f"max_drafts must be an int >= 0 or None, got {max_drafts!r}")
        self.cost_model = cost_model
        self.prior = None if prior is None else list(prior)
        self.prior_strength = prior_strength
        self.max_drafts = max_drafts
        self.cache_dir = cache_dir
        self.estimator: AcceptanceEstimator | None = None
        self.chosen_counts: Counter = Counter()  # drafts verified per forward -> forwards
        self.expected_advance = 0.0
        self._pending = None  # (root, mask id, filled candidates) of the last selection
        self._backoff = 0  # plain steps after the last empty selection
        self._empty_run = 0  # empty selections in a row
        self._skip = 0  # plain steps still to take
        self.skipped = 0  # forwards taken as plain steps without filling
        self.host_ms: float | None = None  # running mean of filling + selecting time
        self.adapt = cost_model is None if adapt is None else bool(adapt)
        self._anchor: list[tuple[VerifyShape, float]] = []  # the measured model's predictions
        self._online: collections.deque = collections.deque(maxlen=ONLINE_WINDOW)
        self._since_fit = 0
        # Extra steps iterations with drafts made over what the estimates expected, decayed.
        self.realized_advance = DecayedRatio()
        self.host_step_ms: float | None = None  # running mean of host time per step advanced
        self._expected_extra: float | None = None  # this iteration's, if it filled (raw)
        self._forward: tuple[int, float] | None = None  # this iteration's (drafts, forward ms)
        self._fill_ms = 0.0  # host time of the last fill and selection
        self._shape_of: Callable[[int], VerifyShape] | None = None  # the last fill's shapes
        self._hopeless = 0  # steps at which no draft set could pay
        self._may_pay: bool | None = None  # `drafts_may_pay`, until the next fill or refit

    def bind(
        self,
        graph: DraftGraph,
        measure: Callable[[], VerifyCostModel],
        key: str,
        anchor_shapes: Sequence[VerifyShape] = (),
    ) -> None:
        """Prepare for a decode run with `graph`: the estimator (kept across runs of the same
        graph) and the cost model (given, cached under `key`, or ``measure()``d). With `adapt`,
        the cost model's predictions at `anchor_shapes` anchor its online refits. What it has
        learned (rates, realized ratios, the refitted cost model) carries over; the per-run
        counters of `summary` and the back-off start afresh."""
        self.chosen_counts = Counter()
        self.expected_advance = 0.0
        self.skipped = 0
        self._skip = self._backoff = self._empty_run = 0
        self._pending = self._expected_extra = self._forward = self._may_pay = None
        # The realized ratio starts afresh each run, at 1: it only moves while drafts are
        # verified, so one carried over from a run that stopped drafting would never recover.
        self.realized_advance = DecayedRatio()
        if self.estimator is None or self.estimator.graph != graph:
            self.estimator = AcceptanceEstimator(
                graph, self.prior, prior_strength=self.prior_strength
            )
        if self.cost_model is None:
            self.cost_model = cached_cost_model(key, measure, cache_dir=self.cache_dir)
        if self.adapt and not self._anchor:
            self._anchor = [(s, self.cost_model.predict_ms(s)) for s in anchor_shapes]

    def record_forward(self, shape: VerifyShape, ms: float, drafts: int = 0) -> None:
        """One verify forward of the run, with `drafts` drafts, took `ms`. With `adapt`, every
        ``REFIT_EVERY`` of them the cost model is refitted on the last ``ONLINE_WINDOW`` and the
        anchors: a probe of a few shapes on a noisy machine can be off by 10-20%, the run's own
        forwards keep measuring the shapes the decisions are about."""
        self._forward = (drafts, ms)
        if not self.adapt or not (ms > 0 and math.isfinite(ms)):
            return
        self._online.append((shape, ms))
        self._since_fit += 1
        if self._since_fit < REFIT_EVERY:
            return
        self._since_fit = 0
        samples = self._anchor + list(self._online)
        if len({s.query_rows for s, _ in samples}) < 2:
            return  # one shape cannot separate intercept from slope
        source = self.cost_model.source.split("+")[0] + "+online"
        self.cost_model = VerifyCostModel.fit(samples, source=source)
        self._may_pay = None

    def select(
        self, graph: DraftGraph, candidates: Sequence, shape_of: Callable[[int], VerifyShape]
    ) -> Selection:
        """The drafts to verify among filled `candidates`; ``shape_of(k)`` is the verify shape
        with ``k`` drafts."""
        if self.estimator is None or self.cost_model is None:
            raise RuntimeError("AutoDraftBudget.bind must be called before select")
        # What the run has realized so far corrects the estimates (`end_iteration`).
        advance_bias = self.realized_advance.ratio
        raw = self.estimator.estimates(candidates)
        # Decide on a lower bound, about one posterior standard deviation below the estimate
        # (``e * e / (e + sd)``: positive, so a free draft is still worth verifying): a rate
        # learned from a few walks can be far off, and a draft that does not pay costs more
        # than a skipped one loses.
        estimates = [
            _lower(min(1.0, advance_bias * e), sd) for e, sd in zip(raw, self.estimator.spread)
        ]
        selection = select_drafts(
            graph,
            candidates,
            estimates,
            self._iteration_cost(shape_of),
            per_step_ms=self.host_step_ms or 0.0,
            max_drafts=self.max_drafts,
            # a gain within the cost model's standard error is no gain
            min_gain=self.cost_model.standard_error,
        )
        self.chosen_counts[len(selection.chosen)] += 1
        self.expected_advance += selection.expected_advance
        # the realized ratio compares with the estimator's own expectation, not the corrected
        chosen = {c.node for c in selection.chosen}
        self._expected_extra = sum(e for c, e in zip(candidates, raw) if c.node in chosen)
        if selection.chosen:
            self._empty_run = self._backoff = 0
        else:
            # One empty selection is often a hard spot in a block where drafts pay; a run of
            # them says they do not: 0, 1, 2, 4, ... plain steps.
            self._empty_run += 1
            if self._empty_run > 1:
                self._backoff = min(MAX_BACKOFF, max(1, 2 * self._backoff))
        self._skip = self._backoff
        return selection

    def _iteration_cost(self, shape_of: Callable[[int], VerifyShape]) -> Callable[[int], float]:
        """Predicted ms of an iteration with ``k`` drafts, less the per-step host time: the
        forward, and for ``k >= 1`` the filling and selecting (measured, `host_ms`)."""
        fill_ms = self.host_ms or 0.0
        return lambda k: self.cost_model.predict_ms(shape_of(k)) + (fill_ms if k else 0.0)

    def end_iteration(self, advanced: int, ms: float) -> None:
        """The iteration (filling, forward, walk) whose forward `record_forward` timed advanced
        `advanced` steps in `ms`. Its host time (all but the forward and the filling) per step
        is the per-step cost `select` charges (marginals, rule, layout, bookkeeping: vanilla
        pays it too, per step), and an iteration with drafts compares the steps it made with
        what the estimates expected (`realized_advance`: a slow correction for estimates off
        for this rule)."""
        forward, expected = self._forward, self._expected_extra
        self._forward = self._expected_extra = None
        if forward is None or advanced < 1 or not (ms > 0 and math.isfinite(ms)):
            return
        drafts, model_ms = forward
        host = max(0.0, ms - model_ms - (self._fill_ms if expected is not None else 0.0))
        per_step = host / advanced
        if self.host_step_ms is None:
            self.host_step_ms = per_step
        else:
            self.host_step_ms += HOST_EWMA * (per_step - self.host_step_ms)
        if drafts and expected:
            self.realized_advance.add(advanced - 1.0, expected)

    def wants_drafts(self) -> bool:
        """Whether the next forward should be filled and selected (the decoder then computes
        ``P_last``); False during a back-off (module docstring), which it counts down, and
        when no draft set could pay even at the best rates learned so far (`drafts_may_pay`),
        except every ``EXPLORE_EVERY``-th such step: filling is how the rates are learned."""
        if self._skip > 0:
            self._skip -= 1
            self.skipped += 1
            return False
        if self._may_pay is None:  # decided again after each fill and refit
            self._may_pay = self.drafts_may_pay()
        if not self._may_pay:
            self._hopeless += 1
            if self._hopeless % EXPLORE_EVERY:
                self.skipped += 1
                return False
        return True

    def drafts_may_pay(self) -> bool:
        """Whether some set of drafts could beat a plain step with every node at its upper
        bound (`AcceptanceEstimator.upper_bounds`) and the last fill's shapes: a test before
        filling, so that where drafts cannot pay auto costs nothing over vanilla."""
        if self._shape_of is None or self.estimator is None or self.cost_model is None:
            return True
        bounds = sorted(self.estimator.upper_bounds(), reverse=True)
        advance_bias = self.realized_advance.ratio
        limit = len(bounds) if self.max_drafts is None else min(self.max_drafts, len(bounds))
        cost = self._iteration_cost(self._shape_of)
        step_ms = self.host_step_ms or 0.0
        best = (1.0 + self.cost_model.standard_error) / (cost(0) + step_ms)
        advance = 1.0
        for k in range(1, limit + 1):
            advance += min(1.0, advance_bias * bounds[k - 1])
            if advance / (cost(k) + advance * step_ms) > best:
                return True
        return False

    def filler(self, inner, shape_of: Callable[[int], VerifyShape], *, backend: str = "auto"):
        """A `spiffy_triton.drafting.Filler` that fills every node with `inner` (default: the
        plain probability filler), drops repeated states, and keeps this iteration's
        `select`ion; `observe` then records how the walk went."""

        self._shape_of = shape_of

        def fill(graph, root_state, p_last, mask_id):
            begin = time.perf_counter()
            self._may_pay = None
            if inner is None:
                filled = probability_filler(graph, root_state, p_last, mask_id, backend=backend)
            else:
                filled = inner(graph, root_state, p_last, mask_id)
            unique = {}
            for c in filled:
                unique.setdefault(tuple(zip(c.positions, c.tokens)), c)
            candidates = list(unique.values())
            selection = self.select(graph, candidates, shape_of)
            self._pending = (root_state.tolist(), mask_id, candidates)
            elapsed = (time.perf_counter() - begin) * 1e3
            self._fill_ms = elapsed
            if self.host_ms is None:
                self.host_ms = elapsed
            else:
                self.host_ms += HOST_EWMA * (elapsed - self.host_ms)
            return list(selection.chosen)

        return fill

    def observe(self, path: Sequence[Sequence[int]]) -> None:
        """Record how the last selection's forward went: `path` holds the block states the walk
        made, in order (token ids, the mask id where masked). Nothing is recorded when the
        forward carried no selection (a block's prefill)."""
        if self._pending is None:
            return
        root, mask_id, candidates = self._pending
        self._pending = None
        sets = [
            frozenset((p, t) for p, (r, t) in enumerate(zip(root, state)) if r != t)
            for state in path
        ]
        complete = bool(path) and mask_id not in path[-1]
        self.estimator.observe(candidates, sets, complete=complete)

    def summary(self) -> dict:
        """Selections made (drafts chosen -> count), plain steps taken in back-off, and the
        mean drafts and expected advance over both."""
        forwards = sum(self.chosen_counts.values()) + self.skipped
        drafts = sum(k * v for k, v in self.chosen_counts.items())
        advance = self.expected_advance + self.skipped
        return {
            "cost_model": None if self.cost_model is None else self.cost_model.to_dict(),
            "realized_over_expected_extra_steps": self.realized_advance.ratio,
            "host_ms_per_step": self.host_step_ms,
            "selections": {str(k): v for k, v in sorted(self.chosen_counts.items())},
            "backoff_steps": self.skipped,
            "host_ms_per_fill": self.host_ms,
            "mean_drafts": drafts / forwards if forwards else 0.0,
            "expected_advance_per_forward": advance / forwards if forwards else 0.0,
        }
