"""Batched decoding: several prompts decoded together, each row exactly as it would be alone.

`generate_batch(model, prompts, ...)` (and `generate` given a list of prompts or a padded
``[B, P]`` tensor with ``lengths=``) runs one `generate` pipeline per row (its own settings,
step counter, noise keys, drafts, caches, statistics and auto budget), in lockstep: a row's
verifier calls the model through a proxy, every active row's model call of a round is
gathered, and calls that can share are evaluated in **one** model call (`ForwardBatcher`,
"Scope" below). A row whose block is done stops costing rows (it asks for a smaller forward, or
none); a finished row leaves the batch.

Each row's decoding is the B = 1 pipeline unchanged (only its model calls are merged), so its
tokens and NFE are B = 1's whenever the model gives a batch row the logits it gives that row
alone. It does for the package's models (tests/test_batch.py checks tokens and NFE per row):
every op is row-wise, and the cached forward takes a cache of one batch row per input row.

Scope. Calls of the package's models (`LLaDAModel` and its subclasses: LLaDA, Dream, SDAR) are
merged in every mode, so each call gets the arithmetic of its B = 1 call:

- a forward with a `SegmentLayout` (uncached ``verify="packed"`` with drafts, SDAR's
  block-causal forwards, every cached forward: ``cache="prefix"`` / ``"dual"``, packed or
  batch) is packed **varlen**: every batch row of every call is a run of segments of one
  sequence, blind to the others (NONE), at its own positions, visiting its keys in its own
  order; cached rows read one merged cache holding every row's cached keys (`_merged_cache`).
  Rows of any prompt length and draft count share one call, and no padding row is computed.
  Exact because the attention's key tiles never cross a segment boundary
  (spiffy_triton/layout.py) and every other op is row-wise: measured bit-identical
  (docs/DECODING.md, "Batched decoding").
- a forward without a layout (uncached root-only and ``verify="batch"`` forwards: the model's
  plain SDPA, issue #21) shares with calls of the same sequence length: batch rows stacked.
  Packing those varlen would put them on the layout path, whose logits differ from SDPA's in
  the last bits (measured: up to 5.6e-5 in float32), so rows of different lengths run as
  separate calls of the round there.
- block-start prefills (one full SDPA forward) of the same shape share, their caches split
  per row (LLaDA, Dream; SDAR's incremental commit runs per row).

Other models (the Hugging Face adapter) and calls of other forms run one row at a time through
the same lockstep.

Auto budgets. ``max_drafts="auto"`` gives each row its own `AutoDraftBudget` (cost model from
the process cache, measured once; rates learned over the row's own run), not the process-wide
shared one, which concurrent rows would corrupt; pass a list of budgets (one per row) to keep
what they learn across calls. A shared forward's measured time is split between its rows by
each row's predicted cost (its budget's cost model at its verify shape; batch rows without a
budget), and the time a row waits for the others is kept apart (``time_s["batch_wait"]``), so
a row's budget sees the forward it would have made alone. The draft counts (so NFE) then
depend on timings; the tokens do not (Spiffy is lossless for any draft count in exact modes).
"""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass, field

import torch

from ..layout import NONE, SegmentLayout
from .budget import AutoDraftBudget

__all__ = ["BatchGenerateOutput", "BatchRowStats", "ForwardBatcher", "generate_batch"]
__all__ += ["split_prompts"]


