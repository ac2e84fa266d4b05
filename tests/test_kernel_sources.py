"""Rules the interpreter cannot check, read off the kernels' source.

On a GPU, Triton's launcher turns an int argument equal to 1 into a compile-time constant, and
a constant has no `.to()`: a kernel that casts a scalar argument (the noise keys seed, step,
stream) compiles in the interpreter and for the compile report, and fails on the device the
first time that argument is 1 (found by the first H200 run: step 1, seed 1). Every scalar
argument a kernel casts must be listed in its ``do_not_specialize``.
"""

from __future__ import annotations

import ast
import importlib
import inspect

import pytest

KERNEL_MODULES = ("spiffy_triton.kernels.graph_attention", "spiffy_triton.kernels.marginals")
# @triton.jit helpers a family keeps beside its kernel file (docs/ARCHITECTURE.md, "Kernel files")
HELPER_MODULES = ("spiffy_triton.kernels.marginals_helpers",)


def _jit_decorator(node: ast.FunctionDef):
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr == "jit":
            return decorator
    return None


def _do_not_specialize(decorator) -> set[str]:
    if not isinstance(decorator, ast.Call):
        return set()
    for keyword in decorator.keywords:
        if keyword.arg == "do_not_specialize":
            return {ast.literal_eval(element) for element in keyword.value.elts}
    return set()


def _cast_scalar_arguments(node: ast.FunctionDef) -> set[str]:
    """Runtime (non-constexpr) arguments that the body calls `.to()` on directly."""
    runtime = {
        a.arg
        for a in node.args.args
        if a.annotation is None or "constexpr" not in ast.unparse(a.annotation)
    }
    cast = set()
    for call in ast.walk(node):
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "to"
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id in runtime
        ):
            cast.add(call.func.value.id)
    return cast


def _launched_kernels(module_name: str):
    source = inspect.getsource(importlib.import_module(module_name))
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.FunctionDef)
            and node.name.endswith("_kernel")
            or (isinstance(node, ast.FunctionDef) and node.name.endswith("_fwd"))
        ):
            decorator = _jit_decorator(node)
            if decorator is not None:
                yield node, decorator


@pytest.mark.parametrize("module_name", KERNEL_MODULES)
def test_cast_scalar_arguments_are_not_specialized(module_name):
    kernels = list(_launched_kernels(module_name))
    assert kernels, f"no launched @triton.jit kernel found in {module_name}"
    for node, decorator in kernels:
        missing = _cast_scalar_arguments(node) - _do_not_specialize(decorator)
        # pointers are never specialized to constants; the rule is for scalar ints
        missing = {name for name in missing if not name.endswith("_ptr")}
        assert not missing, (
            f"{module_name}.{node.name} casts {sorted(missing)} with .to() but does not list "
            "them in do_not_specialize: the launch fails on a GPU when one of them is 1"
        )


def test_the_rule_sees_the_noise_keys():
    """The check above finds what it must: the marginals kernel casts its noise keys."""
    nodes = {n.name: n for n, _ in _launched_kernels("spiffy_triton.kernels.marginals")}
    assert {"seed_lo", "seed_hi", "step"} <= _cast_scalar_arguments(nodes["_marginals_kernel"])
    assert {"step", "stream"} <= _cast_scalar_arguments(nodes["_noise_kernel"])


# The contract's values a kernel must read by name (spiffy_triton/contract.py, layout.py),
# never as literals of its own: one definition, so the twins cannot drift apart.
def _contract_literals() -> dict[object, str]:
    from spiffy_triton import contract

    # (not MAX_VOCAB: 0x7FFFFFFF is also the sign-flip mask of the order-preserving keys)
    names = ("PHILOX_M0", "PHILOX_M1", "PHILOX_W0", "PHILOX_W1")
    names += ("NOISE_CHUNK", "LANE_SPAN", "TWO_POW_M32", "SERIES_CUTOFF")
    values = {getattr(contract, name): name for name in names}
    values[-contract.KEY_SENTINEL] = "KEY_SENTINEL"  # -(2**63) parses as -(literal 2**63)
    return values


def _jit_functions(module_name: str):
    source = inspect.getsource(importlib.import_module(module_name))
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and _jit_decorator(node) is not None:
            yield node


def _contract_literals_in(node: ast.FunctionDef, literals: dict) -> list[str]:
    found = []
    for constant in ast.walk(node):
        if isinstance(constant, ast.Constant) and not isinstance(constant.value, (bool, str)):
            if constant.value in literals:
                found.append(f"{literals[constant.value]} written as {constant.value!r}")
    return found


@pytest.mark.parametrize("module_name", KERNEL_MODULES + HELPER_MODULES)
def test_kernels_read_the_contract_by_name(module_name):
    literals = _contract_literals()
    found = {
        node.name: hits
        for node in _jit_functions(module_name)
        if (hits := _contract_literals_in(node, literals))
    }
    assert not found, f"{module_name}: contract values written as literals: {found}"


def test_the_literal_check_sees_a_literal():
    """The check above finds what it must: a Philox multiplier and the sentinel as literals."""
    tree = ast.parse(
        "def f(c0, valid, packed):\n"
        "    return tl.umulhi(c0, 0xD2511F53), tl.where(valid, packed, -9223372036854775808)\n"
    )
    hits = _contract_literals_in(tree.body[0], _contract_literals())
    assert hits == [
        "PHILOX_M0 written as 3528531795",
        "KEY_SENTINEL written as 9223372036854775808",
    ]


def test_attention_kernel_reads_schedule_entries_by_column_name():
    """Every load of a tile-schedule entry field names its column (layout.ENTRY_*)."""
    (node,) = [
        n
        for n, _ in _launched_kernels("spiffy_triton.kernels.graph_attention")
        if n.name == "_graph_attention_fwd"
    ]
    loads = [
        call.args[0]
        for call in ast.walk(node)
        if isinstance(call, ast.Call)
        and ast.unparse(call.func) == "tl.load"
        and "fields" in ast.unparse(call.args[0])
    ]
    assert len(loads) == 5, [ast.unparse(a) for a in loads]
    for address in loads:
        assert isinstance(address, ast.BinOp) and isinstance(address.right, ast.Name), ast.unparse(
            address
        )
        assert address.right.id.startswith("ENTRY_"), ast.unparse(address)
