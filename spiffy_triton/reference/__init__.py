"""Pure-PyTorch twins of the Triton kernels, same names and signatures
(installed as spiffy_triton.reference)."""
