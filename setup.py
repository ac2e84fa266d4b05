"""spiffy-triton: lossless speculative decoding for diffusion LMs, with Triton kernels.

The Triton kernels and their PyTorch twins live in the top-level `kernels/` and `reference/`
folders (one file per kernel family) and install as `spiffy_triton.kernels` and
`spiffy_triton.reference`: the folders have no `__init__.py` and are never installed under
their own names (Hugging Face's `kernels` distribution owns the global name `kernels`). A
plain checkout on `PYTHONPATH` and an editable install map the two names to the folders
(spiffy_triton/_sources.py).

Supported range (docs/BENCHMARKS.md, "GPU check"): torch >= 2.4 and triton 3.6 to 3.9.
triton 3.6 is the oldest proven: `bash scripts/check_triton_range.sh` runs the compile report
(every shipped kernel configuration, sm_90 and sm_80) and the kernel parity tests under it.
"""

from setuptools import find_packages, setup

SOURCE_SUBPACKAGES = {"spiffy_triton.kernels": "kernels", "spiffy_triton.reference": "reference"}
PACKAGES = ["spiffy_triton", *find_packages(include=["spiffy_triton.*"]), *SOURCE_SUBPACKAGES]

setup(
    name="spiffy-triton",
    version="0.1.0",
    description="Spiffy lossless speculative decoding for diffusion LMs, with Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=SOURCE_SUBPACKAGES,
    package_data={"spiffy_triton": ["assets/*/*", "assets/*.json"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.5",  # SDPA enable_gqa (2.5); proven on 2.13 (CPU) here
        "triton>=3.6,<3.10",  # proven: 3.6 and 3.9 (scripts/check_triton_range.sh)
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