@dataclass
class BatchRowStats:
    """One row's share of the batch: ``shared_forwards`` (its model calls evaluated with other
    rows), ``alone_forwards`` (evaluated alone), ``batch_rows`` (the batch rows it put into
    model calls), ``model_s`` (its share of the calls' time) and ``wait_s`` (time waiting for
    the other rows' calls and host work)."""

    shared_forwards: int = 0
    alone_forwards: int = 0
    batch_rows: int = 0
    model_s: float = 0.0
    wait_s: float = 0.0

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class BatchGenerateOutput:
    """``rows``: one `GenerateOutput` per prompt (its tokens ``[1, P_i + gen_length]``, NFE,
    steps, stats: what a B = 1 call returns); ``row_stats``: one `BatchRowStats` per prompt.

    Whole batch: ``forwards`` (model calls the batch made; a shared call counts once),
    ``rounds`` (lockstep rounds: one model call per active row each), ``rows_evaluated`` (batch
    rows summed over the calls), ``rows_saved`` (row slots of finished rows a static batch
    would still have carried: per round, the rows that had left), ``row_forwards`` (the rows'
    NFE summed: the calls B separate runs make)."""

    rows: list = field(default_factory=list)
    forwards: int = 0
    rounds: int = 0
    rows_evaluated: int = 0
    rows_saved: int = 0
    row_stats: list = field(default_factory=list)

    @property
    def row_forwards(self) -> int:
        return sum(row.nfe for row in self.rows)

    @property
    def tokens(self) -> list[torch.Tensor]:
        return [row.tokens for row in self.rows]

    def summary(self) -> dict:
        return {
            "rows": len(self.rows),
            "forwards": self.forwards,
            "row_forwards": self.row_forwards,
            "rounds": self.rounds,
            "rows_evaluated": self.rows_evaluated,
            "rows_saved": self.rows_saved,
            "per_row": [
                {"nfe": r.nfe, "steps": r.steps, **s.to_dict()}
                for r, s in zip(self.rows, self.row_stats)
            ],
        }


def split_prompts(prompts, lengths=None) -> list[torch.Tensor]:
    """A list of 1-D prompts, or a padded ``[B, P]`` tensor with ``lengths`` (``[B]`` ints,
    each row's prompt is its first ``lengths[i]`` ids), as a list of ``[1, P_i]`` prompts."""
    if isinstance(prompts, (list, tuple)):
        if lengths is not None:
            raise ValueError("lengths goes with a padded [B, P] tensor, not with a list of prompts")
        if not prompts:
            raise ValueError("prompts is an empty list")
        rows = []
        for i, p in enumerate(prompts):
            if not isinstance(p, torch.Tensor) or p.dim() != 1:
                shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
                raise ValueError(f"prompts[{i}] must be a 1-D tensor of ids, got {shape}")
            rows.append(p[None])
        return rows
    if not isinstance(prompts, torch.Tensor) or prompts.dim() != 2:
        shape = tuple(prompts.shape) if isinstance(prompts, torch.Tensor) else type(prompts)
        raise ValueError(f"prompts must be a list of 1-D tensors or a [B, P] tensor, got {shape}")
    b, p = prompts.shape
    if lengths is None:
        return [prompts[i : i + 1] for i in range(b)]
    lengths = torch.as_tensor(lengths).tolist()
    if len(lengths) != b:
        raise ValueError(f"lengths must hold one length per row ({b}), got {len(lengths)}")
    for i, n in enumerate(lengths):
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= p:
            raise ValueError(f"lengths[{i}] must be an int in [1, {p}], got {n!r}")
    return [prompts[i : i + 1, :n] for i, n in enumerate(lengths)]


# ----------------------------------------------------------------------------- the batcher


class _Row:
    """A row's decoding as the batcher sees it: its stats, its verifier (for the clock), its
    auto budget (for the predicted cost of its forwards), the drafts of its current verify."""

    def __init__(self, index: int, budget: AutoDraftBudget | None):
        self.index, self.budget = index, budget
        self.stats = BatchRowStats()
        self.verifier = None
        self.num_drafts = 0

    def predicted_ms(self) -> float | None:
        budget = self.budget
        if budget is None or budget.cost_model is None or budget._shape_of is None:
            return None
        return budget.cost_model.predict_ms(budget._shape_of(self.num_drafts))


class _Request:
    def __init__(self, row: _Row, key: tuple, payload):
        self.row, self.key, self.payload = row, key, payload
        self.result = None
        self.error: BaseException | None = None
        self.done = False
        self.share_s = 0.0


