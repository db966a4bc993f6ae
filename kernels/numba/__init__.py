"""What the numba kernels share, one file per concern.

``jit``: how every kernel is compiled (options, caching, one copy of a driver per cell);
``float32_math``: exp, tanh and sigmoid that vectorize in float32; ``loops``: 1-D loops LLVM
vectorizes; ``schedule``: how threads split rows, units and columns; ``register_tile``: the
recurrent product near the core's peak (Wh packed into panels, an LLVM IR tile); ``blas``:
binding BLAS's GEMMs (done by ``NumbaBackend()``, never at import); ``gemm``: the large
products, split between threads; ``recurrence``: the whole-sequence driver every cell runs in.
The cells' step math lives beside it in ``kernels/<cell>_numba.py``.

Importing any of these modules has no side effect beyond defining kernels: nothing compiles
until a kernel is first called with new argument types, and BLAS is bound by ``blas.bind()``.
"""
