"""Triton kernels, one file per kernel family (installed as spiffy_triton.kernels)."""
