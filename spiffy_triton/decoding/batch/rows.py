"""A row of the batch as the batcher sees it, and the row's side of every model call.

Each row's `generate` pipeline runs in its own thread, unchanged; what it calls instead of the
model (`ModelProxy`) and instead of its verifier (`RowVerifier`) hands each call to the
batcher as a `Request` and blocks until the round has run it. `BatchRowStats` is what the
batcher records per row (its share of the calls' time, its wait)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..budget import AutoDraftBudget
    from .batcher import ForwardBatcher


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


class Row:
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


class Request:
    """One model call of a row, waiting for its round: ``payload`` is ``(kind, args, kwargs)``
    (kind ``"forward"``, ``"prefill"`` or ``"call"``), ``key`` the group it may share."""

    def __init__(self, row: Row, key: tuple, payload):
        self.row, self.key, self.payload = row, key, payload
        self.result = None
        self.error: BaseException | None = None
        self.done = False
        self.share_s = 0.0

    @property
    def ids(self):
        """The call's input ids (a forward's or a prefill's)."""
        return self.payload[1][0]

    @property
    def kwargs(self) -> dict:
        return self.payload[2]


def batch_rows(request: Request) -> int:
    kind, args, _ = request.payload
    return args[0].shape[0] if kind != "call" else 1


class ModelProxy:
    """What a row's verifier calls instead of the model: forwards and prefills go through the
    batcher; everything else is the model's."""

    def __init__(self, model, batcher: ForwardBatcher, row: Row):
        self._model, self._batcher, self._row = model, batcher, row

    def __call__(self, *args, **kwargs):
        return self._batcher.forward(self._row, *args, **kwargs)

    def prefill(self, *args, **kwargs):
        return self._batcher.prefill(self._row, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


class RowVerifier:
    """A row's verifier: notes the drafts of each verify (the batcher's cost split); its model
    calls go through the batcher (the verifier's ``model`` is the proxy), or, for a verifier
    without a ``model``, the whole call does."""

    def __init__(self, inner, batcher: ForwardBatcher, row: Row, proxied: bool):
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
