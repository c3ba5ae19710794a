"""The executor: runs Plans for real over MPI, with NumPy/Numba kernels on the CPU or
numba-cuda kernels on a GPU, and measures them into Results shaped like the simulator's
(``execute``); calibrates this machine for the simulator and checks its predictions
(``calibrate``, ``validate``)."""
