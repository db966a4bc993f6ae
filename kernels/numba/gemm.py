"""The large products (the input projection, the weight and input gradients): BLAS, split across threads.

Threads: every parallel loop is Numba's (``prange``). BLAS (see ``blas``) runs single-threaded
inside those loops, so only one thread pool is ever busy; two spinning pools on two cores slow
each other by 10x or more. ``blas.bind()`` must have run (``NumbaBackend()`` does).
"""
import numpy as np
from numba import prange

from .blas import dgemm, sgemm
from .jit import callee, kernel, parallel_kernel
from .loops import add_into


@parallel_kernel
def gemm(a, ta, b, tb, out, bias, threads):
    """out = a @ b (+ bias): a and b C order as they lie, ``ta``/``tb`` saying each holds the
    transpose of its matrix (a Fortran-ordered operand goes as its transpose, no copy: one
    compiled kernel a dtype for every layout, each more was 3-9 s of compiling); out (M, J)
    C order; bias (J,) or empty.

    Each thread runs single-threaded BLAS on its share of the larger of a and b: rows of a or
    columns of b, so each packs half of the big operand (10-15% faster than always splitting
    rows), adding the bias while its block is in cache."""
    P = _shares(a, ta, b, tb, threads)
    work = _blas_workspace(P, a.dtype)
    for p in prange(P):
        c = np.int64(p)  # a prange index is int64 where Numba types the loop, uint64 where it compiles it
        _gemm_share(a, ta, b, tb, out, c, P, work, c, bias)


@parallel_kernel
def gemm_three(product1, product2, product3, threads):
    """For each product (a, ta, b, tb, out), as ``gemm`` takes them: out1 = a1 @ b1 and
    out2 = a2 @ b2 in one parallel region, half the threads on each; then out3 = a3 @ b3 split
    between all of them, in the same region. No out may be another product's operand.

    For the two weight gradients of a recurrent layer (x^T dA and h^T dA): a whole product on
    each of two threads took 6-9% less time than the two products one after the other, each
    split in two (H = 650: 19.4 -> 18.3 ms; H = 100: 0.63 -> 0.575 ms), as BLAS runs nearer
    its speed on a whole product than on half of one. The third is the input gradient dA Wx^T:
    in a region of its own it waited for TBB's workers to wake (20-35 us once they have idled
    50 us) after the Python that called it. (Three products always: an optional third compiled
    a second kernel, 9 s a dtype; one kernel for one product and for three, the three with
    two empty, cost a small product 5-10 us more a call.)"""
    a1, ta1, b1, tb1, _ = product1
    a2, ta2, b2, tb2, _ = product2
    P1, P2 = _shares(a1, ta1, b1, tb1, max(1, threads // 2)), _shares(a2, ta2, b2, tb2, max(1, threads - threads // 2))
    work = _blas_workspace(2 * (P1 + P2), a1.dtype)
    none = np.empty(0, dtype=a1.dtype)
    for p in prange(P1 + P2):
        c = np.int64(p)
        if c < P1:
            _gemm_share(*product1, c, P1, work, c, none)
        else:
            _gemm_share(*product2, c - P1, P2, work, c, none)
        _gemm_share(*product3, c, P1 + P2, work, P1 + P2 + c, none)


@kernel(inline="always")
def _shares(a, ta, b, tb, threads):
    """How many threads share out = a @ b: one per row of a or column of b at most."""
    rows, cols = a.shape[1] if ta else a.shape[0], b.shape[0] if tb else b.shape[1]
    return max(1, min(threads, rows if a.size >= b.size else cols))


@kernel(inline="always")
def _blas_workspace(shares, dtype):
    """BLAS takes every argument by address: per share the integers m, n, k, lda, ldb, ldc;
    then alpha = 1, beta = 0 and the flags 'N' (as stored) and 'T' (transposed)."""
    ints = np.empty((shares, 6), dtype=np.int32)
    scalars = np.empty(2, dtype=dtype)  # np.empty and stores: np.zeros or np.full are parallel loops here
    scalars[0], scalars[1] = 1, 0
    flags = np.empty(2, dtype=np.uint8)
    flags[0], flags[1] = ord("N"), ord("T")
    return ints, scalars, flags


@callee  # not inlined: three copies of it in gemms took seconds more to compile
def _gemm_share(a, ta, b, tb, out, c, P, work, slot, bias):
    """Share c of P of out = a @ b (+ bias): rows of a, or columns of b, whichever operand is
    larger; ``slot``: this share's row of the integer workspace."""
    ints, scalars, flags = work
    M, K = (a.shape[1], a.shape[0]) if ta else (a.shape[0], a.shape[1])
    J = b.shape[0] if tb else b.shape[1]
    by_rows = a.size >= b.size
    lo, hi = c * (M if by_rows else J) // P, (c + 1) * (M if by_rows else J) // P
    r0, r1, j0, j1 = (lo, hi, 0, J) if by_rows else (0, M, lo, hi)
    if r1 <= r0 or j1 <= j0:
        return
    if K == 0:  # no BLAS call: its checks of the leading dimensions of empty operands vary
        out[r0:r1, j0:j1] = 0
    else:
        # Column-major BLAS sees a C-ordered (r, c) array as its (c, r) transpose, leading
        # dimension c, and computes out^T (J, M) = b^T (J, K) @ a^T (K, M): an operand goes as
        # stored ('N') unless it holds the transpose of its matrix ('T').
        size = out.itemsize
        pa = a.ctypes.data + r0 * size * (1 if ta else a.shape[1])
        pb = b.ctypes.data + j0 * size * (b.shape[1] if tb else 1)
        po = out.ctypes.data + (r0 * J + j0) * size
        v = ints[slot]
        v[0], v[1], v[2], v[3], v[4], v[5] = j1 - j0, r1 - r0, K, max(1, b.shape[1]), max(1, a.shape[1]), J
        at, alpha, f = v.ctypes.data, scalars.ctypes.data, flags.ctypes.data
        if size == 4:
            sgemm(f + tb, f + ta, at, at + 4, at + 8, alpha, pb, at + 12, pa, at + 16, alpha + 4, po, at + 20)
        else:
            dgemm(f + tb, f + ta, at, at + 4, at + 8, alpha, pb, at + 12, pa, at + 16, alpha + 8, po, at + 20)
    if bias.size:  # while the block is in cache
        for i in range(r0, r1):
            add_into(out[i, j0:j1], bias[j0:j1])
