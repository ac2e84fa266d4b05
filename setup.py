"""spiffy-triton: lossless speculative decoding for diffusion LMs, with Triton kernels.

`kernels/` and `reference/` live at the repository root (one file per kernel family and
its PyTorch twin) but install as `spiffy_triton.kernels` and `spiffy_triton.reference`,
so the package never claims a global top-level name like `kernels`.
"""

from setuptools import find_packages, setup

PACKAGE_DIRS = {
    "spiffy_triton": "spiffy_triton",
    "spiffy_triton.kernels": "kernels",
    "spiffy_triton.reference": "reference",
}
PACKAGES = [
    "spiffy_triton",
    *find_packages(include=["spiffy_triton.*"]),
    "spiffy_triton.kernels",
    "spiffy_triton.reference",
]

setup(
    name="spiffy-triton",
    version="0.1.0",
    description="Spiffy lossless speculative decoding for diffusion LMs, with Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIRS,
    package_data={"spiffy_triton": ["assets/*/*", "assets/*.json"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "triton>=3.4",
        "numpy",
        "safetensors>=0.4",
        "tqdm",
        # `spiffy-triton graph draw` and the benchmark plots (Agg backend, no display)
        "matplotlib",
    ],
    extras_require={
        # setuptools / wheel: tests/test_packaging.py builds offline (--no-build-isolation).
        "test": [
            "pytest>=8",
            "pytest-xdist",
            "hypothesis>=6.100",
            "ruff",
            "setuptools>=64",
            "wheel",
            # tests/test_hf_adapter.py builds tiny transformers models locally (no downloads)
            "transformers>=4.48",
        ],
    },
    entry_points={"console_scripts": ["spiffy-triton=spiffy_triton.cli:main"]},
)
