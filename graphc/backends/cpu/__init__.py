"""The CPU backend: the step layout, kernels written over raw pointers, the kernel library, the native driver."""
