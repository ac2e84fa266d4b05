"""Every kernel parity case, on any device: one list shared by pytest and a standalone runner.

pytest parametrizes each case over the devices ``cpu`` (kernels in the Triton interpreter) and
``cuda`` (compiled kernels), skipping with a reason where a device is not usable
(tests/test_graph_attention.py, tests/test_marginals.py, tests/test_end_to_end_parity.py). The
runner executes the same cases without pytest (a bare GPU box may not have it):

    python tests/parity_cases.py --device cuda            # every case on the GPU
    python tests/parity_cases.py --device cpu --small     # the smoke subset in the interpreter
    python tests/parity_cases.py --list

It prints one line per case and 'N passed, N failed, N skipped', writes JSON after every case
(--out), and exits 1 when a case failed, 2 when the device is not there.
"""

from __future__ import annotations

# isort: off
import spiffy_triton  # noqa: F401  (first: decides the interpreter mode before triton loads)

# isort: on
import argparse
import functools
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import parity_attention as attention
import parity_marginals as marginals
import parity_ops as ops
import torch
from utils import interpreter_active

GROUPS = ("attention", "marginals", "ops", "end_to_end")


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    fn: Callable
    args: tuple = ()
    cuda_only: bool = False  # too large for the interpreter on a CPU
    slow: bool = False  # pytest marks it slow (it still runs in CI)
    smoke: bool = False  # part of the --small subset
    kwargs: dict = field(default_factory=dict)

    def run(self, device: str) -> None:
        self.fn(*self.args, device=device, **self.kwargs)


def device_unavailable(device: str) -> str | None:
    """Why kernels cannot run on `device` in this process (None: they can)."""
    if device == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device"
        if interpreter_active():
            return "TRITON_INTERPRET=1: kernels run in the interpreter, not compiled"
        return None
    if not interpreter_active():
        return "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1), which is off here"
    return None


def skip_reason(case: Case, device: str) -> str | None:
    if case.cuda_only and device != "cuda":
        return "too slow for the Triton interpreter on a CPU: runs on CUDA only"
    return device_unavailable(device)


# ---- end to end: the bundled model, Triton backend on `device` vs PyTorch backend on CPU ----

# Two blocks on a GPU; one block of 8 in the interpreter (about 15 s per decode pair on a CPU).
E2E_GEN_LENGTH = {"cuda": 16, "cpu": 8}
E2E_BLOCK_LENGTH = 8


@functools.cache
def _bundled(backend: str, device: str):
    from spiffy_triton.models import load_model

    return load_model("tiny", dtype=torch.float32, backend=backend).to(device)


@functools.cache
def _e2e_prompt() -> torch.Tensor:
    from spiffy_triton.training.tinydata import heldout_prompts

    tokenizer = _bundled("torch", "cpu").tokenizer
    return torch.tensor([tokenizer.encode(heldout_prompts(1)["arith"][0].prompt)])


def decode_case(graph: int | None, cache: str | None, temperature: float, *, device: str):
    """Vanilla (graph None) or Spiffy decoding with the Triton kernels on `device` gives the
    tokens and steps of the PyTorch backend on CPU."""
    from spiffy_triton.decoding import generate

    def decode(backend, on):
        return generate(
            _bundled(backend, on),
            _e2e_prompt().to(on),
            gen_length=E2E_GEN_LENGTH[device],
            block_length=E2E_BLOCK_LENGTH,
            cache=cache,
            temperature=temperature,
            seed=7,
            graph=graph,
            max_drafts=None,
            backend=backend,
        )

    expected, actual = decode("torch", "cpu"), decode("triton", device)
    differ = (actual.tokens.cpu() != expected.tokens).nonzero()[:, 1].tolist()
    assert not differ, f"tokens differ from the CPU PyTorch backend at positions {differ}"
    assert actual.steps == expected.steps and actual.nfe == expected.nfe


