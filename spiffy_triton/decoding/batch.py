"""Batched decoding: several prompts decoded together, each row exactly as it would be alone.

`generate_batch(model, prompts, ...)` (and `generate` given a list of prompts or a padded
``[B, P]`` tensor with ``lengths=``) runs one `generate` pipeline per row (its own settings,
step counter, noise keys, drafts and statistics), in lockstep: every row's verify forward of an
iteration is gathered and rows whose forwards have the same shape (same sequence length and
block: one `SegmentLayout`) are evaluated in **one** model call, their batch rows stacked
(`verify_inputs` builds each row's inputs; the call's logits are split back per row). A row
whose block is done stops costing rows; a finished row leaves the batch.

Each row's decoding is the B = 1 pipeline unchanged (only its forward is shared), so its tokens
are B = 1's whenever the model gives a batch row the logits it gives that row alone (it does
for the package's models: tests/test_batch.py checks tokens and NFE per row).

Scope (first version): no cache and ``verify="batch"`` (the exact uncached mode) share
forwards; rows of other modes, and models with their own verifier (Dream, SDAR, the HF
adapter), run their forwards one row at a time through the same lockstep. ``max_drafts`` must
be None or an int: the ``"auto"`` budget times forwards, which a shared forward blurs.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field

import torch

from ..verify_inputs import verify_inputs

__all__ = ["BatchGenerateOutput", "generate_batch", "split_prompts"]


@dataclass
class BatchGenerateOutput:
    """``rows``: one `GenerateOutput` per prompt (its tokens ``[1, P_i + gen_length]``, NFE,
    steps, stats: what a B = 1 call returns); ``forwards``: model calls the batch made (shared
    forwards count once); ``row_forwards``: the sum of the rows' NFE."""

    rows: list = field(default_factory=list)
    forwards: int = 0

    @property
    def row_forwards(self) -> int:
        return sum(row.nfe for row in self.rows)

    @property
    def tokens(self) -> list[torch.Tensor]:
        return [row.tokens for row in self.rows]


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


class _Request:
    def __init__(self, verifier, args):
        self.verifier, self.args = verifier, args
        self.result = None
        self.error: BaseException | None = None
        self.done = False


class ForwardBatcher:
    """Gathers one forward request per active row, then evaluates them: shareable ones
    (uncached batch verify of the same shape) in one model call, the rest one by one."""

    def __init__(self, model, num_rows: int):
        self.model = model
        self.active = num_rows
        self.pending: list[_Request] = []
        self.cond = threading.Condition()
        self.forwards = 0

    def submit(self, verifier, args):
        request = _Request(verifier, args)
        with self.cond:
            self.pending.append(request)
            self._maybe_run()
            while not request.done:
                self.cond.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def leave(self) -> None:
        with self.cond:
            self.active -= 1
            self._maybe_run()

    def _maybe_run(self) -> None:
        if not self.pending or len(self.pending) < self.active:
            return
        pending, self.pending = self.pending, []
        groups: dict[tuple, list[_Request]] = {}
        for request in pending:
            groups.setdefault(self._key(request), []).append(request)
        for key, requests in groups.items():
            try:
                if key[0] == "shared":
                    self._run_shared(requests)
                else:
                    for request in requests:
                        request.result = request.verifier.inner(*request.args)
                        self.forwards += 1
            except BaseException as error:  # every waiting row gets the error
                for request in requests:
                    request.error = error
            for request in requests:
                request.done = True
        self.cond.notify_all()

    @staticmethod
    def _key(request: _Request) -> tuple:
        inner = request.verifier.inner
        x, s, e, _ = request.args
        if getattr(inner, "cache_mode", "own") is None and inner.verify == "batch":
            return ("shared", x.shape[1], s, e)
        return ("alone", id(request))

    def _run_shared(self, requests: list[_Request]) -> None:
        inputs = [verify_inputs(*r.args, None, "batch") for r in requests]
        ids = torch.cat([i.input_ids for i in inputs])
        out = self.model(ids, position_ids=inputs[0].position_ids, layout=inputs[0].layout)
        self.forwards += 1
        row = 0
        for request, part in zip(requests, inputs):
            n = part.input_ids.shape[0]
            request.result = part.split(out[row : row + n])
            row += n


class _BatchedVerifier:
    """A row's verifier: forwards go through the batcher; everything else is the row's own
    verifier (its cache, its clock)."""

    def __init__(self, inner, batcher: ForwardBatcher):
        self.inner, self.batcher = inner, batcher

    def __call__(self, x, s, e, drafts):
        return self.batcher.submit(self, (x, s, e, drafts))

    def prefill(self, x, s, e):
        return self.batcher.submit(_Prefill(self.inner), (x, s, e, None))

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _Prefill:
    """A prefill request (never shared: each row fills its own cache)."""

    def __init__(self, verifier):
        self.inner = _PrefillCall(verifier)


class _PrefillCall:
    cache_mode = "prefill"
    verify = "prefill"

    def __init__(self, verifier):
        self.verifier = verifier

    def __call__(self, x, s, e, _drafts):
        return self.verifier.prefill(x, s, e)


def generate_batch(model, prompts, *, lengths=None, **kwargs):
    """Decode every prompt of `prompts` (a list of 1-D tensors, or ``[B, P]`` with
    `lengths`) with `generate`'s arguments; returns a `BatchGenerateOutput` whose row ``i``
    is what ``generate(model, prompts[i][None], **kwargs)`` returns (module docstring).

    >>> out = generate_batch(model, [p1, p2], gen_length=64, block_length=32, graph=8,
    ...                      max_drafts=None)  # doctest: +SKIP
    >>> out.rows[0].tokens, out.forwards  # doctest: +SKIP
    """
    from . import loop

    if kwargs.get("max_drafts", "auto") == "auto" and kwargs.get("graph") is not None:
        raise ValueError(
            "batched decoding takes max_drafts=None or an int with a graph: the 'auto' budget "
            "times each forward, which the batch shares"
        )
    # generate's own defaults (one source), but no shared 'auto' budget across rows
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
    batcher = ForwardBatcher(model, len(rows))
    outputs: list = [None] * len(rows)
    errors: list = [None] * len(rows)

    def run_row(i: int) -> None:
        try:
            with torch.no_grad():  # grad mode is per thread
                outputs[i] = loop.decode(
                    model, rows[i], wrap_verifier=lambda v: _BatchedVerifier(v, batcher), **kw
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
    return BatchGenerateOutput(rows=outputs, forwards=batcher.forwards)
