"""The executor: runs Plans for real over MPI with Numba kernels (not built yet)."""
