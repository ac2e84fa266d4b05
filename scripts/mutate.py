"""Apply each mutant of tests/mutations.py to a copy of the repository, run only its tests,
print the survivors (mutants whose tests all passed: missing tests).

    python scripts/mutate.py                 # every mutant
    python scripts/mutate.py walk kernel     # mutants whose name contains one of the words
    python scripts/mutate.py --list          # names, modules and tests, nothing run

The working tree is never touched: it is copied once (no .git, caches or virtual
environments) to a temporary directory; each mutant is applied there, its tests run with
``pytest -x -q -n 0`` (stop at the first failure: one kill is enough), and the file is restored.
Modules are resolved with importlib in this checkout, so an entry follows a file that moves
while its import name stays. Exit status 1 when a mutant survives or cannot be applied.
Not part of CI: docs/TESTING.md gives the time it takes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info", "build"
)


def load_mutants():
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT))
    from mutations import MUTANTS

    return MUTANTS


def module_file(module: str) -> Path:
    """The module's source file, relative to the repository root."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LookupError(f"module {module} not found")
    return Path(spec.origin).resolve().relative_to(ROOT)


def apply(text: str, replacements) -> str:
    for old, new in replacements:
        count = text.count(old)
        if count != 1:
            raise LookupError(f"{old!r} occurs {count} times (needs exactly one)")
        text = text.replace(old, new)
    return text


def run_mutant(copy: Path, mutant, timeout: float) -> tuple[str, float, str]:
    """('killed' | 'survived' | 'error', seconds, detail)."""
    started = time.perf_counter()
    try:
        relative = module_file(mutant.module)
    except (LookupError, ModuleNotFoundError, ValueError) as error:
        return "error", 0.0, str(error)
    path = copy / relative
    original = path.read_text()
    try:
        mutated = apply(original, mutant.replacements)
    except LookupError as error:
        return "error", 0.0, f"{relative}: {error}"
    path.write_text(mutated)
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only contend
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider"]
    command += list(mutant.tests)
    try:
        done = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
        )
        code = done.returncode
        tail = (done.stdout.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        code, tail = None, f"timed out after {timeout:.0f} s"
    finally:
        path.write_text(original)
    seconds = time.perf_counter() - started
    if code == 1:
        return "killed", seconds, tail
    if code == 0:
        return "survived", seconds, tail
    # 2-5: interrupted, internal error, usage error, nothing collected: not a kill
    return "error", seconds, f"pytest exit {code}: {tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("words", nargs="*", help="run only mutants whose name contains one")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    args = parser.parse_args(argv)
    mutants = [m for m in load_mutants() if not args.words or any(w in m.name for w in args.words)]
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.module} -> {' '.join(m.tests)}\n    {m.why}")
        return 0
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="spiffy-mutate-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=IGNORE)
        for m in mutants:
            status, seconds, detail = run_mutant(copy, m, args.timeout)
            results.append((m, status))
            print(f"{status:8s} {seconds:6.1f}s  {m.name}  ({detail})", flush=True)
    total = time.perf_counter() - started
    survivors = [m.name for m, s in results if s == "survived"]
    errors = [m.name for m, s in results if s == "error"]
    killed = sum(s == "killed" for _, s in results)
    print(f"\n{len(results)} mutants in {total:.0f} s: {killed} killed", end="")
    print(f", {len(survivors)} survived, {len(errors)} errors")
    if survivors:
        print("survivors (missing tests): " + ", ".join(survivors))
    if errors:
        print("not applied or not run: " + ", ".join(errors))
    return 1 if survivors or errors else 0


if __name__ == "__main__":
    sys.exit(main())
