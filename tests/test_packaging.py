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
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
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


def pip_install(python: Path, *args: str) -> None:
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    command += ["--no-deps", "--no-build-isolation", "--disable-pip-version-check", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"


IMPORT_CHECK = """
    import importlib, importlib.resources, json, os, sys
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
        "top_level": {name: top_level(name) for name in ("kernels", "reference")},
        "version": spiffy_triton.__version__,
    }))
"""


def import_from_outside(python: Path, cwd: Path, *pythonpath: Path) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    result = subprocess.run(
        [str(python), "-c", textwrap.dedent(IMPORT_CHECK)],
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
    python = make_venv(tmp_path / "venv")
    pip_install(python, str(source))
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
    if install != "none":
        assert_no_global_names(found, tmp_path)


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