class ForwardBatcher:
    """Gathers one model call per active row (a round), then evaluates them: calls of the same
    shape (`_forward_key`, `_prefill_key`) in one model call, the others one by one."""

    def __init__(self, model, num_rows: int):
        self.model = model
        self.num_rows = self.active = num_rows
        self.pending: list[_Request] = []
        self.cond = threading.Condition()
        self.forwards = self.rounds = self.rows_evaluated = self.rows_saved = 0
        self.shareable = _shares_forwards(model)
        self._stacked: dict[tuple, tuple] = {}  # group key -> (row caches, stacked cache)

    # ---------------------------------------------------------------- the rows' side

    def forward(self, row: _Row, input_ids, position_ids=None, layout=None, cache=None, **kw):
        key = self._forward_key(input_ids, position_ids, layout, cache, kw)
        payload = (
            "forward",
            (input_ids,),
            dict(position_ids=position_ids, layout=layout, cache=cache, **kw),
        )
        return self._submit(row, key, payload)

    def prefill(self, row: _Row, input_ids, **kw):
        return self._submit(row, self._prefill_key(input_ids, kw), ("prefill", (input_ids,), kw))

    def alone(self, row: _Row, fn, *args):
        """A call that is not a plain model call (a verifier without a ``model`` attribute)."""
        return self._submit(row, ("alone",), ("call", (fn, *args), {}))

    def _submit(self, row: _Row, key: tuple, payload):
        request = _Request(row, key, payload)
        entered = time.perf_counter()
        with self.cond:
            self.pending.append(request)
            self._maybe_run()
            while not request.done:
                self.cond.wait()
        waited = time.perf_counter() - entered - request.share_s
        row.stats.model_s += request.share_s
        row.stats.wait_s += waited
        clock = getattr(row.verifier, "clock", None)
        if clock is not None and waited > 0:  # the verifier's next "model" lap is its share
            clock.last += waited
            clock.times["batch_wait"] = clock.times.get("batch_wait", 0.0) + waited
        if request.error is not None:
            raise request.error
        return request.result

    def leave(self) -> None:
        with self.cond:
            self.active -= 1
            self._maybe_run()

    # ---------------------------------------------------------------- grouping

    def _forward_key(self, ids, pos, layout, cache, kw) -> tuple:
        if not self.shareable or kw or not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            return ("alone",)
        width = ids.shape[1]
        if pos is not None and (
            not isinstance(pos, torch.Tensor)
            or pos.dim() not in (1, 2)
            or (pos.dim() == 2 and pos.shape[0] != 1)
            or pos.shape[-1] != width
        ):
            return ("alone",)
        geometry = None
        if cache is not None:
            if not _is_kv_cache(cache) or cache.batch_size not in (1, ids.shape[0]):
                return ("alone",)
            if pos is not None and _cached_segments(cache, width, layout) is not None:
                return ("cached-varlen", ids.dtype)  # packed beside others over their caches
            geometry = (cache.mode, cache.block_start, cache.block_end, cache.total_length)
        elif layout is not None:
            # the B = 1 forward takes the layout path: varlen packing gives its logits
            return ("varlen", ids.dtype)
        pos = None if pos is None else tuple(pos.reshape(-1).tolist())
        return ("forward", width, ids.dtype, pos, layout, geometry)

    def _prefill_key(self, ids, kw) -> tuple:
        if (
            not self.shareable
            or not _plain_prefill(self.model)
            or not isinstance(ids, torch.Tensor)
        ):
            return ("alone",)
        if set(kw) - {"block_start", "block_end", "mode"} or ids.dim() != 2:
            return ("alone",)
        mode = kw.get("mode", "dual")
        return (
            "prefill",
            ids.shape[1],
            ids.dtype,
            kw.get("block_start"),
            kw.get("block_end"),
            mode,
        )

    def _maybe_run(self) -> None:
        if not self.pending or len(self.pending) < self.active:
            return
        pending, self.pending = self.pending, []
        self.rounds += 1
        self.rows_saved += self.num_rows - self.active
        groups: dict[tuple, list[_Request]] = {}
        for request in pending:
            key = request.key if request.key[0] != "alone" else ("alone", id(request))
            groups.setdefault(key, []).append(request)
        for key, requests in groups.items():
            try:
                started = time.perf_counter()
                if len(requests) == 1:
                    self._run_alone(requests[0])
                elif key[0] == "forward":
                    self._run_forward(key, requests)
                elif key[0] == "varlen":
                    self._run_varlen(requests)
                elif key[0] == "cached-varlen":
                    self._run_cached_varlen(key, requests)
                else:
                    self._run_prefill(requests)
                self._attribute(requests, time.perf_counter() - started)
            except BaseException as error:  # every waiting row gets the error
                for request in requests:
                    request.error = error
            for request in requests:
                request.done = True
        # stacked caches of groups that did not run this round are dropped (finished blocks)
        self._stacked = {k: v for k, v in self._stacked.items() if k in groups}
        self.cond.notify_all()

    def _count(self, requests: list[_Request], rows: list[int]) -> None:
        self.forwards += 1
        self.rows_evaluated += sum(rows)
        shared = len(requests) > 1
        for request, n in zip(requests, rows):
            stats = request.row.stats
            stats.batch_rows += n
            if shared:
                stats.shared_forwards += 1
            else:
                stats.alone_forwards += 1

    def _attribute(self, requests: list[_Request], seconds: float) -> None:
        """Split a call's time between its rows: by each row's predicted cost (its auto
        budget's cost model at its verify shape) when every row has one, else by batch rows."""
        if len(requests) == 1:
            requests[0].share_s = seconds
            return
        weights = [r.row.predicted_ms() for r in requests]
        if any(w is None or w <= 0 for w in weights):
            weights = [_batch_rows(r) for r in requests]
        total = sum(weights)
        for request, weight in zip(requests, weights):
            request.share_s = seconds * weight / total

    def _run_alone(self, request: _Request) -> None:
        kind, args, kw = request.payload
        if kind == "call":
            fn, *args = args
            request.result = fn(*args)
        else:
            request.result = getattr(self.model, "__call__" if kind == "forward" else kind)(
                *args, **kw
            )
        self._count([request], [_batch_rows(request)])

    def _run_forward(self, key: tuple, requests: list[_Request]) -> None:
        rows = [_batch_rows(r) for r in requests]
        ids = torch.cat([r.payload[1][0] for r in requests])
        kw = dict(requests[0].payload[2])
        if kw["cache"] is not None:
            kw["cache"] = self._stack_caches(key, [r.payload[2]["cache"] for r in requests], rows)
        out = self.model(ids, **kw)
        start = 0
        for request, n in zip(requests, rows):
            request.result = out[start : start + n]
            start += n
        self._count(requests, rows)

    def _run_varlen(self, requests: list[_Request]) -> None:
        """Uncached forwards with a layout, of any lengths, as one sequence: every batch row of
        every call is a run of segments (its layout), blind to the others (NONE), at its own
        positions, visiting its keys in its own order. The kernel's key tiles never cross a
        segment boundary, so each row gets the logits of its own call (docs/DECODING.md)."""
        rows = [_batch_rows(r) for r in requests]
        ids, pos, parts = [], [], []
        for request, n in zip(requests, rows):
            x = request.payload[1][0]
            kw = request.payload[2]
            p = kw["position_ids"]
            p = torch.arange(x.shape[1], device=x.device) if p is None else p.reshape(-1)
            ids.append(x.reshape(-1))
            pos.append(p.to(x.device).repeat(n))
            parts += [kw["layout"]] * n
        out = self.model(
            torch.cat(ids)[None], position_ids=torch.cat(pos), layout=_block_diagonal(parts)
        )[0]
        start = 0
        for request, n in zip(requests, rows):
            m = request.payload[1][0].shape[1]
            request.result = out[start : start + n * m].view(n, m, -1)
            start += n * m
        self._count(requests, rows)

    def _run_cached_varlen(self, key: tuple, requests: list[_Request]) -> None:
        """Cached forwards of any shapes as one sequence over one merged cache: the keys are
        every row's cached segments, then every batch row's fresh rows (its queries); each
        batch row sees its own cache copy and its own rows through its layout's segments (in
        its own key order), nothing of the others. The model reads the merged keys as a
        prefix cache whose real rows are all the query rows (`_merged_cache`)."""
        rows = [_batch_rows(r) for r in requests]
        plans = []
        for request in requests:
            x, kw = request.payload[1][0], request.payload[2]
            plans.append(_cached_segments(kw["cache"], x.shape[1], kw["layout"]))
        caches = [r.payload[2]["cache"] for r in requests]
        cached_k, cached_v, cached_lengths, cached_index = self._merged_cached_keys(
            key, caches, plans
        )
        q_lengths, visibility, fresh, pos, ids = [], [], [], [], []
        k_lengths = list(cached_lengths)
        fresh_offset = len(k_lengths)
        placements = []  # per batch row: its layout, and where each of its key segments went
        for i, (request, plan, n) in enumerate(zip(requests, plans, rows)):
            x, kw = request.payload[1][0], request.payload[2]
            p = kw["position_ids"].reshape(-1).to(x.device)
            layout, parts = plan
            for j in range(n):
                copy = j if kw["cache"].batch_size > 1 else 0
                index = {}
                for seg, part in enumerate(parts):
                    if part in ("real", "extra"):
                        index[seg] = fresh_offset + len(fresh)
                        fresh.append(layout.k_lengths[seg])
                    else:
                        index[seg] = cached_index[(i, copy, seg)]
                placements.append((layout, index))
                ids.append(x[j])
                pos.append(p)
        k_lengths += fresh
        num_k = len(k_lengths)
        ranks = [0] * num_k
        for layout, index in placements:
            n = len(layout.k_lengths)
            order = sorted(range(n), key=lambda seg: (layout.key_order[seg], seg))
            for r, seg in enumerate(order):
                ranks[index[seg]] = r
            for row in layout.visibility.tolist():
                full = [NONE] * num_k
                for seg, v in enumerate(row):
                    full[index[seg]] = v
                visibility.append(full)
            q_lengths += layout.q_lengths
        layout = SegmentLayout(q_lengths, k_lengths, visibility, key_order=ranks)
        ids = torch.cat(ids)[None]
        cache = _merged_cache(caches[0], cached_k, cached_v, ids.shape[1])
        out = self.model(ids, position_ids=torch.cat(pos), layout=layout, cache=cache)[0]
        start = 0
        for request, n in zip(requests, rows):
            m = request.payload[1][0].shape[1]
            request.result = out[start : start + n * m].view(n, m, -1)
            start += n * m
        self._count(requests, rows)

    def _merged_cached_keys(self, key: tuple, caches: list, plans: list):
        """Every row's cached keys and values, one sequence per layer (kept while the rows'
        caches stay the same), their key segments' lengths and where each row's segments
        are: ``(row, cache copy, its layout's segment) -> merged segment``."""
        lengths, index, slices = [], {}, []  # slices: (row, copy, field part, start, stop)
        for i, (cache, (layout, parts)) in enumerate(zip(caches, plans)):
            for copy in range(cache.batch_size):
                offsets = {"prefix": 0, "suffix": 0}
                for seg, part in enumerate(parts):
                    if part not in offsets:
                        continue
                    n = layout.k_lengths[seg]
                    index[(i, copy, seg)] = len(lengths)
                    lengths.append(n)
                    slices.append((i, copy, part, offsets[part], offsets[part] + n))
                    offsets[part] += n
        kept = self._stacked.get(key)
        if kept is not None and len(kept[0]) == len(caches) and kept[1] == slices:
            if all(a is b for a, b in zip(kept[0], caches)):
                return kept[2], kept[3], lengths, index
        keys, values = [], []
        for layer in range(len(caches[0].layers)):
            ks, vs = [], []
            for i, copy, part, a, b in slices:
                kv = caches[i].layers[layer]
                ks.append(getattr(kv, f"{part}_k")[copy : copy + 1, :, a:b])
                vs.append(getattr(kv, f"{part}_v")[copy : copy + 1, :, a:b])
            keys.append(torch.cat(ks, dim=2))
            values.append(torch.cat(vs, dim=2))
        self._stacked[key] = (caches, slices, keys, values)
        return keys, values, lengths, index

    def _stack_caches(self, key: tuple, caches: list, rows: list[int]):
        """One cache of ``sum(rows)`` batch rows: each row's cache repeated to its batch rows.
        Kept for the group while its rows' caches (and batch rows) stay the same."""
        kept = self._stacked.get(key)
        if kept is not None and len(kept[0]) == len(caches):
            if all(a is b for a, b in zip(kept[0], caches)) and kept[1] == rows:
                return kept[2]

        def stack(tensors):
            if tensors[0] is None:
                return None
            return torch.cat([t.expand(n, -1, -1, -1) for t, n in zip(tensors, rows)])

        first = caches[0]
        layers = tuple(
            type(layer)(*(stack([getattr(c.layers[i], f) for c in caches]) for f in _KV_FIELDS))
            for i, layer in enumerate(first.layers)
        )
        stacked = type(first)(
            first.mode, first.block_start, first.block_end, first.total_length, layers
        )
        self._stacked[key] = (caches, rows, stacked)
        return stacked

    def _run_prefill(self, requests: list[_Request]) -> None:
        rows = [_batch_rows(r) for r in requests]
        ids = torch.cat([r.payload[1][0] for r in requests])
        logits, cache = self.model.prefill(ids, **requests[0].payload[2])
        start = 0
        for request, n in zip(requests, rows):
            layers = tuple(
                type(layer)(
                    *(
                        None if getattr(layer, f) is None else getattr(layer, f)[start : start + n]
                        for f in _KV_FIELDS
                    )
                )
                for layer in cache.layers
            )
            row_cache = type(cache)(
                cache.mode, cache.block_start, cache.block_end, cache.total_length, layers
            )
            request.result = (logits[start : start + n], row_cache)
            start += n
        self._count(requests, rows)


