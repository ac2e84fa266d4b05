"""The compile report: its parsers and checks, its own example kernels (whose properties are
known, including two configurations that must be flagged), and every shipped kernel
configuration for sm_90 and sm_80: compiles, zero spills, shared memory within the device
limit, tensor-core instructions where the kernel declares them.

Compiling needs triton in compiled mode, so each report runs once per session in a subprocess
(`python -m spiffy_triton.compile_report`) that writes JSON to a temporary folder; all tests of
this file run in one pytest-xdist group so the session fixtures are built once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import triton
import triton.language as tl

from spiffy_triton import compile_report as cr

TESTS_DIR = Path(__file__).resolve().parent
EXAMPLE_MODULE = "compile_example_kernels"

pytestmark = pytest.mark.xdist_group("compile_report")


def run_report(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the report switches the interpreter off itself
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "spiffy_triton.compile_report", "--out", str(out), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500)
    assert out.exists(), f"no JSON written (exit {result.returncode}):\n{result.stderr[-4000:]}"
    return result, json.loads(out.read_text())


def rows_by_key(report: dict) -> dict[tuple[str, str, str], dict]:
    return {(r["module"], r["config"], r["target"]): r for r in report["rows"]}


# ---- parsers and checks (no compiling) ------------------------------------------------------

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_attn_fwd' for 'sm_90a'
ptxas info    : Function properties for _attn_fwd
    24 bytes stack frame, 16 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 400 bytes cmem[0]
"""


def test_parse_ptxas_log():
    assert cr.parse_ptxas_log(PTXAS_LOG) == {
        "registers": 168,
        "stack_frame": 24,
        "spill_stores": 16,
        "spill_loads": 12,
    }
    with pytest.raises(cr.CompileReportError, match="could not read registers"):
        cr.parse_ptxas_log("ptxas info    : 0 bytes gmem")


def test_count_opcodes_tells_hgmma_from_hmma():
    sass = """
        /*1fd0*/   HGMMA.64x128x16.F32 R24, gdesc[UR4].tnspB, R24 ;
        /*1fe0*/   HMMA.16816.F32 R92, R48.reuse, R60, R92 ;
        /*1ff0*/   HMMA.16816.F32 R80, R48.reuse, R88, R80 ;
        /*2000*/   STL [R1+0x4], R3 ;
        /*2010*/   LDL R3, [R1+0x4] ;
        /*2020*/   LDL.64 R4, [R1+0x8] ;
        /*2030*/   LDS R5, [R2] ;
    """
    assert cr.count_opcodes(sass, "HGMMA") == 1
    assert cr.count_opcodes(sass, "HMMA") == 2
    assert cr.count_opcodes(sass, "LDL") == 2
    assert cr.count_opcodes(sass, "STL") == 1


def good_row(**changes):
    row = {
        "spill_stores": 0,
        "spill_loads": 0,
        "shared_bytes": 1000,
        "shared_limit": 232_448,
        "tensor_cores": True,
        "tc_instructions": 8,
        "tc_opcode": "HGMMA",
    }
    row.update(changes)
    return row


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({}, []),
        ({"spill_loads": 4}, ["spills 0 B stores / 4 B loads"]),
        ({"shared_bytes": 232_449}, ["shared memory 232449 B > limit 232448 B"]),
        ({"shared_bytes": 232_448}, []),
        ({"tc_instructions": 0}, ["no HGMMA instructions (tensor cores expected)"]),
        ({"tc_instructions": 0, "tensor_cores": False}, []),
        ({"error": "CompilationError: boom"}, ["did not compile: CompilationError: boom"]),
    ],
)
def test_problems(changes, expected):
    assert cr.problems(good_row(**changes)) == expected


def example_config(**changes):
    import compile_example_kernels

    config = dict(compile_example_kernels.compile_configs()[0])
    config.update(changes)
    return config


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_warps": 0}, "'num_warps' must be a positive int"),
        ({"tensor_cores": 1}, "'tensor_cores' must be a bool"),
        ({"kernel": print}, "'kernel' must be a @triton.jit function"),
        ({"constexprs": {"BLOCK_M": 64}}, "'constexprs' must give exactly the constexpr"),
        ({"signature": {"a_ptr": "*fp16"}}, "missing \\['b_ptr'"),
        ({"signature": {**example_config()["signature"], "M": "int"}}, "unknown signature types"),
        ({"divisible_by_16": ["a_ptr"]}, "'divisible_by_16' names 'a_ptr'"),
    ],
)
def test_validate_config_names_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        cr.validate_config(example_config(**changes), "mod")
    with pytest.raises(ValueError, match="missing keys \\['tensor_cores'\\]"):
        config = example_config()
        del config["tensor_cores"]
        cr.validate_config(config, "mod")


