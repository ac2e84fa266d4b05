"""The state of the cost-aware draft budget (`spiffy_triton.decoding.budget`), each part with
its own lifetime: `Iteration` (one decode iteration, in the budget's call order), `BackOff`
(one run's plain steps), `OnlineRefit` (the run's verify forwards) and `DecayedRatio` (realized
over predicted, decayed). The policy that reads them is `AutoDraftBudget`.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .cost_model import VerifyCostModel, VerifyShape

MAX_BACKOFF = 8  # most plain steps in a row after choosing no drafts
EXPLORE_EVERY = 2 * MAX_BACKOFF + 1  # fill one in this many steps at which drafts cannot pay
ONLINE_WINDOW = 48  # the run's most recent verify forwards an online refit uses
REFIT_EVERY = 16  # forwards between online refits
# Realized-over-predicted ratios (`DecayedRatio`): decay per observation, prior observations.
RATIO_DECAY = 0.97
RATIO_PRIOR_WEIGHT = 8.0


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


class BackOff:
    """When the budget skips filling (module docstring, Back-off): after a second empty
    selection in a row, 1, then 2, 4, ... (at most ``MAX_BACKOFF``) plain steps; where no draft
    set could pay, every step but one in ``EXPLORE_EVERY``."""

    def __init__(self):
        self.skipped = 0  # forwards taken as plain steps without filling (this run)
        self._backoff = 0  # plain steps after the last empty selection
        self._empty_run = 0  # empty selections in a row
        self._skip = 0  # plain steps still to take
        self._hopeless = 0  # steps at which no draft set could pay

    def start_run(self) -> None:
        self.skipped = self._skip = self._backoff = self._empty_run = 0

    def selected(self, chosen: bool) -> None:
        """A selection was made: with drafts (`chosen`) or none."""
        if chosen:
            self._empty_run = self._backoff = 0
        else:
            # One empty selection is often a hard spot in a block where drafts pay; a run of
            # them says they do not: 0, 1, 2, 4, ... plain steps.
            self._empty_run += 1
            if self._empty_run > 1:
                self._backoff = min(MAX_BACKOFF, max(1, 2 * self._backoff))
        self._skip = self._backoff

    def skip_now(self) -> bool:
        """Whether this step is one of the back-off's plain steps (counted down)."""
        if self._skip > 0:
            self._skip -= 1
            self.skipped += 1
            return True
        return False

    def skip_hopeless(self) -> bool:
        """At a step where no draft set could pay: skip, except one in ``EXPLORE_EVERY``."""
        self._hopeless += 1
        if self._hopeless % EXPLORE_EVERY:
            self.skipped += 1
            return True
        return False


class OnlineRefit:
    """The run's own verify forwards (the last ``ONLINE_WINDOW``), anchored by the measured
    model's predictions at a few shapes: every ``REFIT_EVERY`` forwards a refitted model."""

    def __init__(self):
        self.anchors: list[tuple[VerifyShape, float]] = []  # the measured model's predictions
        self.window: collections.deque = collections.deque(maxlen=ONLINE_WINDOW)
        self.since_fit = 0

    def anchor(self, model: VerifyCostModel, shapes: Sequence[VerifyShape]) -> None:
        """Anchor on `model`'s predictions at `shapes` (once: the first model measured)."""
        if not self.anchors:
            self.anchors = [(s, model.predict_ms(s)) for s in shapes]

    def add(self, shape: VerifyShape, ms: float, model: VerifyCostModel) -> VerifyCostModel | None:
        """Record one forward; the refitted model when one is due (else None)."""
        self.window.append((shape, ms))
        self.since_fit += 1
        if self.since_fit < REFIT_EVERY:
            return None
        self.since_fit = 0
        samples = self.anchors + list(self.window)
        if len({s.query_rows for s, _ in samples}) < 2:
            return None  # one shape cannot separate intercept from slope
        source = model.source.split("+")[0] + "+online"
        return VerifyCostModel.fit(samples, source=source)


@dataclass
class Iteration:
    """What the budget learns of one decode iteration, filled in the order the decoder calls it
    (`AutoDraftBudget`'s call order): the fill's `AutoDraftBudget.select` (the candidates, the
    raw expected extra steps of the chosen ones, the host time of filling and selecting) ->
    `AutoDraftBudget.record_forward` (the verify forward: drafts, ms) ->
    `AutoDraftBudget.observe` (the walk, learned by the estimator) ->
    `AutoDraftBudget.end_iteration` (the iteration's time), which closes it. An iteration that
    does not fill (a back-off step, a block's prefill) starts at `record_forward`. Nothing in it
    outlives its iteration."""

    candidates: list = field(default_factory=list)
    root: list[int] | None = None  # the root state the candidates were filled into
    mask_id: int | None = None
    expected_extra: float | None = None  # None: nothing was selected this iteration
    fill_ms: float = 0.0
    forward: tuple[int, float] | None = None  # (drafts, ms) of the verify forward
