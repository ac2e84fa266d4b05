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