_KV_FIELDS = ("prefix_k", "prefix_v", "suffix_k", "suffix_v")


def _cached_segments(cache, num_q: int, layout):
    """``(layout, part of each key segment)`` of a cached forward with `num_q` query rows (its
    layout, or the model's default one): a key segment lies in the cached ``"prefix"``, the
    fresh ``"real"`` rows, the cached ``"suffix"`` or the fresh ``"extra"`` rows (the key order
    of the cached forward's contract). None when a segment straddles two of them (the forward
    then runs in a shape group, never cut into other tiles)."""
    from ..models.llada import default_cached_layout

    real = cache.real_rows
    if num_q < real:
        return None
    if layout is None:
        try:
            layout = default_cached_layout(cache, num_q - real)
        except ValueError:
            return None
    bounds = [
        ("prefix", cache.prefix_len),
        ("real", real),
        ("suffix", cache.suffix_len),
        ("extra", num_q - real),
    ]
    if layout.num_q_rows != num_q or layout.num_k_rows != sum(n for _, n in bounds):
        return None
    parts, part, used = [], 0, 0
    for n in layout.k_lengths:
        while part < len(bounds) and used == bounds[part][1] and n > 0:
            part, used = part + 1, 0
        if part == len(bounds) or used + n > bounds[part][1]:
            return None
        parts.append(bounds[part][0])
        used += n
    return layout, parts


