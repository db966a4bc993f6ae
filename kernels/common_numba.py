"""What the numba kernels share: vectorizable float32 math, the small-GEMM tile, parallel BLAS GEMMs.

Threads: every parallel loop here is Numba's (``prange``). BLAS (SciPy's OpenBLAS, which
``np.dot`` calls inside ``@njit``) runs single-threaded inside those loops, so only one
thread pool is ever busy; two spinning pools on two cores slow each other by 10x or more.

Math: libm's tanhf/expf are scalar calls that stop LLVM from vectorizing a loop. For
float32 the kernels use branch-free versions that vectorize and are as accurate as
NumPy's own float32 functions (about 1 ulp); float64 keeps libm.
``FAST`` allows reassociation and FMA contraction only: NaN and inf still propagate.
"""
import functools

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

FAST = {"reassoc", "contract"}
# error_model="numpy": x / 0 gives inf as in NumPy; Python's check would raise, and its
# branch alone keeps LLVM from vectorizing any loop that divides.
OPTIONS = {"fastmath": FAST, "error_model": "numpy"}
kernel = functools.partial(njit, cache=True, **OPTIONS)
parallel_kernel = functools.partial(njit, cache=True, parallel=True, **OPTIONS)


# math ------------------------------------------------------------------------------------
@kernel(inline="always")
def like(a, value):
    """``value`` in a's dtype: a bare float would turn float32 arithmetic into float64."""
    typed = np.empty(1, dtype=a.dtype)
    typed[0] = value
    return typed[0]


def tanh_(x):
    return np.tanh(x)


def sigmoid_(x):
    return 1 / (1 + np.exp(-x))


def exp_(x):
    return np.exp(x)


@kernel(inline="always")
def _exp32(v):
    """e^v for float32, within 1 ulp: v = k ln2 + r, |r| <= ln2/2, e^r by a degree-7
    polynomial, 2^k written straight into the exponent bits. Vectorizes; NaN stays NaN."""
    x = v if v > np.float32(-87.3) else np.float32(-87.3)
    x = x if x < np.float32(88.7) else np.float32(88.7)
    k = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    e = p * np.int32((np.int32(k) + np.int32(127)) << np.int32(23)).view(np.float32)
    return e if v == v else v


@kernel(inline="always")
def _tanh32(x):
    """tanh for float32 within about 1.3 ulp (NumPy's own float32 tanh: 1.35), vectorizable.
    |x| < 0.625: the odd series x + x^3 P(x^2); beyond: 1 - 2/(e^{2|x|} + 1), which no
    longer cancels there because tanh >= 0.55."""
    a = x if x > 0 else -x
    big = np.float32(1) - np.float32(2) / (_exp32(np.float32(2) * a) + np.float32(1))
    big = big if x > 0 else -big
    z = x * x
    p = np.float32(-0.006104721268886652)
    p = p * z + np.float32(0.021003463001539706)
    p = p * z + np.float32(-0.05385245142755994)
    p = p * z + np.float32(0.13332781831385782)
    p = p * z + np.float32(-0.33333329088904967)
    small = x + x * z * p
    t = small if a < np.float32(0.625) else big
    return t if x == x else x


@overload(tanh_, jit_options=OPTIONS)
def _tanh_impl(x):
    return (lambda x: _tanh32(x)) if x == types.float32 else (lambda x: np.tanh(x))


@overload(sigmoid_, jit_options=OPTIONS)
def _sigmoid_impl(x):
    if x == types.float32:
        return lambda x: np.float32(1) / (np.float32(1) + _exp32(-x))
    return lambda x: 1.0 / (1.0 + np.exp(-x))


@overload(exp_, jit_options=OPTIONS)
def _exp_impl(x):
    return (lambda x: _exp32(x)) if x == types.float32 else (lambda x: np.exp(x))


# small GEMMs: the recurrent product --------------------------------------------------------
@kernel
def dot_rows(X, WT, out, j0, j1):
    """out[n, j] = X[n, :] . WT[j, :] for all n and j0 <= j < j1.

    The step of a recurrence is a GEMM of only N (say 20) rows, where BLAS is slow. Here a
    4x4 tile of outputs is 16 running sums over k that LLVM keeps in vector registers:
    each k-vector of 4 rows of X and 4 rows of WT feeds 16 FMAs. Edges go one by one.
    """
    N, K = X.shape
    n_tiled = N - N % 4
    j_tiled = j0 + (j1 - j0) - (j1 - j0) % 4
    for j in range(j0, j_tiled, 4):
        for n in range(0, n_tiled, 4):
            _tile4x4(X, WT, out, n, j, K)
        for n in range(n_tiled, N):
            for jj in range(j, j + 4):
                out[n, jj] = _dot(X, WT, n, jj, K)
    for j in range(j_tiled, j1):
        for n in range(N):
            out[n, j] = _dot(X, WT, n, j, K)


