"""Hand-fused kernels, shipped inside the installed package as ``rnncore.kernels``.

``*.cu``: CUDA C for the cupy backend, loaded with ``cupy.RawModule``.
``*_numba.py``: Numba-JIT CPU loops for the numba backend: each cell's step math
(``rnn``, ``lstm``, ``gru``) and the rest of a training step; ``numba/``: what they share
(the one recurrence driver, the register tile, the GEMMs, float32 math, BLAS binding).
One file per kernel family and target.
"""