def _merged_cache(like, keys: list, values: list, num_q: int):
    """A prefix cache holding `keys` / `values` (every row's cached keys), whose real rows are
    all `num_q` query rows: the model's cached forward then attends over ``[merged cached keys,
    every query row's fresh keys]`` under the caller's layout."""
    prefix = keys[0].shape[2]
    layers = tuple(
        type(like.layers[0])(prefix_k=k, prefix_v=v, suffix_k=None, suffix_v=None)
        for k, v in zip(keys, values)
    )
    return type(like)("prefix", prefix, prefix + 1, prefix + num_q, layers)


def _block_diagonal(layouts: list):
    """The layouts side by side, each blind to the others: query and key segments in order,
    visibility block-diagonal, each layout's key order kept (as distinct ranks)."""
    q_lengths, k_lengths, ranks, rows = [], [], [], []
    num_k = sum(len(layout.k_lengths) for layout in layouts)
    offset = 0
    for layout in layouts:
        n = len(layout.k_lengths)
        order = sorted(range(n), key=lambda j: (layout.key_order[j], j))
        rank = [0] * n
        for r, j in enumerate(order):
            rank[j] = r
        q_lengths += layout.q_lengths
        k_lengths += layout.k_lengths
        ranks += rank
        for row in layout.visibility.tolist():
            rows.append([NONE] * offset + row + [NONE] * (num_k - offset - n))
        offset += n
    return SegmentLayout(q_lengths, k_lengths, rows, key_order=ranks)


