"""Backend dispatch: every rule of `backend=` and SPIFFY_TRITON_BACKEND, and the clear errors
for unknown names, devices Triton cannot run on, the interpreter switched on too late, and a
missing triton package (the last three in fresh subprocesses, since they depend on import
order)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from utils import interpreter_active

import spiffy_triton
from spiffy_triton import SegmentLayout, dispatch, triton_mode


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor that reports a CUDA device: dispatch only looks at `.device`."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def cpu_tensor():
    return torch.zeros(2, 3)


def cuda_tensor():
    return torch.zeros(2, 3).as_subclass(FakeCudaTensor)


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)


# ---- resolution rules -----------------------------------------------------------------------


def test_auto_picks_torch_for_cpu_and_triton_for_cuda():
    assert dispatch.resolve_backend("auto", [cpu_tensor()], "op") == "torch"
    assert dispatch.resolve_backend("auto", [cuda_tensor(), cuda_tensor()], "op") == "triton"


def test_auto_falls_back_to_torch_on_cuda_without_triton(monkeypatch):
    monkeypatch.setattr(triton_mode, "triton_available", lambda: False)
    assert dispatch.resolve_backend("auto", [cuda_tensor()], "op") == "torch"


def test_explicit_backends():
    assert dispatch.resolve_backend("torch", [cuda_tensor()], "op") == "torch"
    assert dispatch.resolve_backend("torch", [cpu_tensor()], "op") == "torch"
    assert dispatch.resolve_backend("triton", [cuda_tensor()], "op") == "triton"


@pytest.mark.skipif(not interpreter_active(), reason="needs the Triton interpreter")
def test_triton_on_cpu_runs_in_the_interpreter():
    assert triton_mode.interpreter_enabled()
    assert dispatch.resolve_backend("triton", [cpu_tensor()], "op") == "triton"


def test_non_tensor_arguments_are_ignored():
    assert dispatch.resolve_backend("auto", [None, cuda_tensor(), 3], "op") == "triton"
    assert dispatch.resolve_backend("auto", [None], "op") == "torch"


@pytest.mark.parametrize(
    "env_value, explicit, device, expected",
    [
        ("torch", "auto", "cuda", "torch"),
        (" Torch ", "auto", "cuda", "torch"),
        ("auto", "auto", "cuda", "triton"),
        ("triton", "torch", "cpu", "torch"),  # an explicit argument wins over the variable
        ("torch", "triton", "cuda", "triton"),
        ("", "auto", "cuda", "triton"),  # empty: unset
    ],
)
def test_environment_variable_changes_auto(monkeypatch, env_value, explicit, device, expected):
    monkeypatch.setenv(dispatch.BACKEND_ENV, env_value)
    tensor = cuda_tensor() if device == "cuda" else cpu_tensor()
    assert dispatch.resolve_backend(explicit, [tensor], "op") == expected


@pytest.mark.skipif(not interpreter_active(), reason="needs the Triton interpreter")
def test_environment_variable_triton_on_cpu(monkeypatch):
    monkeypatch.setenv(dispatch.BACKEND_ENV, "triton")
    assert dispatch.resolve_backend("auto", [cpu_tensor()], "op") == "triton"


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cuda", "Triton", "pytorch", "", None, 1, ("torch",)])
def test_unknown_backend_names_are_rejected(backend):
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'triton', 'torch'\)"):
        dispatch.resolve_backend(backend, [cpu_tensor()], "op")


def test_bad_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv(dispatch.BACKEND_ENV, "gpu")
    with pytest.raises(ValueError, match="environment variable SPIFFY_TRITON_BACKEND.*'gpu'"):
        dispatch.resolve_backend("auto", [cpu_tensor()], "op")
    # an explicit backend does not read the variable at all
    assert dispatch.resolve_backend("torch", [cpu_tensor()], "op") == "torch"


def test_tensors_on_several_devices_are_rejected():
    with pytest.raises(ValueError, match=r"graph_attention: all tensors must be on one device"):
        dispatch.resolve_backend("auto", [cpu_tensor(), cuda_tensor()], "graph_attention")


@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_kernels_given_two_devices_name_both(backend):
    """graph_attention / marginals / rank_positions given tensors on two devices: a ValueError
    naming each argument's device, on every backend (meta stands in for a second device)."""
    cpu, meta = torch.zeros(1, 2, 4, 16), torch.zeros(1, 2, 4, 16, device="meta")
    layout = SegmentLayout([4], [4], [[1]])
    calls = {
        "graph_attention: .*q on cpu, k on meta, v on cpu": lambda: spiffy_triton.graph_attention(
            cpu, meta, cpu, layout, backend=backend
        ),
        "marginals: .*logits on cpu, positions on meta": lambda: spiffy_triton.marginals(
            cpu[0, 0], positions=torch.zeros(2, dtype=torch.long, device="meta"), backend=backend
        ),
        "rank_positions: .*confidence on meta, eligible on cpu": lambda: (
            spiffy_triton.rank_positions(
                meta[0, 0], torch.zeros(2, 4, dtype=torch.bool), backend=backend
            )
        ),
    }
    for message, call in calls.items():
        with pytest.raises(ValueError, match=message):
            call()
    # the shared validation of kernel and reference says it too, when called directly
    from spiffy_triton.kernels.graph_attention import graph_attention as kernel
    from spiffy_triton.reference.graph_attention import graph_attention as reference

    for impl in (kernel, reference):
        with pytest.raises(ValueError, match="q, k, v must be on one device, got cpu, meta, cpu"):
            impl(cpu, meta, cpu, layout)


