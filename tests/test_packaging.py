"""`pip install .` and `pip install -e .` both give an importable package from outside the
repository: spiffy_triton, spiffy_triton.kernels and spiffy_triton.reference, the bundled
assets and the console script; and a plain checkout on PYTHONPATH, with no install at all,
imports the same package (what scripts/gpu_check.sh relies on, on a GPU box with no network).

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
SOURCES = ["setup.py", "pyproject.toml", "README.md", "spiffy_triton"]
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
    import importlib.resources, json, os, sys
    import spiffy_triton
    import spiffy_triton.kernels, spiffy_triton.reference
    from spiffy_triton import dispatch, triton_mode
    assets = importlib.resources.files("spiffy_triton") / "assets"
    try:
        import kernels
        top_level_kernels = kernels.__file__
    except ImportError:
        top_level_kernels = None
    print(json.dumps({
        "package": spiffy_triton.__file__,
        "kernels": spiffy_triton.kernels.__file__,
        "reference": spiffy_triton.reference.__file__,
        "probe_asset": json.loads((assets / "probe" / "probe.json").read_text()),
        "assets": sorted(
            f"{d.name}/{f.name}" for d in assets.iterdir() if d.is_dir() for f in d.iterdir()
        ),
        "top_level_kernels": top_level_kernels,
        "version": spiffy_triton.__version__,
    }))
"""


def import_from_outside(python: Path, cwd: Path, pythonpath: Path | None = None) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
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
    assert found["kernels"].endswith(os.path.join("spiffy_triton", "kernels", "__init__.py"))
    assert found["reference"].endswith(os.path.join("spiffy_triton", "reference", "__init__.py"))
    assert found["probe_asset"] == {"probe": True}
    assert set(shipped_assets()) <= set(found["assets"]), found["assets"]
    assert found["top_level_kernels"] is None, "the install claims a top-level `kernels` package"
    assert (tmp_path / "venv" / "bin" / "spiffy-triton").exists()


def test_editable_install_follows_the_sources(tmp_path):
    source = copy_sources(tmp_path / "src")
    python = make_venv(tmp_path / "venv")
    pip_install(python, "-e", str(source))
    found = import_from_outside(python, tmp_path)
    assert found["kernels"] == str(source / "spiffy_triton" / "kernels" / "__init__.py")
    assert found["reference"] == str(source / "spiffy_triton" / "reference" / "__init__.py")
    assert found["package"] == str(source / "spiffy_triton" / "__init__.py")
    assert found["probe_asset"] == {"probe": True}
    assert found["top_level_kernels"] is None
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
        found = import_from_outside(python, tmp_path, pythonpath=source)
    else:
        pip_install(python, "-e", str(source))
        found = import_from_outside(python, tmp_path)
    for key, path in (("package", ""), ("kernels", "kernels"), ("reference", "reference")):
        assert found[key] == str(source / "spiffy_triton" / path / "__init__.py"), found[key]
    assert found["probe_asset"] == {"probe": True}
    assert found["top_level_kernels"] is None