@kernel(inline="always")
def _dot(X, WT, n, j, K):
    s = X[n, 0] * WT[j, 0]
    for k in range(1, K):
        s += X[n, k] * WT[j, k]
    return s


@kernel(inline="always")
def _tile4x4(X, WT, out, n, j, K):
    w0, w1, w2, w3 = WT[j, 0], WT[j + 1, 0], WT[j + 2, 0], WT[j + 3, 0]
    h0, h1, h2, h3 = X[n, 0], X[n + 1, 0], X[n + 2, 0], X[n + 3, 0]
    s00, s01, s02, s03 = h0 * w0, h0 * w1, h0 * w2, h0 * w3
    s10, s11, s12, s13 = h1 * w0, h1 * w1, h1 * w2, h1 * w3
    s20, s21, s22, s23 = h2 * w0, h2 * w1, h2 * w2, h2 * w3
    s30, s31, s32, s33 = h3 * w0, h3 * w1, h3 * w2, h3 * w3
    for k in range(1, K):
        w0, w1, w2, w3 = WT[j, k], WT[j + 1, k], WT[j + 2, k], WT[j + 3, k]
        h0, h1, h2, h3 = X[n, k], X[n + 1, k], X[n + 2, k], X[n + 3, k]
        s00 += h0 * w0
        s01 += h0 * w1
        s02 += h0 * w2
        s03 += h0 * w3
        s10 += h1 * w0
        s11 += h1 * w1
        s12 += h1 * w2
        s13 += h1 * w3
        s20 += h2 * w0
        s21 += h2 * w1
        s22 += h2 * w2
        s23 += h2 * w3
        s30 += h3 * w0
        s31 += h3 * w1
        s32 += h3 * w2
        s33 += h3 * w3
    out[n, j], out[n, j + 1], out[n, j + 2], out[n, j + 3] = s00, s01, s02, s03
    out[n + 1, j], out[n + 1, j + 1], out[n + 1, j + 2], out[n + 1, j + 3] = s10, s11, s12, s13
    out[n + 2, j], out[n + 2, j + 1], out[n + 2, j + 2], out[n + 2, j + 3] = s20, s21, s22, s23
    out[n + 3, j], out[n + 3, j + 1], out[n + 3, j + 2], out[n + 3, j + 3] = s30, s31, s32, s33


@kernel
def unit_chunks(H, threads):
    """Split H units into one range per thread, boundaries on multiples of 4 (the tile width)."""
    P = max(1, min(threads, (H + 3) // 4))
    size = ((H + P - 1) // P + 3) // 4 * 4
    bounds = np.empty(P + 1, dtype=np.int64)
    for c in range(P + 1):
        bounds[c] = min(c * size, H)
    return bounds


@kernel
def add_activate(a, rec, is_tanh):
    """a = tanh(a + rec) or sigmoid(a + rec), in place, over 1-D slices (loops LLVM vectorizes)."""
    if is_tanh:
        for j in range(a.size):
            a[j] = tanh_(a[j] + rec[j])
    else:
        for j in range(a.size):
            a[j] = sigmoid_(a[j] + rec[j])


# big GEMMs: BLAS, split across threads -----------------------------------------------------
@parallel_kernel
def gemm(a, b, out, threads, bias=None):
    """out = a @ b (+ bias); each thread runs single-threaded BLAS on its share of the rows of a,
    adding the bias while those rows are still in cache."""
    M = a.shape[0]
    P = min(threads, M)
    for c in prange(P):
        lo, hi = c * M // P, (c + 1) * M // P
        block = out[lo:hi]
        np.dot(a[lo:hi], b, block)
        if bias is not None:
            for i in range(block.shape[0]):
                block[i] += bias


@parallel_kernel
def transpose(a, out):
    """out = a.T for a C-contiguous (M, K) a, in cache-sized blocks."""
    M, K = a.shape
    for i0 in prange((M + 63) // 64):
        for j0 in range(0, K, 64):
            for i in range(i0 * 64, min(i0 * 64 + 64, M)):
                for j in range(j0, min(j0 + 64, K)):
                    out[j, i] = a[i, j]