# ---- the list ------------------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _attention_cases() -> list[Case]:
    A = attention
    cases = [
        Case("attention", f"random-{seed}", A.random_case, (seed,), smoke=seed < 2)
        for seed in range(A.NUM_RANDOM_CASES)
    ]
    cases += [Case("attention", f"small_tiles-{s}", A.small_tiles_case, (s,)) for s in range(24)]
    for head_dim in (64, 128):
        for dtype in A.DTYPES:
            name = f"head_dim-{head_dim}-{_dtype_name(dtype)}"
            cases.append(Case("attention", name, A.head_dim_case, (head_dim, dtype)))
    for cached in (False, True):
        for drafts in range(17):
            name = f"spiffy-D{drafts}-{'cached' if cached else 'uncached'}"
            cases.append(Case("attention", name, A.spiffy_case, (drafts, cached)))
    for context, drafts in ((1024, 0), (1024, 8), (4096, 16)):
        name, args = f"verify_shape-C{context}-D{drafts}", (context, drafts)
        cases.append(Case("attention", name, A.verify_shape_case, args, cuda_only=True))
    for blocks in ((4, 4, 4, 4), (32, 32, 32), (5, 17, 3, 40), (1,), (70, 0, 9)):
        name = "block_causal-" + "_".join(map(str, blocks))
        cases.append(Case("attention", name, A.block_causal_case, (blocks,)))
    for context, committed, block_len, cached in (((23, 16), 0, 16, False), (40, 5, 16, True)):
        name = f"simsd-c{committed}-L{block_len}-{'cached' if cached else 'uncached'}"
        args = (context, committed, block_len, cached)
        cases.append(Case("attention", name, A.simsd_case, args))
    for backend in ("torch", "triton"):
        cases.append(Case("attention", f"masked_rows-{backend}", A.masked_rows_case, (backend,)))
        cases.append(Case("attention", f"unseen_keys-{backend}", A.unseen_keys_case, (backend,)))
        for dtype in A.DTYPES:
            for cached in (False, True):
                mode = "cached" if cached else "uncached"
                name = f"packing-{backend}-{_dtype_name(dtype)}-{mode}"
                smoke = backend == "triton" and dtype == torch.bfloat16 and cached
                args = (backend, dtype, cached)
                cases.append(Case("attention", name, A.packing_invariance_case, args, smoke=smoke))
    return cases


def _marginals_cases() -> list[Case]:
    M = marginals
    cases = []
    for dtype in M.DTYPES:
        for temperature in (0.0, 0.7):
            name = f"parity-{_dtype_name(dtype)}-T{temperature}"
            smoke = dtype == torch.bfloat16 and temperature > 0
            cases.append(Case("marginals", name, M.parity_case, (dtype, temperature), smoke=smoke))
    for vocab in M.LARGE_VOCABS:
        for rows in M.LARGE_ROWS:
            for temperature in (0.0, 0.7):
                # one row of each vocabulary at T = 0 and T > 0 also runs in the interpreter,
                # with the default split configuration (31 / 37 splits: the combine kernel)
                in_interpreter = rows == 1
                cases.append(
                    Case(
                        "marginals",
                        f"large-V{vocab}-rows{rows}-T{temperature}",
                        M.large_vocab_case,
                        (vocab, rows, temperature),
                        cuda_only=not in_interpreter,
                        slow=in_interpreter,
                    )
                )
    cases.append(Case("marginals", "largest_vocab", M.largest_vocab_case, slow=True))
    cases.append(Case("marginals", "strided_vocabulary", M.strided_vocabulary_case))
    for temperature in (0.0, 0.5):
        name = f"vocabulary_split-T{temperature}"
        cases.append(Case("marginals", name, M.vocabulary_split_case, (temperature,)))
    cases.append(Case("marginals", "philox_stream", M.philox_stream_case, smoke=True))
    cases.append(Case("marginals", "row_packing", M.row_packing_case))
    cases.append(Case("marginals", "special_rows", M.special_rows_case))
    for dtype in (torch.float32, torch.float16, torch.float64):
        name = f"rank_positions-{_dtype_name(dtype)}"
        cases.append(Case("marginals", name, M.rank_positions_case, (dtype,)))
    return cases


def _ops_cases() -> list[Case]:
    cases = []
    for dtype in (torch.float16, torch.float32):
        for cached in (False, True):
            name = f"triton_op_attention-{_dtype_name(dtype)}-{'cached' if cached else 'nocache'}"
            smoke = dtype == torch.float32 and cached
            cases.append(Case("ops", name, ops.attention_op_case, (dtype, cached), smoke=smoke))
    for temperature in (0.0, 0.7):
        name = f"triton_op_marginals-T{temperature}"
        cases.append(
            Case("ops", name, ops.marginals_op_case, (temperature,), smoke=temperature > 0)
        )
    cases.append(Case("ops", "compiled_verify", ops.compiled_verify_case, cuda_only=True))
    return cases


