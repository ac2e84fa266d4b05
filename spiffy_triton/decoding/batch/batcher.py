"""The lockstep: `ForwardBatcher` gathers one model call per active row (a round), groups the
calls that can share (by a key naming the form of merge, `merging.RUNS`), runs each group as
one model call, and splits its time and counts between its rows."""

from __future__ import annotations

import threading
import time

import torch

from .caches import CacheMemo, is_kv_cache
from .layouts import cached_segments
from .merging import RUNS
from .rows import Request, Row, batch_rows

ALONE = ("alone",)


class ForwardBatcher:
    """Gathers one model call per active row (a round), then evaluates them: calls of the same
    shape (`_forward_key`, `_prefill_key`) in one model call, the others one by one."""

    def __init__(self, model, num_rows: int):
        self.model = model
        self.num_rows = self.active = num_rows
        self.pending: list[Request] = []
        self.cond = threading.Condition()
        self.forwards = self.rounds = self.rows_evaluated = self.rows_saved = 0
        self.shareable = _shares_forwards(model)
        self.caches = CacheMemo()

    # ---------------------------------------------------------------- the rows' side

    def forward(self, row: Row, input_ids, position_ids=None, layout=None, cache=None, **kw):
        key = self._forward_key(input_ids, position_ids, layout, cache, kw)
        payload = (
            "forward",
            (input_ids,),
            dict(position_ids=position_ids, layout=layout, cache=cache, **kw),
        )
        return self._submit(row, key, payload)

    def prefill(self, row: Row, input_ids, **kw):
        return self._submit(row, self._prefill_key(input_ids, kw), ("prefill", (input_ids,), kw))

    def alone(self, row: Row, fn, *args):
        """A call that is not a plain model call (a verifier without a ``model`` attribute)."""
        return self._submit(row, ALONE, ("call", (fn, *args), {}))

    def _submit(self, row: Row, key: tuple, payload):
        request = Request(row, key, payload)
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
            return ALONE
        width = ids.shape[1]
        if pos is not None and (
            not isinstance(pos, torch.Tensor)
            or pos.dim() not in (1, 2)
            or (pos.dim() == 2 and pos.shape[0] != 1)
            or pos.shape[-1] != width
        ):
            return ALONE
        geometry = None
        if cache is not None:
            if not is_kv_cache(cache) or cache.batch_size not in (1, ids.shape[0]):
                return ALONE
            if pos is not None and cached_segments(cache, width, layout) is not None:
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
            return ALONE
        if set(kw) - {"block_start", "block_end", "mode"} or ids.dim() != 2:
            return ALONE
        mode = kw.get("mode", "dual")
        return (
            "prefill",
            ids.shape[1],
            ids.dtype,
            kw.get("block_start"),
            kw.get("block_end"),
            mode,
        )

    # ---------------------------------------------------------------- the round

    def _maybe_run(self) -> None:
        if not self.pending or len(self.pending) < self.active:
            return
        pending, self.pending = self.pending, []
        self.rounds += 1
        self.rows_saved += self.num_rows - self.active
        groups: dict[tuple, list[Request]] = {}
        for request in pending:
            key = request.key if request.key != ALONE else ("alone", id(request))
            groups.setdefault(key, []).append(request)
        for key, requests in groups.items():
            try:
                started = time.perf_counter()
                rows = [batch_rows(r) for r in requests]
                run = RUNS["alone" if len(requests) == 1 else key[0]]
                run(self.model, self.caches, key, requests, rows)
                self._count(requests, rows)
                self._attribute(requests, time.perf_counter() - started)
            except BaseException as error:  # every waiting row gets the error
                for request in requests:
                    request.error = error
            for request in requests:
                request.done = True
        # merged caches of groups that did not run this round are dropped (finished blocks)
        self.caches.keep_only(groups)
        self.cond.notify_all()

    def _count(self, requests: list[Request], rows: list[int]) -> None:
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

    def _attribute(self, requests: list[Request], seconds: float) -> None:
        """Split a call's time between its rows: by each row's predicted cost (its auto
        budget's cost model at its verify shape) when every row has one, else by batch rows."""
        if len(requests) == 1:
            requests[0].share_s = seconds
            return
        weights = [r.row.predicted_ms() for r in requests]
        if any(w is None or w <= 0 for w in weights):
            weights = [batch_rows(r) for r in requests]
        total = sum(weights)
        for request, weight in zip(requests, weights):
            request.share_s = seconds * weight / total


def _shares_forwards(model) -> bool:
    """Whether calls of `model` can be merged: the package's models (every op row-wise; the
    cached forward takes one cache row per input row)."""
    from ...models.llada import LLaDAModel

    return isinstance(model, LLaDAModel)


def _plain_prefill(model) -> bool:
    """Whether `model.prefill` is LLaDA's (one full forward, a cache per batch row): SDAR's
    commits incrementally from each row's own cache, so it runs per row."""
    from ...models.llada import LLaDAModel

    return type(model).prefill is LLaDAModel.prefill
