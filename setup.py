"""spiffy-triton: lossless speculative decoding for diffusion LMs, with Triton kernels.

The Triton kernels and their PyTorch twins live in the top-level `kernels/` and `reference/`
folders (one file per kernel family) and install as `spiffy_triton.kernels` and
`spiffy_triton.reference`: the folders have no `__init__.py` and are never installed under
their own names (Hugging Face's `kernels` distribution owns the global name `kernels`). A
plain checkout on `PYTHONPATH` and an editable install map the two names to the folders
(spiffy_triton/_sources.py).

Ranges (docs/BENCHMARKS.md, "Supported versions"). The installs of scripts/env.sh pin the
set CI runs (requirements/constraints.txt); a lower bound below says whether it was run:
- tested at both ends: triton 3.6 (`bash scripts/check_triton_range.sh`: the compile report of
  every shipped kernel configuration for sm_90 / sm_80 and the kernel parity tests) and 3.9;
  transformers 5.0.0 with safetensors 0.4.3 (what transformers 5.0.0 requires; the tests build
  Qwen configs with transformers 5's `rope_parameters`), pytest 8.0.0 and setuptools 77.0.3
  (what torch 2.13 itself requires), each also at today's newest release, on the checkpoint,
  model, adapter, packaging and graph tests;
- not run here: torch 2.5 (the floor of SDPA's `enable_gqa`; the registry's older torch
  builds are CUDA ones); torch 2.13.0 (CPU) is what every test ran on.
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
        "torch>=2.5",  # SDPA enable_gqa (2.5; floor not run here); tested: 2.13.0 (CPU)
        "triton>=3.6,<3.10",  # tested: 3.6 and 3.9 (scripts/check_triton_range.sh)
        "numpy",
        "safetensors>=0.4.3",  # tested: 0.4.3 and 0.8.0
        "tqdm",
        # `spiffy-triton graph draw` and the benchmark plots (Agg backend, no display)
        "matplotlib",
    ],
    extras_require={
        # setuptools / wheel: tests/test_packaging.py builds offline (--no-build-isolation).
        "test": [
            "pytest>=8",  # tested: 8.0.0 and 9.2.0
            "pytest-xdist",
            "hypothesis>=6.100",
            "ruff",
            "setuptools>=77.0.3",  # torch 2.13 requires it; tested: 77.0.3 and 84.2.1
            "wheel",
            # tests/test_hf_adapter.py, test_upstream_checkpoints.py build tiny transformers
            # models locally (no downloads) with transformers 5's `rope_parameters`.
            "transformers>=5.0",  # tested: 5.0.0 and 5.25.0
        ],
    },
    entry_points={"console_scripts": ["spiffy-triton=spiffy_triton.cli:main"]},
)
