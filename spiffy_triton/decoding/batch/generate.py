"""The entry point: `generate_batch` splits the prompts (`split_prompts`), runs one `decode`
per row in its own thread with its verifier wrapped to call the model through the batcher,
and gathers the rows' outputs and the batch's counts in a `BatchGenerateOutput`."""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field

import torch

from ..budget import AutoDraftBudget
from .batcher import ForwardBatcher
from .budgets import row_budgets
from .rows import ModelProxy, Row, RowVerifier


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


def generate_batch(model, prompts, *, lengths=None, **kwargs):
    """Decode every prompt of `prompts` (a list of 1-D tensors, or ``[B, P]`` with
    `lengths`) with `generate`'s arguments; returns a `BatchGenerateOutput` whose row ``i``
    is what ``generate(model, prompts[i][None], **kwargs)`` returns (package docstring).
    ``max_drafts`` may also be a list (one entry per row); ``"auto"`` gives each row its own
    budget (package docstring, "Auto budgets").

    >>> out = generate_batch(model, [p1, p2], gen_length=64, block_length=32, graph=8,
    ...                      max_drafts=None)  # doctest: +SKIP
    >>> out.rows[0].tokens, out.forwards  # doctest: +SKIP
    """
    from .. import loop

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
        per_row = row_budgets(kw["max_drafts"], len(rows))
    batcher = ForwardBatcher(model, len(rows))
    states = [Row(i, m if isinstance(m, AutoDraftBudget) else None) for i, m in enumerate(per_row)]

    def run_row(i: int):
        return loop.decode(
            model,
            rows[i],
            wrap_verifier=lambda v: _wrap(v, model, batcher, states[i]),
            **{**kw, "max_drafts": per_row[i]},
        )

    return BatchGenerateOutput(
        rows=_in_threads(run_row, len(rows), batcher),
        forwards=batcher.forwards,
        rounds=batcher.rounds,
        rows_evaluated=batcher.rows_evaluated,
        rows_saved=batcher.rows_saved,
        row_stats=[row.stats for row in states],
    )


def _wrap(verifier, model, batcher: ForwardBatcher, row: Row) -> RowVerifier:
    """`verifier` as the row's: its model calls (or, without a ``model``, its calls) go
    through `batcher`."""
    row.verifier = verifier
    proxied = getattr(verifier, "model", None) is model
    if proxied:
        verifier.model = ModelProxy(model, batcher, row)
    return RowVerifier(verifier, batcher, row, proxied)


def _in_threads(run_row, num_rows: int, batcher: ForwardBatcher) -> list:
    """``run_row(i)`` for every row, each in its own thread (leaving the batch when done);
    the first row's error (by row) is raised once every row has ended."""
    outputs: list = [None] * num_rows
    errors: list = [None] * num_rows

    def target(i: int) -> None:
        try:
            with torch.no_grad():  # grad mode is per thread
                outputs[i] = run_row(i)
        except BaseException as error:
            errors[i] = error
        finally:
            batcher.leave()

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(num_rows)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors:
        if error is not None:
            raise error
    return outputs