def test_module_with_kernels_but_no_compile_configs_is_an_error(monkeypatch):
    @triton.jit
    def orphan_kernel(x_ptr, BLOCK: tl.constexpr):
        tl.store(x_ptr + tl.arange(0, BLOCK), 0.0)

    module = types.ModuleType("orphan_kernels")
    module.orphan_kernel = orphan_kernel
    monkeypatch.setitem(sys.modules, "orphan_kernels", module)
    with pytest.raises(cr.CompileReportError, match=r"orphan_kernels defines Triton kernels"):
        cr.discover(["orphan_kernels"])


def test_interpreted_kernels_are_refused_with_a_clear_error():
    if not cr.triton_mode.triton_library_interpreted():
        pytest.skip("this process compiles kernels for the GPU")
    with pytest.raises(cr.CompileReportError, match="run `python -m spiffy_triton.compile_report`"):
        cr.compile_config(example_config(), 90)


def test_cli_rejects_unknown_targets(capsys):
    with pytest.raises(SystemExit):
        cr.main(["--targets", "sm_75"])
    assert "--targets: unknown ['sm_75']" in capsys.readouterr().err


# ---- the report on its own example kernels --------------------------------------------------


@pytest.fixture(scope="session")
def example_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile_report") / "example.json"
    result, report = run_report(out, "--modules", EXAMPLE_MODULE)
    return result, report


@pytest.mark.slow
def test_example_report_measures_known_kernels(example_report):
    result, report = example_report
    rows = rows_by_key(report)
    assert len(rows) == 4 * 2
    for target, opcode in (("sm_90", "HGMMA"), ("sm_80", "HMMA")):
        matmul = rows[(EXAMPLE_MODULE, "matmul_fp16", target)]
        assert matmul["status"] == "ok", matmul
        assert matmul["tc_opcode"] == opcode and matmul["tc_instructions"] > 0
        assert 0 < matmul["registers"] <= 255
        assert 0 < matmul["shared_bytes"] <= matmul["shared_limit"]
        scale = rows[(EXAMPLE_MODULE, "scale_fp32", target)]
        assert scale["status"] == "ok" and scale["tc_instructions"] == 0, scale


@pytest.mark.slow
def test_example_report_flags_bad_configurations(example_report):
    result, report = example_report
    rows = rows_by_key(report)
    for target in ("sm_90", "sm_80"):
        shared = rows[(EXAMPLE_MODULE, "shared_too_big", target)]
        assert shared["shared_bytes"] > shared["shared_limit"]
        assert cr.problems(shared) == [
            f"shared memory {shared['shared_bytes']} B > limit {shared['shared_limit']} B"
        ]
        spilling = rows[(EXAMPLE_MODULE, "registers_too_big", target)]
        assert spilling["spill_stores"] > 0 and spilling["spill_loads"] > 0
        # ptxas's count agrees with the cubin: spilled values go through local memory.
        assert spilling["local_memory_instructions"] > 0
        assert spilling["status"].startswith("spills")
    assert result.returncode == 1
    assert "PROBLEM compile_example_kernels:shared_too_big sm_90" in result.stdout


@pytest.mark.slow
def test_example_report_prints_a_table_and_tool_versions(example_report):
    result, report = example_report
    assert result.stdout.splitlines()[0].split()[:3] == ["config", "target", "warps"]
    assert "compile_example_kernels:matmul_fp16" in result.stdout
    meta = report["meta"]
    assert meta["shared_memory_limit"] == {"sm_90": 232_448, "sm_80": 166_912}
    assert meta["triton"] == triton.__version__
    assert meta["ptxas"]["sm_90"] and meta["cuobjdump"]


# ---- every shipped configuration ------------------------------------------------------------


