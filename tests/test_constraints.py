"""Reproducible installs (issue #21): requirements/constraints.txt pins every distribution that
setup.py's requirements name, each pin inside setup.py's range, torch at scripts/env.sh's
TORCH_VERSION; and scripts/env.sh, run against a stand-in interpreter that records its pip
calls, passes the pins to both installs, re-installs when the pins change, and upgrades to the
newest releases with SPIFFY_UNPINNED=1."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "requirements" / "constraints.txt"


def setup_requirements() -> dict[str, list[Requirement]]:
    """setup.py's install_requires and extras_require, read from its source."""
    tree = ast.parse((REPO / "setup.py").read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in ("install_requires", "extras_require"):
            found[node.arg] = ast.literal_eval(node.value)
    groups = {"install_requires": found["install_requires"], **found["extras_require"]}
    return {k: [Requirement(r) for r in v] for k, v in groups.items()}


def read_pins(text: str) -> dict[str, Version]:
    pins = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][0-9A-Za-z.]*)", line)
        assert match, f"constraints.txt line {number}: expected name==version, got {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = Version(match[2])
    return pins


def pin_problems(pins: dict[str, Version]) -> list[str]:
    """Each requirement of setup.py without a pin, or pinned outside its range."""
    problems = []
    for group, requirements in setup_requirements().items():
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            if name not in pins:
                problems.append(f"setup.py {group} needs {name}: no pin")
            elif not requirement.specifier.contains(pins[name], prereleases=True):
                problems.append(f"{name}=={pins[name]} is outside setup.py's {requirement}")
    return problems


def test_constraints_pin_every_requirement_inside_setup_py_ranges():
    pins = read_pins(CONSTRAINTS.read_text())
    assert pin_problems(pins) == []
    env_sh = (REPO / "scripts" / "env.sh").read_text()
    torch_version = re.search(r'^TORCH_VERSION="([^"]+)"', env_sh, re.M)[1]
    assert pins["torch"] == Version(torch_version)


def test_a_pin_outside_the_range_or_missing_is_caught():
    text = CONSTRAINTS.read_text()
    low = read_pins(re.sub(r"^triton==.*$", "triton==3.5.0", text, flags=re.M))
    assert pin_problems(low) == ["triton==3.5.0 is outside setup.py's triton<3.10,>=3.6"]
    missing = read_pins(re.sub(r"^safetensors==.*\n", "", text, flags=re.M))
    assert pin_problems(missing) == ["setup.py install_requires needs safetensors: no pin"]
    with pytest.raises(AssertionError, match="expected name==version"):
        read_pins("torch>=2.5\n")


# ------------------------------------------------------------------------------ env.sh

FAKE_PYTHON = """#!/usr/bin/env bash
# Stand-in for .venv/bin/python: records each call; "installs" by touching marker files.
echo "$*" >> "$FAKE_LOG"
if [ "$1" = "-c" ]; then
    case "$2" in
        *torch*) [ -f "$FAKE_STATE/torch" ] ;;
        *spiffy_triton*) [ -f "$FAKE_STATE/package" ] ;;
        *) exit 0 ;;
    esac
    exit $?
fi
case "$*" in *"-m pip install"*"torch=="*) touch "$FAKE_STATE/torch" ;; esac
case "$*" in *"-m pip install"*"[test]"*) touch "$FAKE_STATE/package" ;; esac
"""


@pytest.fixture
def sandbox(tmp_path):
    """A copy of what env.sh reads, with a stand-in interpreter in .venv/bin/python."""
    repo = tmp_path / "repo"
    for name in ("setup.py", "pyproject.toml", "scripts/env.sh", "requirements/constraints.txt"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    python = repo / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    (tmp_path / "state").mkdir()
    return repo


def source_env(repo: Path, **env) -> tuple[int, list[str], str]:
    """(exit status, pip calls, stderr) of sourcing env.sh in `repo` once."""
    log = repo.parent / "calls.log"
    log.write_text("")
    environ = {k: v for k, v in os.environ.items() if k != "SPIFFY_UNPINNED"}
    environ.update(FAKE_LOG=str(log), FAKE_STATE=str(repo.parent / "state"), **env)
    result = subprocess.run(
        ["bash", "-c", f'source "{repo}/scripts/env.sh"'],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = [line for line in log.read_text().splitlines() if line.startswith("-m pip")]
    return result.returncode, calls, result.stderr


def test_env_sh_pins_both_installs_and_reinstalls_when_the_pins_change(sandbox):
    constraints = str(sandbox / "requirements" / "constraints.txt")
    status, calls, err = source_env(sandbox)
    assert status == 0, err
    assert len(calls) == 2, calls
    torch_call, package_call = calls
    assert f"-c {constraints} torch==2.13.0" in torch_call
    assert f"-c {constraints} -e {sandbox}[test]" in package_call
    assert source_env(sandbox)[1] == []  # done: nothing to install
    with open(constraints, "a") as f:
        f.write("# changed\n")
    status, calls, _ = source_env(sandbox)  # the stamp holds the constraints' hash
    assert status == 0 and len(calls) == 1 and f"-c {constraints} -e" in calls[0]


def test_env_sh_unpinned_upgrades_to_the_newest_releases_then_pins_back(sandbox):
    constraints = str(sandbox / "requirements" / "constraints.txt")
    assert source_env(sandbox)[0] == 0
    for _ in range(2):  # every unpinned run upgrades
        status, calls, err = source_env(sandbox, SPIFFY_UNPINNED="1")
        assert status == 0, err
        (call,) = calls
        assert "--upgrade --upgrade-strategy eager" in call and constraints not in call
        pin_file = call.split(" -c ")[1].split()[0]
        assert Path(pin_file).read_text() == "torch==2.13.0\n"  # torch stays the CPU build
    status, calls, _ = source_env(sandbox)  # a plain run puts the pinned set back
    assert status == 0 and len(calls) == 1 and f"-c {constraints} -e" in calls[0]


@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_env_sh_rejects_a_bad_unpinned_value(sandbox, value):
    status, calls, err = source_env(sandbox, SPIFFY_UNPINNED=value)
    assert status == 2 and calls == []
    assert f"SPIFFY_UNPINNED must be 0 or 1, got '{value}'" in err


def test_env_sh_needs_the_constraints_file_and_its_torch_pin(sandbox):
    constraints = sandbox / "requirements" / "constraints.txt"
    constraints.write_text(constraints.read_text().replace("torch==2.13.0", "torch==2.12.0"))
    status, calls, err = source_env(sandbox)
    assert status == 2 and calls == [] and "must pin torch==2.13.0" in err
    constraints.unlink()
    status, calls, err = source_env(sandbox)
    assert status == 2 and calls == [] and "missing" in err and "constraints.txt" in err
