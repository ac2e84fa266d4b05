"""Generated data of the bundled small model: worked arithmetic and short Python code.

Three kinds of example, each a (prompt, answer) pair of plain text:

- ``"arith"``: a two-term or a three-term sum of digits, answered step by step left to right
  (``7+5+9=?`` -> ``7+5=12; 12+9=21. #### 21``);
- ``"word"``: a short word problem (four templates: sums and differences of digits) with the
  same kind of worked answer;
- ``"code"``: a one-line description of a Python function as a comment; the answer is the
  function.

Splits are deterministic and disjoint: an example belongs to the split chosen by a stable
hash of its prompt (`split_of`), so a held-out prompt can never appear in training, however
many training examples are drawn. ``"heldout"`` and ``"calibration"`` each take about a tenth
of the prompt space; ``"train"`` the rest.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

KINDS = ("arith", "word", "code")
SPLITS = ("train", "calibration", "heldout")
# Mix of kinds in training (and the default for `examples`): arithmetic and word problems.
TRAIN_MIX = {"arith": 0.55, "word": 0.42, "code": 0.03}
# Seeds of the per-split random streams, far apart so that streams never coincide.
_SPLIT_SEED = {"train": 1_000_003, "calibration": 2_000_003, "heldout": 3_000_017}
_ANSWER_RE = re.compile(r"####\s*(-?\d+)")


@dataclass(frozen=True)
class Example:
    kind: str
    prompt: str
    answer: str

    @property
    def text(self) -> str:
        return self.prompt + self.answer

    @property
    def value(self) -> int | None:
        """The final number of an arithmetic answer (None for code)."""
        return extract_answer(self.answer)


def extract_answer(text: str) -> int | None:
    """The number after the first ``####`` in `text`, or None if there is none."""
    match = _ANSWER_RE.search(text)
    return int(match.group(1)) if match else None


def split_of(prompt: str) -> str:
    """The split a prompt belongs to (a stable hash, the same on every machine)."""
    bucket = zlib.crc32(prompt.encode("utf-8")) % 20
    if bucket < 2:
        return "heldout"
    if bucket < 4:
        return "calibration"
    return "train"


# ---------------------------------------------------------------------------- arithmetic

# Operand ranges: digits, so that a 1.7M-parameter model learns every fact within an hour of
# CPU training (every task draws on one table: sums up to 27 and differences from at most 18).
# Operands up to 30 or 20 were too many facts for that budget (0% held-out after 20 minutes).
SUM2_RANGE = (1, 9)  # two-term sums
SUM3_RANGE = (1, 9)  # three-term sums
WORD_RANGE = (1, 9)  # word problems
SUM2_SHARE = 0.6  # share of two-term sums among arith examples


def _worked(numbers: list[int], ops: list[str]) -> str:
    """The worked answer, left to right: ``33+19=52; 52+13=65. #### 65``."""
    steps, value = [], numbers[0]
    for op, number in zip(ops, numbers[1:]):
        result = value + number if op == "+" else value - number
        steps.append(f"{value}{op}{number}={result}")
        value = result
    return "; ".join(steps) + f". #### {value}"


def _arith(rng: random.Random) -> Example:
    """A two-term sum (`SUM2_SHARE` of them) or a three-term sum, operands in their ranges."""
    terms, (low, high) = (2, SUM2_RANGE) if rng.random() < SUM2_SHARE else (3, SUM3_RANGE)
    numbers = [rng.randint(low, high) for _ in range(terms)]
    expression = "+".join(str(n) for n in numbers)
    return Example("arith", f"Q: {expression}=?\nA: ", _worked(numbers, ["+"] * (terms - 1)))


_NAMES = ("Ann", "Bob", "Cal", "Dee", "Eve", "Finn", "Gus", "Ivy", "Joe", "Kim", "Leo", "Mia")
_ITEMS = ("apples", "pens", "cards", "books", "eggs", "coins", "shells", "rocks", "stamps")


def _word(rng: random.Random) -> Example:
    """One of four templates: a sum, a difference, or a sum then a difference."""
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    low, high = WORD_RANGE
    a, b = rng.randint(low, high), rng.randint(low, high)
    template = rng.randrange(4)
    if template == 0:
        prompt = f"{name} has {a} {item}, gets {b} more. How many now?"
        numbers, ops = [a, b], ["+"]
    elif template == 1:
        a, b = max(a, b), min(a, b)
        prompt = f"{name} had {a} {item}, gave {b} away. How many left?"
        numbers, ops = [a, b], ["-"]
    elif template == 2:
        prompt = f"{name} has {a} {item}, {other} has {b}. How many in all?"
        numbers, ops = [a, b], ["+"]
    else:
        c = rng.randint(1, a + b)
        prompt = f"{name} had {a} {item}, found {b}, lost {c}. How many now?"
        numbers, ops = [a, b, c], ["+", "-"]
    return Example("word", f"Q: {prompt}\nA: ", _worked(numbers, ops))


# ---------------------------------------------------------------------------- Python code

_FUNCS = ("f", "g", "calc", "solve", "run", "helper", "work", "fn")
_VARS = ("x", "y", "n", "m", "k", "a", "b", "v")
_LISTS = ("xs", "items", "nums", "vals", "data", "seq")


