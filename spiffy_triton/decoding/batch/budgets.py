"""Each row's ``max_drafts``: a row's auto budget is its own, never the process-wide shared
one, which concurrent rows would corrupt (the package docstring, "Auto budgets")."""

from __future__ import annotations

import threading

from ..budget import AutoDraftBudget

_BIND_LOCK = threading.Lock()


class RowBudget(AutoDraftBudget):
    """A row's own auto budget; binds one at a time, so the cost probe (measured once, then
    cached for the process) never runs in two rows at once."""

    def bind(self, *args, **kwargs) -> None:
        with _BIND_LOCK:
            super().bind(*args, **kwargs)


def row_budgets(max_drafts, num_rows: int) -> list:
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
        return [RowBudget() if m == "auto" else m for m in max_drafts]
    if isinstance(max_drafts, AutoDraftBudget):
        raise ValueError(
            "batched decoding takes one AutoDraftBudget per row (max_drafts=[b1, b2, ...]) or "
            "max_drafts='auto' (a budget per row): a budget follows one run at a time"
        )
    if isinstance(max_drafts, str) and max_drafts == "auto":
        return [RowBudget() for _ in range(num_rows)]
    return [max_drafts] * num_rows
