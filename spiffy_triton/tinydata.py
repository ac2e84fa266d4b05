"""Generated data of the bundled small model: worked arithmetic and short Python code.

Three kinds of example, each a (prompt, answer) pair of plain text:

- ``"arith"``: an expression with two or three operations, answered step by step in the
  order of evaluation, ending with ``#### <value>``;
- ``"word"``: a short word problem with the same kind of worked answer;
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
# Mix of kinds in training (and the default for `examples`): mostly arithmetic.
TRAIN_MIX = {"arith": 0.4, "word": 0.3, "code": 0.3}
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


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _operand(rng: random.Random, op_after: str | None, op_before: str | None) -> int:
    # Factors of a product stay small so that every intermediate stays at most 3 digits.
    if "*" in (op_after, op_before):
        return rng.randint(2, 12)
    return rng.randint(1, 99)


def _evaluate_steps(numbers: list[int], ops: list[str]) -> tuple[list[str], int]:
    """Worked steps: products first (left to right), then sums and differences."""
    numbers, ops = list(numbers), list(ops)
    steps = []
    for wanted in ("*", "+-"):
        i = 0
        while i < len(ops):
            if ops[i] in wanted:
                value = _apply(numbers[i], ops[i], numbers[i + 1])
                steps.append(f"{numbers[i]}{ops[i]}{numbers[i + 1]}={value}")
                numbers[i : i + 2] = [value]
                del ops[i]
            else:
                i += 1
    return steps, numbers[0]


def _arith(rng: random.Random) -> Example:
    while True:
        n_ops = rng.choice((2, 2, 3))
        ops = [rng.choice("++--*") for _ in range(n_ops)]
        numbers = [
            _operand(rng, ops[i] if i < n_ops else None, ops[i - 1] if i > 0 else None)
            for i in range(n_ops + 1)
        ]
        steps, value = _evaluate_steps(numbers, ops)
        # Non-negative intermediates only: the model never has to learn negative numbers.
        if all(int(s.split("=")[1]) >= 0 for s in steps):
            break
    expression = "".join(f"{n}{op}" for n, op in zip(numbers, ops)) + str(numbers[-1])
    return Example("arith", f"Q: {expression}=?\nA: ", "; ".join(steps) + f". #### {value}")


_NAMES = ("Ann", "Bob", "Cal", "Dee", "Eve", "Finn", "Gus", "Ivy", "Joe", "Kim", "Leo", "Mia")
_ITEMS = ("apples", "pens", "cards", "books", "eggs", "coins", "shells", "rocks", "stamps")
_BOXES = ("bags", "boxes", "packs", "jars", "rows")


def _word(rng: random.Random) -> Example:
    name, item, box = rng.choice(_NAMES), rng.choice(_ITEMS), rng.choice(_BOXES)
    template = rng.randrange(4)
    if template == 0:
        a, n, m = rng.randint(1, 60), rng.randint(2, 9), rng.randint(2, 12)
        prompt = f"{name} has {a} {item} and buys {n} {box} of {m}. How many {item} now?"
        steps, value = _evaluate_steps([a, n, m], ["+", "*"])
    elif template == 1:
        a = rng.randint(20, 99)
        b, c = rng.randint(1, a), rng.randint(1, 40)
        prompt = f"{name} had {a} {item}, gave away {b}, then found {c}. How many now?"
        steps, value = _evaluate_steps([a, b, c], ["-", "+"])
    elif template == 2:
        n, m, a = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 50)
        prompt = f"{name} fills {n} {box} with {m} {item} each and has {a} more. Total?"
        steps, value = _evaluate_steps([n, m, a], ["*", "+"])
    else:
        n, m = rng.randint(2, 9), rng.randint(2, 12)
        b = rng.randint(1, n * m)
        prompt = f"{name} has {n} {box} of {m} {item} and loses {b}. How many are left?"
        steps, value = _evaluate_steps([n, m, b], ["*", "-"])
    return Example("word", f"Q: {prompt}\nA: ", "; ".join(steps) + f". #### {value}")


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
