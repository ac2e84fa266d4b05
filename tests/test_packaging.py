"""`pip install .` and `pip install -e .` both give an importable package from outside the
repository: spiffy_triton, spiffy_triton.kernels and spiffy_triton.reference (from the
top-level kernels/ and reference/ folders), the bundled assets and the console script; and a
plain checkout on PYTHONPATH, with no install at all, imports the same package (what
scripts/gpu_check.sh relies on, on a GPU box with no network). None of them makes our folders
the global `kernels` / `reference` packages (Hugging Face's `kernels` owns that name).

Each install goes into a fresh virtual environment whose only view of the project venv is a
.pth line with its site-packages (torch, triton, setuptools), so the project's own editable
install is not visible there. Installs run offline: --no-deps --no-build-isolation. They build
from a copy of the sources, so the working tree gets no build/ or egg-info folders.

Top-level names: the checks ask what *this* distribution installs (the built wheel's RECORD
and top_level.txt; the installed dist's files, its editable finder's mapping and any path
its .pth files add), never whether `import kernels` finds something: Hugging Face's `kernels`
distribution (a dependency of transformers 5) owns that name in the environment.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["setup.py", "pyproject.toml", "README.md", "spiffy_triton", "kernels", "reference"]
PROBE_ASSET = Path("spiffy_triton") / "assets" / "probe" / "probe.json"

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("packaging")]


def copy_sources(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    dest.mkdir(parents=True)
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)
    # An asset that exists only in the copy: proves package_data ships assets/<name>/<file>.
    (dest / PROBE_ASSET).parent.mkdir(parents=True, exist_ok=True)
    (dest / PROBE_ASSET).write_text('{"probe": true}\n')
    return dest


def make_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Dependencies from the project venv; its .pth files (the editable install) are not run.
    Path(site, "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def build_wheel(source: Path, dest: Path) -> Path:
    """The wheel of the sources at `source`, built offline into `dest`."""
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    command += ["--no-build-isolation", "--disable-pip-version-check", "-w", str(dest)]
    result = subprocess.run([*command, str(source)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    (wheel,) = dest.glob("spiffy_triton-*.whl")
    return wheel


def pip_install(python: Path, *args: str) -> None:
    """Install into the venv of `python`. --force-reinstall: the project's own spiffy-triton
    0.1.0 is visible there (through project_deps.pth, or a checkout on PYTHONPATH with its
    egg-info), and pip would otherwise skip a wheel of the same version as already installed."""
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    command += ["--no-deps", "--no-build-isolation", "--disable-pip-version-check"]
    command += ["--force-reinstall", *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"


# The only top-level import name this distribution may install.
OWN_TOP_LEVEL = ["spiffy_triton"]


def top_level_names_of(record_paths) -> set[str]:
    """Top-level import names that files at `record_paths` (RECORD rows, relative to
    site-packages) install: packages, modules and extension modules. Metadata folders,
    scripts outside site-packages (``../../bin``), caches and the editable-install files
    (read by `claimed_top_level_names`) are not import names."""
    names = set()
    for path in record_paths:
        parts = str(path).replace("\\", "/").split("/")
        first = parts[0]
        if first in ("", "..", "__pycache__") or first.startswith("__editable__"):
            continue
        if first.endswith((".dist-info", ".data", ".egg-info", ".pth")):
            continue
        if len(parts) == 1:  # a module or an extension module: name.py, name.cpython-*.so
            first = first.split(".")[0]
        names.add(first)
    return names


def importable_names_in(folder: str) -> set[str]:
    """Names a folder on sys.path makes importable (packages, namespace packages, modules)."""
    names = set()
    for entry in os.listdir(folder):
        full = os.path.join(folder, entry)
        stem = entry.split(".")[0]
        if os.path.isdir(full) and entry.isidentifier():
            names.add(entry)
        elif entry.endswith((".py", ".so", ".pyd")) and stem.isidentifier():
            names.add(stem)
    return names


def claimed_top_level_names() -> dict:
    """Every top-level import name the installed spiffy-triton distribution provides: its
    RECORD, its top_level.txt, the MAPPING / NAMESPACES of a setuptools editable finder, and
    the names importable from a folder a .pth file of its own puts on sys.path; and the
    site-packages folder the distribution was found in."""
    import ast
    import importlib.metadata
    import os

    dist = importlib.metadata.distribution("spiffy-triton")
    files = list(dist.files or ())
    names = top_level_names_of(files)
    names |= set((dist.read_text("top_level.txt") or "").split())
    for file in files:
        path = str(dist.locate_file(file))
        if file.name.startswith("__editable__") and file.suffix == ".py":
            for node in ast.parse(open(path, encoding="utf-8").read()).body:
                target = (
                    getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
                )
                if getattr(target, "id", None) in ("MAPPING", "NAMESPACES"):
                    # dotted keys (spiffy_triton.kernels) map subpackages, not top-level names
                    names |= {key.split(".")[0] for key in ast.literal_eval(node.value)}
        elif file.suffix == ".pth":
            for line in open(path, encoding="utf-8").read().splitlines():
                line = line.strip()
                if line and not line.startswith(("#", "import ")) and os.path.isdir(line):
                    names |= importable_names_in(line)
    return {"site": str(dist.locate_file("")), "names": sorted(names)}


def wheel_top_level_names(wheel: Path) -> dict[str, list[str]]:
    """What a built wheel installs: top-level names from its RECORD and its top_level.txt."""
    with zipfile.ZipFile(wheel) as archive:
        listing = archive.namelist()
        record = next(n for n in listing if n.endswith(".dist-info/RECORD"))
        rows = [line.split(",")[0] for line in archive.read(record).decode().splitlines()]
        top = [n for n in listing if n.endswith(".dist-info/top_level.txt")]
        top_level = archive.read(top[0]).decode().split() if top else []
    return {"record": sorted(top_level_names_of(rows)), "top_level_txt": sorted(top_level)}


IMPORT_CHECK = """
    import importlib, importlib.resources, importlib.util, json, os, sys
    import spiffy_triton
    import spiffy_triton.kernels, spiffy_triton.reference
    from spiffy_triton import dispatch, triton_mode
    assets = importlib.resources.files("spiffy_triton") / "assets"
    def top_level(name):
        try:
            module = __import__(name)
        except ImportError:
            return []
        return [module.__file__, *getattr(module, "__path__", [])]
    print(json.dumps({
        "package": spiffy_triton.__file__,
        "kernels": spiffy_triton.kernels.__path__[0],
        "reference": spiffy_triton.reference.__path__[0],
        "kernels_file": importlib.import_module("spiffy_triton.kernels.graph_attention").__file__,
        "reference_file": importlib.import_module("spiffy_triton.reference.marginals").__file__,
        "probe_asset": json.loads((assets / "probe" / "probe.json").read_text()),
        "assets": sorted(
            f"{d.name}/{f.name}" for d in assets.iterdir() if d.is_dir() for f in d.iterdir()
        ),
        "claimed": claimed_top_level_names(),
        "resolved": {
            name: getattr(importlib.util.find_spec(name), "origin", None)
            for name in ("kernels", "reference")
        },
        "top_level": {name: top_level(name) for name in ("kernels", "reference")},
        "version": spiffy_triton.__version__,
    }))
