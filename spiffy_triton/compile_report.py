"""Compile every shipped Triton kernel configuration for sm_90 and sm_80, without a GPU.

For each configuration returned by ``compile_configs()`` of a module in
``spiffy_triton.kernels`` (the contract is in docs/ARCHITECTURE.md), and each target, this

- compiles it with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``;
- runs the ptxas bundled with Triton with ``-v`` on the PTX (the flags Triton itself uses)
  and reads registers, stack frame and spill stores / loads;
- reads the shared memory the kernel needs from the compiled metadata (the compiler does not
  check it against the device; a launch would fail) and compares it with the device limit;
- disassembles the cubin with the bundled ``cuobjdump -sass`` and counts tensor-core
  instructions (``HGMMA`` on sm_90, ``HMMA`` on sm_80).

It prints a table and writes JSON (``compile_s`` is near zero when Triton's cache already
held the kernel). Run it as a program in its own process::

    python -m spiffy_triton.compile_report [--out PATH] [--targets sm_90,sm_80] [--jobs N]

Kernels compile for a GPU only when triton was imported with ``TRITON_INTERPRET`` off, so
`main` switches the interpreter off before anything imports triton, and the library functions
refuse, with a clear error, kernels that were defined in interpreter mode.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import importlib
import json
import multiprocessing
import os
import pkgutil
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import triton_mode

TARGETS = {"sm_90": 90, "sm_80": 80}
# Maximum dynamic shared memory per block (opt-in), bytes: H100 / A100.
SHARED_MEMORY_LIMIT = {90: 232_448, 80: 166_912}
TENSOR_CORE_OPCODE = {90: "HGMMA", 80: "HMMA"}
KERNELS_PACKAGE = "spiffy_triton.kernels"
DEFAULT_OUT = Path("benchmarks") / "results" / "compile_report.json"
CONFIG_KEYS = (
    "name",
    "kernel",
    "signature",
    "constexprs",
    "num_warps",
    "num_stages",
    "tensor_cores",
)
SIGNATURE_TYPES = re.compile(
    r"^(\*?(fp16|bf16|fp32|fp64|i1|i8|i16|i32|i64|u8|u16|u32|u64)|constexpr)$"
)
COLUMNS = (
    "config",
    "target",
    "warps",
    "stages",
    "registers",
    "spill_stores",
    "spill_loads",
    "shared_bytes",
    "shared_limit",
    "tc_instructions",
    "tensor_cores",
    "compile_s",
    "status",
)


class CompileReportError(RuntimeError):
    pass


# ---- discovery and validation ---------------------------------------------------------------


def kernel_modules(package: str = KERNELS_PACKAGE) -> list[str]:
    """Every module of the kernels package (imported to look for compile_configs)."""
    pkg = importlib.import_module(package)
    return [f"{package}.{info.name}" for info in pkgutil.iter_modules(pkg.__path__)]


def _is_triton_kernel(obj) -> bool:
    kind = type(obj).__name__
    return kind in ("JITFunction", "InterpretedFunction") and type(obj).__module__.startswith(
        "triton."
    )


def validate_config(config: dict, where: str) -> None:
    """Raise a ValueError naming the field when a compile config breaks the contract."""
    if not isinstance(config, dict):
        raise ValueError(f"{where}: a compile config must be a dict, got {type(config).__name__}")
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise ValueError(f"{where}: compile config is missing keys {missing}")
    where = f"{where} config {config['name']!r}"
    kernel = config["kernel"]
    if not _is_triton_kernel(kernel):
        raise ValueError(f"{where}: 'kernel' must be a @triton.jit function, got {kernel!r}")
    signature, constexprs = config["signature"], config["constexprs"]
    missing = [a for a in kernel.arg_names if a not in signature]
    extra = [a for a in signature if a not in kernel.arg_names]
    if missing or extra:
        raise ValueError(
            f"{where}: 'signature' must give a type for every argument of {kernel.__name__}; "
            f"missing {missing}, not arguments {extra}"
        )
    bad_types = {a: t for a, t in signature.items() if not SIGNATURE_TYPES.match(str(t))}
    if bad_types:
        raise ValueError(f"{where}: unknown signature types {bad_types}")
    declared = {a for a, t in signature.items() if t == "constexpr"}
    if set(constexprs) != declared:
        raise ValueError(
            f"{where}: 'constexprs' must give exactly the constexpr arguments {sorted(declared)}, "
            f"got {sorted(constexprs)}"
        )
    for key in ("num_warps", "num_stages"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"{where}: {key!r} must be a positive int, got {config[key]!r}")
    if not isinstance(config["tensor_cores"], bool):
        raise ValueError(f"{where}: 'tensor_cores' must be a bool, got {config['tensor_cores']!r}")
    for arg in config.get("divisible_by_16", ()):
        if signature.get(arg, "")[:1] not in ("i", "u"):
            raise ValueError(f"{where}: 'divisible_by_16' names {arg!r}, not an integer argument")


def discover(modules: list[str] | None = None) -> dict[str, list[dict]]:
    """`{module name: compile configs}` for every kernel module (validated).

    A module that defines Triton kernels but no ``compile_configs`` is an error: every shipped
    kernel must be checked.
    """
    found: dict[str, list[dict]] = {}
    for module_name in modules if modules is not None else kernel_modules():
        module = importlib.import_module(module_name)
        provider = getattr(module, "compile_configs", None)
        if provider is None:
            kernels = [n for n, v in vars(module).items() if _is_triton_kernel(v)]
            if kernels:
                raise CompileReportError(
                    f"{module_name} defines Triton kernels {kernels} but no compile_configs(); "
                    "add it (docs/ARCHITECTURE.md, 'Kernel files')"
                )
            continue
        configs = list(provider())
        names = [c.get("name") if isinstance(c, dict) else None for c in configs]
        for config in configs:
            validate_config(config, module_name)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"{module_name}: compile config names repeat: {duplicates}")
        found[module_name] = configs
    return found


# ---- compiling one configuration ------------------------------------------------------------


def parse_ptxas_log(log: str) -> dict:
    """Registers, stack frame and spill bytes of the entry function from `ptxas -v` output."""
    registers = re.search(r"Used (\d+) registers", log)
    frame = re.search(
        r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log
    )
    if registers is None or frame is None:
        raise CompileReportError(f"could not read registers / spills from ptxas -v:\n{log}")
    return {
        "registers": int(registers.group(1)),
        "stack_frame": int(frame.group(1)),
        "spill_stores": int(frame.group(2)),
        "spill_loads": int(frame.group(3)),
    }


def count_opcodes(sass: str, opcode: str) -> int:
    """Instructions of `opcode` (any variant, e.g. ``HGMMA.64x128x16.F32``) in a SASS listing."""
    return len(re.findall(rf"\b{opcode}(?:\.|\s)", sass))


def _run_tool(command: list[str], what: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise CompileReportError(f"{what} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def _ptxas_stats(ptx: str, capability: int, metadata) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptxas = get_ptxas(capability).path
    flags = ["-lineinfo", "-v", "--regAllocOptLevel=2"]  # as Triton's make_cubin
    if not metadata.enable_fp_fusion:
        flags.append("--fmad=false")
    if metadata.ptx_options:
        flags += metadata.ptx_options.split(" ")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        command = [ptxas, *flags, f"--gpu-name={sm_arch_from_capability(capability)}"]
        result = _run_tool([*command, str(source), "-o", str(source.with_suffix(".o"))], "ptxas")
    return parse_ptxas_log(result.stderr + result.stdout)


def _sass(cubin: bytes) -> str:
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return _run_tool([knobs.nvidia.cuobjdump.path, "-sass", str(path)], "cuobjdump").stdout


def _require_compiled_mode(kernel) -> None:
    if type(kernel).__name__ == "InterpretedFunction":
        raise CompileReportError(
            "kernels in this process were defined in Triton interpreter mode and cannot be "
            "compiled for a GPU; run `python -m spiffy_triton.compile_report` in a fresh "
            "process (it switches the interpreter off before importing triton)"
        )


def compile_config(config: dict, capability: int) -> dict:
    """Compile one configuration for `sm_<capability>` and measure it (one report row)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = config["kernel"]
    _require_compiled_mode(kernel)
    signature = dict(config["signature"])
    # Torch allocations are 16-byte aligned and the JIT specializes on that (and on integer
    # arguments the launcher guarantees to be multiples of 16): compile what a launch runs.
    aligned = [a for a, t in signature.items() if t.startswith("*")]
    aligned += list(config.get("divisible_by_16", ()))
    attrs = {(kernel.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    source = ASTSource(kernel, signature, constexprs=dict(config["constexprs"]), attrs=attrs)
    options = {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
    start = time.perf_counter()
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    compile_s = time.perf_counter() - start
    opcode = TENSOR_CORE_OPCODE[capability]
    sass = _sass(compiled.asm["cubin"])
    row = {
        "target": f"sm_{capability}",
        "kernel": kernel.__name__,
        "warps": config["num_warps"],
        "stages": config["num_stages"],
        **_ptxas_stats(compiled.asm["ptx"], capability, compiled.metadata),
        "shared_bytes": int(compiled.metadata.shared),
        "shared_limit": SHARED_MEMORY_LIMIT[capability],
        "tc_opcode": opcode,
        "tc_instructions": count_opcodes(sass, opcode),
        "local_memory_instructions": count_opcodes(sass, "LDL") + count_opcodes(sass, "STL"),
        "tensor_cores": config["tensor_cores"],
        "compile_s": round(compile_s, 3),
    }
    return row


def problems(row: dict) -> list[str]:
    """What is wrong with one report row (empty: the configuration is fine)."""
    if row.get("error"):
        return [f"did not compile: {row['error']}"]
    found = []
    if row["spill_stores"] or row["spill_loads"]:
        found.append(f"spills {row['spill_stores']} B stores / {row['spill_loads']} B loads")
    if row["shared_bytes"] > row["shared_limit"]:
        found.append(f"shared memory {row['shared_bytes']} B > limit {row['shared_limit']} B")
    if row["tensor_cores"] and row["tc_instructions"] == 0:
        found.append(f"no {row['tc_opcode']} instructions (tensor cores expected)")
    return found


# ---- the whole report -----------------------------------------------------------------------


@functools.cache
def _configs_by_name(module_name: str) -> dict[str, dict]:
    return {c["name"]: c for c in discover([module_name])[module_name]}


def _compile_task(task: tuple[str, str, int]) -> dict:
    module_name, config_name, capability = task
    row = {"module": module_name, "config": config_name}
    try:
        row.update(compile_config(_configs_by_name(module_name)[config_name], capability))
    except Exception as error:  # reported per row; the report goes on with the others
        row.update(target=f"sm_{capability}", error=f"{type(error).__name__}: {error}")
    row["status"] = "; ".join(problems(row)) or "ok"
    return row


def _worker_init() -> None:
    os.environ["TRITON_INTERPRET"] = "0"


def build_report(
    modules: list[str] | None = None, targets=(90, 80), jobs: int | None = None
) -> list[dict]:
    """Compile every configuration of `modules` for every target; one row each."""
    found = discover(modules)
    tasks = [(m, c["name"], cc) for m, configs in found.items() for c in configs for cc in targets]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    if jobs == 1:
        return [_compile_task(task) for task in tasks]
    # spawn: fresh workers that import triton in compiled mode and share no state.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, context, initializer=_worker_init) as pool:
        return list(pool.map(_compile_task, tasks))


def tool_versions() -> dict:
    import triton
    from triton import knobs
    from triton.backends.nvidia.compiler import get_ptxas

    return {
        "triton": triton.__version__,
        "ptxas": {f"sm_{cc}": get_ptxas(cc).version for cc in (80, 90)},
        "cuobjdump": knobs.nvidia.cuobjdump.version,
    }


def format_table(rows: list[dict]) -> str:
    def cell(row, column):
        if column == "config":
            return f"{row['module'].rsplit('.', 1)[-1]}:{row['config']}"
        value = row.get(column)
        return "" if value is None else str(value)

    cells = [[cell(r, c) for c in COLUMNS] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def write_json(rows: list[dict], out: Path, meta: dict) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "compile_report",
        "machine": {"python": platform.python_version(), "machine": platform.machine()},
        "meta": meta,
        "rows": rows,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spiffy_triton.compile_report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument(
        "--targets", default="sm_90,sm_80", help=f"comma-separated, from {sorted(TARGETS)}"
    )
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile processes")
    parser.add_argument(
        "--modules",
        default=None,
        help=f"comma-separated modules with compile_configs() (default: all of {KERNELS_PACKAGE})",
    )
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets.split(",") if t not in TARGETS]
    if unknown:
        parser.error(f"--targets: unknown {unknown}; choose from {sorted(TARGETS)}")
    if not triton_mode.triton_available():
        parser.error("needs the `triton` package (pip install triton); no GPU is needed")
    if triton_mode.triton_library_interpreted():
        parser.error("triton is already imported in interpreter mode; run in a fresh process")
    os.environ["TRITON_INTERPRET"] = "0"  # before the kernel modules import triton
    targets = [TARGETS[t] for t in args.targets.split(",")]
    modules = args.modules.split(",") if args.modules else None

    start = time.perf_counter()
    rows = build_report(modules, targets, args.jobs)
    wall_s = time.perf_counter() - start
    print(format_table(rows))
    meta = {
        "targets": [f"sm_{cc}" for cc in targets],
        "shared_memory_limit": {f"sm_{cc}": SHARED_MEMORY_LIMIT[cc] for cc in targets},
        "wall_s": round(wall_s, 2),
        **tool_versions(),
    }
    path = write_json(rows, args.out, meta)
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"{len(rows)} compiles in {wall_s:.1f} s, {len(failed)} with problems; wrote {path}")
    for row in failed:
        print(f"PROBLEM {row['module']}:{row['config']} {row['target']}: {row['status']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