def _end_to_end_cases() -> list[Case]:
    cases = []
    for graph in (None, 8):
        for cache in (None, "dual"):
            for temperature in (0.0, 0.7):
                name = (
                    f"decode-{'spiffy_D8' if graph else 'vanilla'}-{cache or 'nocache'}"
                    f"-T{temperature}"
                )
                smoke = graph is not None and cache == "dual" and temperature > 0
                # the interpreter runs two of the eight: Spiffy dual T > 0, vanilla no cache T = 0
                on_cpu = smoke or (graph is None and cache is None and temperature == 0)
                args = (graph, cache, temperature)
                cases.append(
                    Case(
                        "end_to_end",
                        name,
                        decode_case,
                        args,
                        cuda_only=not on_cpu,
                        slow=True,
                        smoke=smoke,
                    )
                )
    return cases


@functools.cache
def all_cases() -> tuple[Case, ...]:
    cases = _attention_cases() + _marginals_cases() + _ops_cases() + _end_to_end_cases()
    names = [f"{c.group}/{c.name}" for c in cases]
    assert len(set(names)) == len(names), "case names repeat"
    return tuple(cases)


def cases_of(group: str) -> list[Case]:
    return [c for c in all_cases() if c.group == group]


# ---- the standalone runner -----------------------------------------------------------------


def run_one(case: Case, device: str) -> dict:
    row = {"group": case.group, "case": case.name, "device": device}
    reason = skip_reason(case, device)
    if reason:
        return {**row, "status": "skipped", "reason": reason}
    start = time.perf_counter()
    try:
        case.run(device)
        row["status"] = "passed"
    except Exception as error:  # a failure is reported with its message, the run goes on
        row["status"] = "failed"
        last = traceback.extract_tb(error.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        row["reason"] = f"{type(error).__name__}: {error} ({where})"
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--small", action="store_true", help="the smoke subset only")
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated {GROUPS}")
    parser.add_argument("--out", type=Path, help="JSON file, rewritten after every case")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument(
        "--resume",
        type=Path,
        help="a previous run's JSON: keep its passed rows, run only the other cases",
    )
    args = parser.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if device_unavailable("cuda") is None else "cpu"
    groups = args.groups.split(",")
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"--groups: unknown {unknown}; choose from {GROUPS}")
    selected = [c for c in all_cases() if c.group in groups and (c.smoke or not args.small)]
    # Most telling first (the smoke set, the end-to-end decodes, the real-size shapes), so a
    # run stopped by a time limit (each new shape compiles on first use) has covered them.
    selected.sort(key=lambda c: (not c.smoke, c.group != "end_to_end", not c.cuda_only))
    if args.list:
        print("\n".join(f"{c.group}/{c.name}" for c in selected))
        return 0
    reason = device_unavailable(device)
    if reason:
        print(f"parity: cannot run on {device}: {reason}")
        return 2
    if interpreter_active():
        import bf16_shim

        bf16_shim.install()  # as tests/conftest.py: bf16 arithmetic in fp32 in the interpreter
    results = []
    if args.resume is not None and args.resume.exists():
        earlier = json.loads(args.resume.read_text())
        if earlier.get("device") != device:
            ran_on = earlier.get("device")
            parser.error(f"--resume: {args.resume} was run on {ran_on}, not {device}")
        results = [r for r in earlier["rows"] if r["status"] == "passed"]
        done = {(r["group"], r["case"]) for r in results}
        selected = [c for c in selected if (c.group, c.name) not in done]
        print(f"parity: {len(results)} passed cases kept from {args.resume}", flush=True)

    def write() -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"device": device, "rows": results}, indent=1) + "\n")

    write()
    for case in selected:
        row = run_one(case, device)
        results.append(row)
        detail = f" ({row['reason']})" if "reason" in row else ""
        print(f"{row['status'].upper()} {case.group}/{case.name}{detail}", flush=True)
        write()
    counts = {s: sum(r["status"] == s for r in results) for s in ("passed", "failed", "skipped")}
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
