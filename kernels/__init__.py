"""Hand-fused kernels, shipped inside the installed package as ``rnncore.kernels``.

``*.cu``: CUDA C for the cupy backend, loaded with ``cupy.RawModule``.
``*_numba.py``: Numba-JIT CPU loops for the numba backend.
One file per kernel family and target.
"""
