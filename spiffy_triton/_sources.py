"""Where ``spiffy_triton.kernels`` and ``spiffy_triton.reference`` come from.

The kernel sources and their PyTorch twins live in the repository's top-level ``kernels/`` and
``reference/`` folders (the layout of docs/DESIGN.md §9). They are parts of this package, never
packages of their own: Hugging Face's ``kernels`` distribution owns the global name
``kernels``. So the folders have no ``__init__.py`` (on ``PYTHONPATH`` they are at most
namespace portions, and any installed ``kernels`` package wins over them), and

- an install (``pip install .``) copies them into ``spiffy_triton/kernels`` and
  ``spiffy_triton/reference`` (``package_dir`` in setup.py);
- a checkout (``PYTHONPATH=<repo>``, as scripts/gpu_check.sh runs on a bare GPU box) and an
  editable install (``pip install -e .``) have no such folders inside ``spiffy_triton/``;
  `install` then adds a finder that maps the two names, and only them, to the top-level folders.

No project imports: ``spiffy_triton/__init__.py`` runs this first.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

SUBPACKAGES = ("kernels", "reference")
PACKAGE = "spiffy_triton"


class CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds ``spiffy_triton.kernels`` / ``spiffy_triton.reference`` in a source checkout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names = {f"{PACKAGE}.{name}" for name in SUBPACKAGES}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names:
            return None  # submodules are found through the subpackage's __path__
        # A namespace spec named spiffy_triton.<name> whose __path__ is <root>/<name>.
        return importlib.machinery.PathFinder.find_spec(fullname, [str(self.root)])


def checkout_root(package_dir: Path) -> Path | None:
    """The repository root when ``package_dir`` is ``<repo>/spiffy_triton`` of a checkout."""
    root = package_dir.parent
    if any(any((package_dir / name).glob("*.py")) for name in SUBPACKAGES):
        return None  # an install: the subpackages sit inside the package (a stale
        # spiffy_triton/kernels/__pycache__ left by an older checkout does not count)
    if not (root / "setup.py").is_file():
        return None
    if not all((root / name).is_dir() for name in SUBPACKAGES):
        return None
    return root


def install(package_dir: Path) -> None:
    """Add the checkout finder once, when ``package_dir`` belongs to a source checkout."""
    root = checkout_root(package_dir)
    if root is None or any(isinstance(f, CheckoutFinder) for f in sys.meta_path):
        return
    # First in line: a stale spiffy_triton/kernels/ folder must not win as a namespace.
    sys.meta_path.insert(0, CheckoutFinder(root))