def shipped_cases():
    """One case per (shipped configuration, target); a discovery failure is a failing case."""
    try:
        found = cr.discover()
    except Exception as error:  # reported by the test, not as a collection error
        return [pytest.param(None, None, f"{type(error).__name__}: {error}", id="discovery")]
    return [
        pytest.param(module, config, target, id=f"{module.rsplit('.', 1)[-1]}:{config}:{target}")
        for module, configs in found.items()
        for config in (c["name"] for c in configs)
        for target in cr.TARGETS
    ]


SHIPPED_CASES = shipped_cases()


@pytest.fixture(scope="session")
def shipped_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile_report") / "shipped.json"
    return run_report(out)[1]


@pytest.mark.slow
@pytest.mark.parametrize("module, config, target", SHIPPED_CASES)
def test_shipped_configuration(shipped_report, module, config, target):
    assert module is not None, f"kernel modules could not be discovered: {target}"
    row = rows_by_key(shipped_report).get((module, config, target))
    assert row is not None, f"{module}:{config} {target} missing from the report"
    assert "error" not in row, row["error"]
    where = f"{config} on {target}"
    assert row["spill_stores"] == 0 and row["spill_loads"] == 0, (
        f"{where}: spills {row['spill_stores']} B stores / {row['spill_loads']} B loads "
        f"({row['registers']} registers, {row['warps']} warps)"
    )
    assert row["shared_bytes"] <= row["shared_limit"], (
        f"{where}: {row['shared_bytes']} B of shared memory > {row['shared_limit']} B"
    )
    if row["tensor_cores"]:
        assert row["tc_instructions"] > 0, f"{where}: no {row['tc_opcode']} instructions"


def test_half_precision_attention_configurations_declare_tensor_cores():
    """The attention kernels must run QK^T and PV on tensor cores for fp16 / bf16 inputs
    (declaring tensor_cores=False would silently skip the instruction check above)."""
    module_name = f"{cr.KERNELS_PACKAGE}.graph_attention"
    found = cr.discover([module_name])[module_name]
    half = [c for c in found if {"*fp16", "*bf16"} & set(c["signature"].values())]
    assert half, "graph_attention ships no fp16 / bf16 configuration"
    assert [c["name"] for c in half if not c["tensor_cores"]] == []


# ---- the supported triton range (setup.py): the oldest version is proven too ----------------

REPO = TESTS_DIR.parent
OLDEST_REPORT = REPO / "benchmarks" / "results" / "compile_report_triton3.6.0.json"
RANGE_PYTHON = os.environ.get("SPIFFY_TRITON_RANGE_PYTHON")


def shipped_configs() -> set[tuple[str, str]]:
    return {(m, c["name"]) for m, configs in cr.discover().items() for c in configs}


def check_report_covers_the_shipped_configs(report: dict) -> None:
    rows = report["rows"]
    assert {(r["module"], r["config"]) for r in rows} == shipped_configs()
    assert {r["target"] for r in rows} == {"sm_90", "sm_80"}
    failed = [(r["config"], r["target"], r["status"]) for r in rows if r["status"] != "ok"]
    assert not failed, failed


def test_oldest_supported_triton_report_is_current():
    """The committed triton 3.6 report (scripts/check_triton_range.sh) holds every shipped
    configuration, all ok: adding or renaming a configuration means rerunning it."""
    report = json.loads(OLDEST_REPORT.read_text())
    assert report["meta"]["triton"] == "3.6.0"
    assert "triton>=3.6," in (REPO / "setup.py").read_text()
    check_report_covers_the_shipped_configs(report)


@pytest.mark.slow
@pytest.mark.skipif(
    not RANGE_PYTHON,
    reason="SPIFFY_TRITON_RANGE_PYTHON is not set (a python with another triton of the "
    "supported range; scripts/check_triton_range.sh builds one)",
)
def test_compile_report_under_another_triton_of_the_range(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)  # the checkout, not an install
    out = tmp_path / "report.json"
    command = [RANGE_PYTHON, "-m", "spiffy_triton.compile_report", "--out", str(out)]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    major, minor = (int(x) for x in report["meta"]["triton"].split(".")[:2])
    assert (3, 6) <= (major, minor) < (3, 10), report["meta"]["triton"]
    check_report_covers_the_shipped_configs(report)
