"""The CUDA backend: numba.cuda kernels and the host step that launches them."""