def test_triton_on_an_unsupported_device_says_what_to_do():
    meta = torch.empty(2, device="meta")
    assert dispatch.resolve_backend("auto", [meta], "op") == "torch"
    with pytest.raises(RuntimeError, match=r"marginals: .*device type 'meta'.*backend='torch'"):
        dispatch.resolve_backend("triton", [meta], "marginals")


def test_triton_requested_without_triton_installed(monkeypatch):
    monkeypatch.setattr(triton_mode, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"op: backend='triton' needs the `triton` package"):
        dispatch.resolve_backend("triton", [cuda_tensor()], "op")


@pytest.mark.parametrize(
    "call",
    [
        lambda backend, t: dispatch.graph_attention(t, t, t, None, backend=backend),
        lambda backend, t: dispatch.marginals(t, backend=backend),
        lambda backend, t: dispatch.rank_positions(t, t, backend=backend),
    ],
    ids=["graph_attention", "marginals", "rank_positions"],
)
def test_public_entry_points_check_the_backend_before_any_work(call):
    meta = torch.empty(2, 3, device="meta")
    with pytest.raises(ValueError, match="backend must be one of"):
        call("fast", meta)
    with pytest.raises(RuntimeError, match="device type 'meta'"):
        call("triton", meta)


# ---- import order (fresh processes) ---------------------------------------------------------


def run_python(code: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for key in ("TRITON_INTERPRET", dispatch.BACKEND_ENV):
        env.pop(key, None)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def check_ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def test_import_switches_the_interpreter_on_without_importing_triton():
    out = check_ok(
        run_python(
            """
            import os, sys
            import spiffy_triton
            import torch
            print("triton imported:", "triton" in sys.modules)
            print("cuda:", torch.cuda.is_available())
            print("TRITON_INTERPRET:", os.environ.get("TRITON_INTERPRET"))
            """
        )
    )
    assert "triton imported: False" in out
    expected = "None" if "cuda: True" in out else "1"
    assert f"TRITON_INTERPRET: {expected}" in out


RESOLVE_TRITON_ON_CPU = """
    import torch
    from spiffy_triton import dispatch
    try:
        dispatch.resolve_backend("triton", [torch.zeros(2)], "graph_attention")
    except RuntimeError as error:
        print("ERROR:", error)
    else:
        print("RESOLVED")
"""


def test_triton_imported_first_gives_a_clear_error_not_a_crash():
    out = check_ok(run_python("import triton\n" + textwrap.dedent(RESOLVE_TRITON_ON_CPU)))
    assert "ERROR: graph_attention: backend='triton' got CPU tensors" in out
    assert "Set TRITON_INTERPRET=1 in the environment before Python starts" in out


def test_interpreter_switched_on_after_triton_import_is_detected():
    code = "import os, triton\nos.environ['TRITON_INTERPRET'] = '1'\n"
    out = check_ok(run_python(code + textwrap.dedent(RESOLVE_TRITON_ON_CPU)))
    assert "triton was imported before TRITON_INTERPRET=1 was set" in out


def test_interpreter_explicitly_off_is_respected():
    out = check_ok(run_python(RESOLVE_TRITON_ON_CPU, TRITON_INTERPRET="0"))
    assert "ERROR: graph_attention: backend='triton' got CPU tensors" in out


def test_interpreter_set_in_environment_with_triton_imported_first_works():
    out = check_ok(
        run_python("import triton\n" + textwrap.dedent(RESOLVE_TRITON_ON_CPU), TRITON_INTERPRET="1")
    )
    assert "RESOLVED" in out


def test_missing_triton_package():
    code = """
        import sys
        sys.modules["triton"] = None  # every `import triton` now raises ImportError
        import torch
        from spiffy_triton import dispatch, triton_mode
        print("available:", triton_mode.triton_available())
        print("auto:", dispatch.resolve_backend("auto", [torch.zeros(2)], "marginals"))
        try:
            dispatch.resolve_backend("triton", [torch.zeros(2)], "marginals")
        except RuntimeError as error:
            print("ERROR:", error)
    """
    out = check_ok(run_python(code))
    assert "available: False" in out
    assert "auto: torch" in out
    assert "ERROR: marginals: backend='triton' needs the `triton` package" in out
    assert "backend='torch'" in out