def _batch_rows(request: _Request) -> int:
    kind, args, _ = request.payload
    return args[0].shape[0] if kind != "call" else 1


def _shares_forwards(model) -> bool:
    """Whether calls of `model` can be merged: the package's models (every op row-wise; the
    cached forward takes one cache row per input row)."""
    from ..models.llada import LLaDAModel

    return isinstance(model, LLaDAModel)


def _plain_prefill(model) -> bool:
    """Whether `model.prefill` is LLaDA's (one full forward, a cache per batch row): SDAR's
    commits incrementally from each row's own cache, so it runs per row."""
    from ..models.llada import LLaDAModel

    return type(model).prefill is LLaDAModel.prefill


def _is_kv_cache(cache) -> bool:
    from ..models.cache import KVCache

    return isinstance(cache, KVCache)


class _ModelProxy:
    """What a row's verifier calls instead of the model: forwards and prefills go through the
    batcher; everything else is the model's."""

    def __init__(self, model, batcher: ForwardBatcher, row: _Row):
        self._model, self._batcher, self._row = model, batcher, row

    def __call__(self, *args, **kwargs):
        return self._batcher.forward(self._row, *args, **kwargs)

    def prefill(self, *args, **kwargs):
        return self._batcher.prefill(self._row, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


class _RowVerifier:
    """A row's verifier: notes the drafts of each verify (the batcher's cost split); its model
    calls go through the batcher (the verifier's ``model`` is the proxy), or, for a verifier
    without a ``model``, the whole call does."""

    def __init__(self, inner, batcher: ForwardBatcher, row: _Row, proxied: bool):
        self.inner, self.batcher, self.row, self.proxied = inner, batcher, row, proxied

    def __call__(self, x, s, e, drafts):
        self.row.num_drafts = drafts.shape[0]
        if self.proxied:
            return self.inner(x, s, e, drafts)
        return self.batcher.alone(self.row, self.inner, x, s, e, drafts)

    def prefill(self, x, s, e):
        self.row.num_drafts = 0
        if self.proxied:
            return self.inner.prefill(x, s, e)
        return self.batcher.alone(self.row, self.inner.prefill, x, s, e)

    def __getattr__(self, name):
        return getattr(self.inner, name)


# -------------------------------------------------------------------------- auto budgets

_BIND_LOCK = threading.Lock()


class _RowBudget(AutoDraftBudget):
    """A row's own auto budget; binds one at a time, so the cost probe (measured once, then
    cached for the process) never runs in two rows at once."""

    def bind(self, *args, **kwargs) -> None:
        with _BIND_LOCK:
            super().bind(*args, **kwargs)


def _row_budgets(max_drafts, num_rows: int) -> list:
    """Each row's ``max_drafts``: "auto" is a fresh budget per row; a list gives one per row."""
    if isinstance(max_drafts, (list, tuple)):
        if len(max_drafts) != num_rows:
            raise ValueError(
                f"max_drafts as a list needs one entry per row ({num_rows}), got {len(max_drafts)}"
            )
        budgets = [m for m in max_drafts if isinstance(m, AutoDraftBudget)]
        if len({id(b) for b in budgets}) != len(budgets):
            raise ValueError(
                "max_drafts lists the same AutoDraftBudget for two rows: a budget follows one "
                "run at a time (give each row its own)"
            )
        return [_RowBudget() if m == "auto" else m for m in max_drafts]
    if isinstance(max_drafts, AutoDraftBudget):
        raise ValueError(
            "batched decoding takes one AutoDraftBudget per row (max_drafts=[b1, b2, ...]) or "
            "max_drafts='auto' (a budget per row): a budget follows one run at a time"
        )
    if isinstance(max_drafts, str) and max_drafts == "auto":
        return [_RowBudget() for _ in range(num_rows)]
    return [max_drafts] * num_rows


def generate_batch(model, prompts, *, lengths=None, **kwargs):
    """Decode every prompt of `prompts` (a list of 1-D tensors, or ``[B, P]`` with
    `lengths`) with `generate`'s arguments; returns a `BatchGenerateOutput` whose row ``i``
    is what ``generate(model, prompts[i][None], **kwargs)`` returns (module docstring).
    ``max_drafts`` may also be a list (one entry per row); ``"auto"`` gives each row its own
    budget (module docstring, "Auto budgets").

    >>> out = generate_batch(model, [p1, p2], gen_length=64, block_length=32, graph=8,
    ...                      max_drafts=None)  # doctest: +SKIP
    >>> out.rows[0].tokens, out.forwards  # doctest: +SKIP
    """
    from . import loop

    # generate's own defaults (one source), but max_drafts stays None when not given
    kw = {
        name: parameter.default
        for name, parameter in inspect.signature(loop.generate).parameters.items()
        if parameter.kind is parameter.KEYWORD_ONLY
        and parameter.default is not parameter.empty
        and name != "lengths"
    }
    kw["max_drafts"] = None
    kw.update(kwargs)
    rows = split_prompts(prompts, lengths)
    if kw.get("graph") is None and not isinstance(kw["max_drafts"], (list, tuple)):
        per_row = [kw["max_drafts"]] * len(rows)  # vanilla: generate checks it
    else:
        per_row = _row_budgets(kw["max_drafts"], len(rows))
    batcher = ForwardBatcher(model, len(rows))
    states = [_Row(i, m if isinstance(m, AutoDraftBudget) else None) for i, m in enumerate(per_row)]
    outputs: list = [None] * len(rows)
    errors: list = [None] * len(rows)

    def wrap(verifier, row: _Row):
        row.verifier = verifier
        proxied = getattr(verifier, "model", None) is model
        if proxied:
            verifier.model = _ModelProxy(model, batcher, row)
        return _RowVerifier(verifier, batcher, row, proxied)

    def run_row(i: int) -> None:
        try:
            with torch.no_grad():  # grad mode is per thread
                outputs[i] = loop.decode(
                    model,
                    rows[i],
                    wrap_verifier=lambda v: wrap(v, states[i]),
                    **{**kw, "max_drafts": per_row[i]},
                )
        except BaseException as error:
            errors[i] = error
        finally:
            batcher.leave()

    threads = [threading.Thread(target=run_row, args=(i,), daemon=True) for i in range(len(rows))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors:
        if error is not None:
            raise error
    return BatchGenerateOutput(
        rows=outputs,
        forwards=batcher.forwards,
        rounds=batcher.rounds,
        rows_evaluated=batcher.rows_evaluated,
        rows_saved=batcher.rows_saved,
        row_stats=[row.stats for row in states],
    )