"""


CHECK_HELPERS = "import os\n" + "\n".join(
    inspect.getsource(f) for f in (top_level_names_of, importable_names_in, claimed_top_level_names)
)


def assert_only_own_top_level(found: dict, install_root: Path) -> None:
    """The install claims no top-level name but spiffy_triton, and `kernels` / `reference`, if
    importable at all, come from another distribution (never from this install or checkout)."""
    claimed = found["claimed"]
    assert claimed["site"].startswith(str(install_root)), f"found another install: {claimed}"
    assert claimed["names"] == OWN_TOP_LEVEL, f"the install claims top-level {claimed['names']}"
    for name, origin in found["resolved"].items():
        assert origin is None or not origin.startswith(str(install_root)), (name, origin)


def import_from_outside(python: Path, cwd: Path, *pythonpath: Path) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    result = subprocess.run(
        [str(python), "-c", CHECK_HELPERS + textwrap.dedent(IMPORT_CHECK)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_from_top_level_folders(found: dict, source: Path) -> None:
    for name, module in (("kernels", "graph_attention"), ("reference", "marginals")):
        assert found[name] == str(source / name), (name, found[name])
        assert found[f"{name}_file"] == str(source / name / f"{module}.py")


def assert_no_global_names(found: dict, root: Path) -> None:
    """No `kernels` / `reference` importable from what this test built under `root` (an
    unrelated installed `kernels`, e.g. Hugging Face's, may be importable)."""
    for name, paths in found["top_level"].items():
        ours = [p for p in paths if p and str(p).startswith(str(root))]
        assert not ours, f"the install claims a top-level `{name}` package: {ours}"


def shipped_assets() -> list[str]:
    root = REPO / "spiffy_triton" / "assets"
    return sorted(
        f"{p.parent.name}/{p.name}"
        for p in root.glob("*/*")
        if p.is_file() and "__pycache__" not in p.parts
    )


def test_plain_install_imports_from_outside_the_repository(tmp_path):
    source = copy_sources(tmp_path / "src")
    wheel = build_wheel(source, tmp_path / "dist")
    assert wheel_top_level_names(wheel) == {"record": OWN_TOP_LEVEL, "top_level_txt": OWN_TOP_LEVEL}
    python = make_venv(tmp_path / "venv")
    pip_install(python, str(wheel))
    shutil.rmtree(source)  # a real install must not need the sources any more
    found = import_from_outside(python, tmp_path)
    site = str(tmp_path / "venv")
    for key in ("package", "kernels", "reference"):
        assert found[key].startswith(site), (key, found[key])
    assert found["kernels"].endswith(os.path.join("spiffy_triton", "kernels"))
    assert found["reference"].endswith(os.path.join("spiffy_triton", "reference"))
    assert found["kernels_file"] == os.path.join(found["kernels"], "graph_attention.py")
    assert found["reference_file"] == os.path.join(found["reference"], "marginals.py")
    assert found["probe_asset"] == {"probe": True}
    assert set(shipped_assets()) <= set(found["assets"]), found["assets"]
    assert_only_own_top_level(found, tmp_path)
    assert_no_global_names(found, tmp_path)
    assert (tmp_path / "venv" / "bin" / "spiffy-triton").exists()


def test_editable_install_follows_the_sources(tmp_path):
    source = copy_sources(tmp_path / "src")
    python = make_venv(tmp_path / "venv")
    pip_install(python, "-e", str(source))
    found = import_from_outside(python, tmp_path)
    assert_from_top_level_folders(found, source)
    assert found["package"] == str(source / "spiffy_triton" / "__init__.py")
    assert found["probe_asset"] == {"probe": True}
    assert_only_own_top_level(found, tmp_path)
    assert_no_global_names(found, tmp_path)
    # an edit in the sources shows without reinstalling
    init = source / "spiffy_triton" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', '__version__ = "0.1.0+edit"'))
    assert import_from_outside(python, tmp_path)["version"] == "0.1.0+edit"


@pytest.mark.parametrize("install", ["none", "editable_no_deps"])
def test_checkout_on_pythonpath_imports_without_install(tmp_path, install):
    """The bare-GPU-box path: a checkout on PYTHONPATH (no pip), or `pip install --no-deps
    --no-build-isolation -e .` (offline), imports spiffy_triton.kernels from the checkout."""
    source = copy_sources(tmp_path / "checkout")
    python = make_venv(tmp_path / "venv")
    if install == "none":
        found = import_from_outside(python, tmp_path, source)
    else:
        pip_install(python, "-e", str(source))
        found = import_from_outside(python, tmp_path)
    assert found["package"] == str(source / "spiffy_triton" / "__init__.py")
    assert_from_top_level_folders(found, source)
    assert found["probe_asset"] == {"probe": True}
    if install == "none":  # nothing installed: the checkout itself must not be what they find
        for name, origin in found["resolved"].items():
            assert origin is None or not origin.startswith(str(source)), (name, origin)
    else:
        assert_only_own_top_level(found, tmp_path)
        assert_no_global_names(found, tmp_path)


# Prepended to a copy's setup.py: setup() also ships top-level `kernels` and `reference`.
SHIP_TOP_LEVEL = """import setuptools

_real_setup = setuptools.setup


def _setup_shipping_top_level(**kwargs):
    kwargs["packages"] = [*kwargs.get("packages", ()), "kernels", "reference"]
    return _real_setup(**kwargs)


setuptools.setup = _setup_shipping_top_level
"""


def ship_top_level_packages(source: Path) -> None:
    """Break the copy at `source` on purpose: its setup() also ships top-level `kernels` and
    `reference` packages (what a package_dir mapping gone wrong would do)."""
    for name in ("kernels", "reference"):
        (source / name).mkdir(exist_ok=True)
        init = source / name / "__init__.py"
        if not init.exists():
            init.write_text("")
    setup_py = source / "setup.py"
    setup_py.write_text(SHIP_TOP_LEVEL + setup_py.read_text())


def test_the_checks_fail_on_a_distribution_shipping_top_level_kernels(tmp_path):
    """The checks above see a top-level `kernels` or `reference` this distribution would ship:
    in the built wheel (RECORD and top_level.txt) and in an editable install's finder."""
    source = copy_sources(tmp_path / "src")
    ship_top_level_packages(source)
    wheel = build_wheel(source, tmp_path / "dist")
    broken = ["kernels", "reference", "spiffy_triton"]
    assert wheel_top_level_names(wheel) == {"record": broken, "top_level_txt": broken}
    python = make_venv(tmp_path / "venv")
    pip_install(python, "-e", str(source))
    found = import_from_outside(python, tmp_path)
    assert found["claimed"]["names"] == broken
    with pytest.raises(AssertionError, match="claims top-level"):
        assert_only_own_top_level(found, tmp_path)


def test_checkout_folders_never_shadow_an_installed_kernels_package(tmp_path):
    """With the checkout first on PYTHONPATH, `import kernels` still finds the installed
    package of that name (here a stand-in later on the path): the top-level folders are
    no packages, at most namespace portions, and a regular package anywhere wins."""
    source = copy_sources(tmp_path / "checkout")
    others = tmp_path / "site"
    for name in ("kernels", "reference"):
        (others / name).mkdir(parents=True)
        (others / name / "__init__.py").write_text("")
    python = make_venv(tmp_path / "venv")
    found = import_from_outside(python, tmp_path, source, others)
    assert_from_top_level_folders(found, source)
    for name in ("kernels", "reference"):
        assert found["top_level"][name][0] == str(others / name / "__init__.py"), found
