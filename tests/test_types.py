"""Typed seams: each string choice is a `Literal` defined once in spiffy_triton/types.py (the
tuples the code checks against are read off it, and no other module spells one out), the
seams' `Protocol`s fit the classes behind them, and the public API's annotations resolve."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest
import torch

from spiffy_triton import types
from spiffy_triton.types import (
    BACKENDS,
    CACHE_MODES,
    METHODS,
    REMASKINGS,
    VERIFY_MODES,
    Backend,
    CacheMode,
    Method,
    Remasking,
    VerifyMode,
)

REPO = Path(__file__).resolve().parents[1]
CHOICES = {
    "Backend": BACKENDS,
    "CacheMode": CACHE_MODES,
    "VerifyMode": VERIFY_MODES,
    "Method": METHODS,
    "Remasking": REMASKINGS,
}


def test_tuples_are_read_off_the_literals():
    for alias, choices in (
        (Backend, BACKENDS),
        (CacheMode, CACHE_MODES),
        (VerifyMode, VERIFY_MODES),
        (Method, METHODS),
        (Remasking, REMASKINGS),
    ):
        assert choices == typing.get_args(alias) and len(set(choices)) == len(choices) > 1


def test_the_code_checks_against_those_tuples():
    from spiffy_triton import dispatch
    from spiffy_triton.decoding import rules, verify
    from spiffy_triton.models import cache

    assert dispatch.BACKENDS is BACKENDS
    assert verify.CACHE_MODES is cache.CACHE_MODES is CACHE_MODES
    assert verify.VERIFY_MODES is VERIFY_MODES
    assert rules.REMASKING == REMASKINGS
    assert rules.LLADA_REMASKING + rules.TEMPERED_CONFIDENCE == REMASKINGS


def _spelled_out_choices(tree: ast.AST) -> list[tuple[int, str]]:
    """Tuples / lists / sets of string constants that spell out a whole choice set (with or
    without None) at or above two members."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Tuple, ast.List, ast.Set)) or len(node.elts) < 2:
            continue
        if not all(isinstance(e, ast.Constant) for e in node.elts):
            continue
        values = {e.value for e in node.elts} - {None}
        for name, choices in CHOICES.items():
            if values == set(choices):
                found.append((node.lineno, name))
    return found


def test_no_module_spells_out_a_choice_set_again():
    spelled = []
    for folder in ("spiffy_triton", "kernels", "reference"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == Path(types.__file__).resolve():
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            spelled += [
                f"{path.relative_to(REPO)}:{line}: {name}"
                for line, name in _spelled_out_choices(tree)
            ]
    assert not spelled, "use the tuples of spiffy_triton/types.py:\n" + "\n".join(spelled)


def test_the_scan_sees_a_spelled_out_set():
    tree = ast.parse('CACHE = (None, "prefix", "dual")\nOK = ("prefix",)\nX = ["batch", "packed"]')
    assert _spelled_out_choices(tree) == [(1, "CacheMode"), (3, "VerifyMode")]


def test_protocols_fit_what_the_decoder_drives():
    from utils import tiny_random_llada

    from spiffy_triton.decoding.stats import PhaseClock
    from spiffy_triton.decoding.verify import Verifier
    from spiffy_triton.models.dream import BidirectionalVerifier
    from spiffy_triton.models.sdar import BlockCausalVerifier

    model = tiny_random_llada(0)
    assert isinstance(model, types.DiffusionModel)
    assert not isinstance(object(), types.DiffusionModel)
    clock = PhaseClock({}, torch.device("cpu"))
    assert isinstance(Verifier(model, None, "batch", clock), types.VerifyForward)
    for cls in (BidirectionalVerifier, BlockCausalVerifier):
        assert callable(cls.prefill) and callable(cls.__call__), cls


@pytest.mark.parametrize(
    ("function", "argument", "expected"),
    [
        ("spiffy_triton.decoding.loop.generate", "cache", CacheMode | None),
        ("spiffy_triton.decoding.loop.generate", "verify", VerifyMode | None),
        ("spiffy_triton.decoding.loop.generate", "method", Method | None),
        ("spiffy_triton.decoding.loop.generate", "remasking", Remasking),
        ("spiffy_triton.decoding.loop.generate", "backend", Backend),
        ("spiffy_triton.dispatch.marginals", "backend", Backend),
        ("spiffy_triton.dispatch.graph_attention", "backend", Backend),
        ("spiffy_triton.models.load_model", "backend", Backend),
    ],
)
def test_public_api_annotations_resolve(function, argument, expected):
    import importlib

    module, _, name = function.rpartition(".")
    hints = typing.get_type_hints(getattr(importlib.import_module(module), name))
    assert hints[argument] == expected