def _code(rng: random.Random) -> Example:
    f = rng.choice(_FUNCS)
    a, b = rng.sample(_VARS, 2)
    xs = rng.choice(_LISTS)
    c = rng.randint(2, 9)
    template = rng.randrange(8)
    if template == 0:
        doc = f"sum of {xs}"
        body = f"def {f}({xs}):\n    s = 0\n    for {a} in {xs}:\n        s += {a}\n    return s\n"
    elif template == 1:
        doc = f"largest of {xs}"
        body = (
            f"def {f}({xs}):\n    best = {xs}[0]\n    for {a} in {xs}:\n"
            f"        if {a} > best:\n            best = {a}\n    return best\n"
        )
    elif template == 2:
        op, doc = rng.choice(
            (
                ("+", f"add {c} to each of {xs}"),
                ("*", f"multiply each of {xs} by {c}"),
                ("-", f"subtract {c} from each of {xs}"),
            )
        )
        body = f"def {f}({xs}):\n    return [{a} {op} {c} for {a} in {xs}]\n"
    elif template == 3:
        doc = f"count items of {xs} above {c}"
        body = (
            f"def {f}({xs}):\n    n = 0\n    for {a} in {xs}:\n"
            f"        if {a} > {c}:\n            n += 1\n    return n\n"
        )
    elif template == 4:
        doc = f"{a} times {b} plus {c}"
        body = f"def {f}({a}, {b}):\n    return {a} * {b} + {c}\n"
    elif template == 5:
        doc = f"factorial of {a}"
        body = (
            f"def {f}({a}):\n    r = 1\n    for i in range(2, {a} + 1):\n"
            f"        r *= i\n    return r\n"
        )
    elif template == 6:
        doc = f"even numbers of {xs}"
        body = f"def {f}({xs}):\n    return [{a} for {a} in {xs} if {a} % 2 == 0]\n"
    else:
        doc = f"reverse the string {a}"
        body = f"def {f}({a}):\n    return {a}[::-1]\n"
    return Example("code", f"# {f}: {doc}\n", body)


_GENERATORS = {"arith": _arith, "word": _word, "code": _code}


def generate_example(rng: random.Random, kind: str) -> Example:
    """One example of `kind` drawn from `rng` (any split)."""
    if kind not in _GENERATORS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return _GENERATORS[kind](rng)


def examples(
    split: str, n: int, *, kinds: tuple[str, ...] | None = None, seed: int = 0
) -> list[Example]:
    """The first `n` examples of `split` (deterministic in `seed`).

    With `kinds` None, kinds follow `TRAIN_MIX`; otherwise they cycle through `kinds`.
    Examples are not deduplicated within a split (training streams repeat easy prompts,
    as real data does); use `heldout_prompts` for distinct evaluation prompts.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    stream = iter_examples(split, kinds=kinds, seed=seed)
    return [next(stream) for _ in range(n)]


def iter_examples(split: str, *, kinds: tuple[str, ...] | None = None, seed: int = 0):
    """Endless deterministic stream of the examples of `split` (see `examples`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if kinds is not None:
        if not kinds:
            raise ValueError("kinds must be None or a non-empty tuple of kinds")
        for kind in kinds:
            if kind not in KINDS:
                raise ValueError(f"kinds: each must be one of {KINDS}, got {kind!r}")
    return _stream(split, kinds, seed)


def _stream(split: str, kinds: tuple[str, ...] | None, seed: int):
    rng = random.Random(_SPLIT_SEED[split] * 7919 + seed)
    mix_kinds, mix_weights = zip(*TRAIN_MIX.items())
    count = 0
    while True:
        if kinds is None:
            kind = rng.choices(mix_kinds, mix_weights)[0]
        else:
            kind = kinds[count % len(kinds)]
        example = generate_example(rng, kind)
        if split_of(example.prompt) == split:
            count += 1
            yield example


def _distinct(split: str, kind: str, n: int, seed: int) -> list[Example]:
    rng = random.Random(_SPLIT_SEED[split] * 104729 + seed * 31 + KINDS.index(kind))
    seen, out = set(), []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 1000 * (n + 10):
            raise ValueError(f"could not draw {n} distinct {kind!r} prompts of split {split!r}")
        example = generate_example(rng, kind)
        if split_of(example.prompt) == split and example.prompt not in seen:
            seen.add(example.prompt)
            out.append(example)
    return out


def heldout_prompts(n_per_kind: int = 50, *, seed: int = 0) -> dict[str, list[Example]]:
    """Distinct held-out examples of each kind (never seen in training): for accuracy,
    NFE and benchmark results. ``Example.prompt`` is the prompt, ``.answer`` the reference."""
    return {kind: _distinct("heldout", kind, n_per_kind, seed) for kind in KINDS}


def calibration_prompts(n_per_kind: int = 20, *, seed: int = 0) -> dict[str, list[Example]]:
    """Distinct calibration examples of each kind, disjoint from training and held-out."""
    return {kind: _distinct("calibration", kind, n_per_kind, seed) for kind in KINDS}
