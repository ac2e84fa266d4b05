"""Every mutant of tests/mutations.py still applies: its module resolves and each text it
replaces occurs exactly once (code moves would otherwise turn a mutant into an error that
only the 20-minute `scripts/mutate.py` run shows). Each mutant's tests exist as well."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import mutate  # noqa: E402
from mutations import MUTANTS  # noqa: E402


def test_mutant_names_are_unique():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_applies(mutant):
    path = ROOT / mutate.module_file(mutant.module)
    text = path.read_text(encoding="utf-8")
    mutated = mutate.apply(text, mutant.replacements)  # LookupError unless each occurs once
    assert mutated != text
    for target in mutant.tests:
        if target.startswith("-"):
            continue
        file = target.split("::")[0]
        if file.endswith(".py"):
            assert (ROOT / file).is_file(), f"{mutant.name}: no test file {file}"
    assert importlib.util.find_spec(mutant.module) is not None
