"""What the numba kernels share: vectorizable float32 math, the register tile for the recurrent product, BLAS GEMMs.

Threads: every parallel loop here is Numba's (``prange``). BLAS (Intel MKL where installed
and the CPU is Intel's, else SciPy's OpenBLAS; called directly) runs single-threaded inside
those loops, so only one thread pool is ever busy; two spinning pools on two cores slow each
other by 10x or more.

Math: libm's tanhf/expf are scalar calls that stop LLVM from vectorizing a loop. For
float32 the kernels use branch-free versions that vectorize and are as accurate as
NumPy's own float32 functions (exp, tanh, sigmoid within 1, 1.5, 2.5 ulp against NumPy's
2.2, 1.4, 3.1: tests/test_parity.py); float64 keeps libm.
``FAST`` allows reassociation and FMA contraction only: NaN and inf still propagate.
"""
import ctypes
import ctypes.util
import functools
import glob
import os
import sys

import numpy as np
import llvmlite.binding as llvm_binding
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

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
    """e^v for float32, within 1 ulp; vectorizes; NaN stays NaN (the clamps lose it, the last
    select restores it: clamping with min/max and one select made sigmoid 9% faster than a
    compare-and-select per bound, with the same bits out). Overflows to inf from v = 88.38 on
    (exactly: 88.72), and gives e^-87.3 (1.2e-38) for any v below -87.3: the kernels take e^v of
    v <= 0 only (softmax) or inside tanh and sigmoid, where this only flushes a sigmoid under 4e-39
    (a subnormal) to 0."""
    e = _exp32_clamped(min(max(v, np.float32(-87.3)), np.float32(88.7)))
    return e if v == v else v


@kernel(inline="always")
def _exp32_clamped(x):
    """e^x for -87.3 <= x <= 88.7: x = k ln2 + r, |r| <= ln2/2, e^r by a degree-7 polynomial,
    2^k written straight into the exponent bits."""
    k = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * np.int32((np.int32(k) + np.int32(127)) << np.int32(23)).view(np.float32)


@kernel(inline="always")
def _tanh32(x):
    """tanh for float32 within about 1.3 ulp (NumPy's own float32 tanh: 1.35), vectorizable.
    |x| < 0.625: the odd series x + x^3 P(x^2); beyond: 1 - 2/(e^{2|x|} + 1), which no
    longer cancels there because tanh >= 0.55. abs, copysign and the one clamp e^{2|x|}
    needs made it 15-30% faster than selects on the sign, with the same bits out."""
    a = abs(x)
    big = np.float32(1) - np.float32(2) / (_exp32_clamped(min(np.float32(2) * a, np.float32(88.7))) + np.float32(1))
    big = np.copysign(big, x)
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


# the register tile: the recurrent product (20 rows) near the core's peak -----------------
def _vector_bytes():
    """64 where Numba compiles for AVX-512, else 32 (AVX2; narrower targets split the vectors)."""
    from numba.core import config

    features = config.CPU_FEATURES or llvm_binding.get_host_cpu_features().flatten()
    return 64 if "+avx512f" in features.split(",") else 32


# The tile keeps TILE_ROWS * PANEL_VECTORS vector accumulators, a panel row of PANEL_VECTORS
# vectors and a broadcast in registers. AVX-512: 10 rows x 2 vectors (23 of 32 registers).
# AVX2: 4 rows x 3 vectors (all 16): on an AMD EPYC (Zen 3) the recurrent product of a batch
# of 20 ran 15-20% faster than with 6 x 2 (whose four tiles compute 24 rows for 20; 4 x 3 was
# as fast at 24 rows, where both fill their tiles); 5 x 2 was in between, 3 x 4 half speed.
VECTOR_BYTES = _vector_bytes()
TILE_ROWS, PANEL_VECTORS = (10, 2) if VECTOR_BYTES == 64 else (4, 3)
PANEL_BYTES = PANEL_VECTORS * VECTOR_BYTES  # a panel's width: 32 float32 columns with AVX-512, 24 with AVX2


def _byte_ptr(builder, base, offset):
    return builder.gep(builder.bitcast(base, ir.IntType(8).as_pointer()), [offset])


@intrinsic
def _tile(typingctx, A, panel, out, n0, rows, col, cols):
    """out[n0 + i, col : col + cols] = A[:, i] @ panel[:, :cols] for i < rows <= TILE_ROWS:
    A (K, TILE_ROWS) holds the tile's rows packed k-major (``pack_rows``), panel (K, C); both C
    order. Whole vectors are written: up to cols rounded up to the vector width.

    Written as LLVM IR because the loop vectorizer will not build this kernel from Python
    loops: rows * vectors accumulators held in registers across the whole k loop, each k
    loading one row of the panel and broadcasting one element of each row of A (the compiled
    4x4 dot tile gave 85 GFLOP/s a core in float32). Packed A keeps the k loop to two
    pointers: read through A's own strides, the ten row pointers became a chain of ten
    dependent adds per k. Each shape up to TILE_ROWS x PANEL_VECTORS has its own loop, so a
    partial tile (a thread's 10 rows as 4 + 3 + 3; the last panel of 100 columns, 4 of 24
    live) computes only what it stores: with whole tiles (12 rows, 120 columns) the LSTM's
    recurrences at H=100 took 5% (forward) and 12% (backward) longer; at 650, the same.
    """
    if not (isinstance(A, types.Array) and A.dtype in (types.float32, types.float64)
            and A == types.Array(A.dtype, 2, "C") and panel == A and isinstance(out, types.Array) and out.dtype == A.dtype):
        return None
    sig = types.void(A, panel, out, n0, rows, col, cols)

    def codegen(context, builder, signature, args):
        a, w, o = (context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:3], args[:3]))
        n0, rows, col, cols = (context.cast(builder, v, t, types.intp) for v, t in zip(args[3:], signature.args[3:]))
        intp = context.get_value_type(types.intp)

        def const(v):
            return ir.Constant(intp, v)

        fty = context.get_value_type(signature.args[0].dtype)
        size = context.get_abi_sizeof(fty)
        width = VECTOR_BYTES // size
        vty = ir.VectorType(fty, width)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                             f"llvm.fma.v{width}{'f32' if size == 4 else 'f64'}")
        undef = ir.Constant(vty, ir.Undefined)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
        K = cgutils.unpack_tuple(builder, a.shape, 2)[0]
        w_row = cgutils.unpack_tuple(builder, w.strides, 2)[0]
        o_row = cgutils.unpack_tuple(builder, o.strides, 2)[0]

        def vector_at(base, offset):
            return builder.bitcast(_byte_ptr(builder, base, offset), vty.as_pointer())

        def tile_loop(R, V):
            """The k loop of an R-row, V-vector tile, then its stores."""
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(vty, None)) for _ in range(V)] for _ in range(R)]
            with cgutils.for_range(builder, K) as loop:
                wk = _byte_ptr(builder, w.data, builder.mul(loop.index, w_row))
                panel_row = [builder.load(vector_at(wk, const(v * VECTOR_BYTES)), align=size) for v in range(V)]
                ak = _byte_ptr(builder, a.data, builder.mul(loop.index, const(TILE_ROWS * size)))
                for i in range(R):
                    x = builder.load(builder.bitcast(_byte_ptr(builder, ak, const(i * size)), fty.as_pointer()))
                    xs = builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(ir.IntType(32), 0)),
                                                undef, splat)
                    for acc, vector in zip(accs[i], panel_row):
                        builder.store(builder.call(fma, [xs, vector, builder.load(acc)]), acc)
            for i in range(R):
                row = builder.add(builder.mul(builder.add(n0, const(i)), o_row), builder.mul(col, const(size)))
                for v in range(V):
                    target = vector_at(o.data, builder.add(row, const(v * VECTOR_BYTES)))
                    builder.store(builder.load(accs[i][v]), target, align=size)

        vectors = builder.sdiv(builder.add(cols, const(width - 1)), const(width))
        shape = builder.add(builder.mul(builder.sub(rows, const(1)), const(PANEL_VECTORS)),
                            builder.sub(vectors, const(1)))
        done = builder.append_basic_block("tile.done")
        switch = builder.switch(shape, done)  # any other shape (no rows, no columns) computes nothing
        for R in range(1, TILE_ROWS + 1):
            for V in range(1, PANEL_VECTORS + 1):
                block = builder.append_basic_block(f"tile.{R}x{V}")
                switch.add_case(const((R - 1) * PANEL_VECTORS + V - 1), block)
                builder.position_at_end(block)
                tile_loop(R, V)
                builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@kernel
def panel_width(a):
    return PANEL_BYTES // a.itemsize


@kernel
def pack_panels(B, cols, panels, p0, p1):
    """panels[p, k, i] = B[k, cols[p * C + i]], zero where cols is -1, for p0 <= p < p1.

    Packing makes each panel one contiguous (K, C) block the tile streams through; the
    loop order follows B's layout so the reads are contiguous either way."""
    K, C = panels.shape[1], panels.shape[2]
    zero = like(panels, 0)
    row_major = B.strides[0] >= B.strides[1]
    for p in range(p0, p1):
        for i in range(C):
            if cols[p * C + i] < 0:
                panels[p, :, i] = zero
        j0 = cols[p * C]
        one_run = j0 >= 0 and cols[p * C + C - 1] == j0 + C - 1  # cols only increase within a panel
        if row_major and one_run:  # a plain copy, which vectorizes
            for k in range(K):
                for i in range(C):
                    panels[p, k, i] = B[k, j0 + i]
        elif row_major:
            for k in range(K):
                for i in range(C):
                    j = cols[p * C + i]
                    if j >= 0:
                        panels[p, k, i] = B[k, j]
        else:  # B's columns are contiguous: a transpose, in blocks of 16 k that stay in L1
            for k0 in range(0, K, 16):
                for i in range(C):
                    j = cols[p * C + i]
                    if j >= 0:
                        for k in range(k0, min(k0 + 16, K)):
                            panels[p, k, i] = B[k, j]


@kernel
def panel_product(A, panels, out, p0, p1, r0, r1, live, backwards=False):
    """out[r0:r1, p*C : (p+1)*C] = A[r0:r1] @ panels[p] for p0 <= p < p1, whose first ``live``
    columns are real (the rest padding, not computed). The rows go in as few tiles as fit
    them, of nearly equal height. A recurrence alternates ``backwards`` from step to step: the
    panels it used last are still in the core's L2 cache when the next step starts (about
    10% faster when the panels do not all fit)."""
    C, K = panels.shape[2], A.shape[1]
    tiles = (r1 - r0 + TILE_ROWS - 1) // TILE_ROWS
    packed = np.empty((tiles, K, TILE_ROWS), dtype=A.dtype)
    for j in range(tiles):
        n0, n1 = _tile_rows(r0, r1, tiles, j)
        pack_rows(A, n0, n1 - n0, packed[j])
    for i in range(p1 - p0):
        p = p1 - 1 - i if backwards else p0 + i
        cols = min(C, live - (p - p0) * C)
        for j in range(tiles):
            n0, n1 = _tile_rows(r0, r1, tiles, j)
            _tile(packed[j], panels[p], out, n0, n1 - n0, p * C, cols)


@kernel(inline="always")
def _tile_rows(r0, r1, tiles, j):
    """Rows of tile j when ``tiles`` tiles share rows r0..r1 evenly."""
    return r0 + j * (r1 - r0) // tiles, r0 + (j + 1) * (r1 - r0) // tiles


@kernel
def pack_rows(A, n0, rows, packed):
    """packed[k, i] = A[n0 + i, k] for i < rows: one tile's rows of A, k-major, as ``_tile``
    reads them (it reads no further rows). The loop order follows A's layout."""
    K = packed.shape[0]
    if A.strides[1] <= A.strides[0]:
        for i in range(rows):
            for k in range(K):
                packed[k, i] = A[n0 + i, k]
    else:
        for k in range(K):
            for i in range(rows):
                packed[k, i] = A[n0 + i, k]


@kernel
def thread_columns(H, gates, units, C):
    """The columns of each group of units, gate by gate, padded to whole panels.

    Returns (cols, first): group g owns panels first[g] .. first[g+1] and in them the columns
    q*H + u for each gate q and unit units[g] <= u < units[g+1], in that order."""
    Q = len(units) - 1
    first = np.zeros(Q + 1, dtype=np.int64)
    for g in range(Q):
        first[g + 1] = first[g] + (gates * (units[g + 1] - units[g]) + C - 1) // C
    cols = np.full(first[Q] * C, -1, dtype=np.int64)
    for g in range(Q):
        at = first[g] * C
        for q in range(gates):
            for u in range(units[g], units[g + 1]):
                cols[at] = q * H + u
                at += 1
    return cols, first


@kernel
def unit_panels(W, H, gates, units):
    """Room for W's columns of each unit group, packed (``thread_columns``): (panels, cols, first, C)."""
    C = panel_width(W)
    cols, first = thread_columns(H, gates, units, C)
    return np.empty((first[-1], W.shape[0], C), dtype=W.dtype), cols, first, C


@kernel(inline="always")
def gradient_reaching_h(d_pre, t, panels, dh_step, dh, first, rows, units, c):
    """Thread c's share of dh_step at backward step t: the incoming dh at t = T - 1, else
    d_pre[t + 1] @ Wh^T on its packed columns (d_pre: the pre-activation gradients, (T, N, G)).
    Returns its rows, its units and the column of dh_step where those units start."""
    r0, r1, g = share(c, rows, units)
    u0, u1, at = units[g], units[g + 1], first[g] * panels.shape[2]
    if t == d_pre.shape[0] - 1:
        dh_step[r0:r1, at : at + u1 - u0] = dh[r0:r1, u0:u1]
    else:
        panel_product(d_pre[t + 1], panels, dh_step, first[g], first[g + 1], r0, r1, u1 - u0, t % 2 == 1)
    return r0, r1, u0, u1, at


@kernel
def gradient_at_start(d_pre, panels, dh_step, dh, first, rows, units, c):
    """Thread c's share of dh = d_pre[0] @ Wh^T, the gradient at the start state."""
    r0, r1, g = share(c, rows, units)
    u0, u1, at = units[g], units[g + 1], first[g] * panels.shape[2]
    panel_product(d_pre[0], panels, dh_step, first[g], first[g + 1], r0, r1, u1 - u0)
    dh[r0:r1, u0:u1] = dh_step[r0:r1, at : at + u1 - u0]


@kernel(inline="always")
def share(c, rows, units):
    """Thread c's part of a recurrence step: rows r0..r1 of the batch and unit group g.

    ``rows`` and ``units`` are bounds (``even_chunks``); one of them has a single range: the
    threads split either the batch rows or the hidden units."""
    Q = len(units) - 1
    r = c // Q
    return rows[r], rows[r + 1], c % Q


@kernel(inline="always")
def step_row(x, t, n, batch_major):
    """Row n of step t of a sequence held time-major (T, N, ...) or, if batch_major, (N, T, ...):
    contiguous either way, so loops over it vectorize."""
    return x[n, t] if batch_major else x[t, n]


@kernel
def line_chunks(n, threads):
    """Bounds splitting n columns between threads on 64-byte boundaries (for 4-byte elements;
    16 columns of 8 bytes are two lines): a cache line two cores keep writing bounces between
    them, which made a column sum 10x slower."""
    lines = (n + 15) // 16
    parts = max(1, min(threads, lines))
    bounds = np.empty(parts + 1, dtype=np.int64)
    for c in range(parts + 1):
        bounds[c] = min(n, c * lines // parts * 16)
    return bounds


@kernel
def even_chunks(n, parts):
    """Bounds of ``parts`` nearly equal ranges of range(n)."""
    bounds = np.empty(parts + 1, dtype=np.int64)
    for c in range(parts + 1):
        bounds[c] = c * n // parts
    return bounds


@kernel(inline="always")
def add_into(acc, x):
    """acc += x over 1-D slices, which LLVM vectorizes. Not ``acc[j0:j1] += x[j0:j1]`` on a
    2-D array's rows, nor a loop over range(j0, j1): Numba then checks each index for
    wrap-around, the loop stays scalar, and the linear layer's bias took 1 ns an element
    (0.2 of its 1.05 ms at H=100 on one core; 0.18 ns as slices)."""
    for k in range(acc.size):
        acc[k] += x[k]


@kernel(inline="always")
def add_activate(a, rec, is_tanh):
    """a = tanh(a + rec) or sigmoid(a + rec), in place, over 1-D slices (loops LLVM vectorizes)."""
    if is_tanh:
        for j in range(a.size):
            a[j] = tanh_(a[j] + rec[j])
    else:
        for j in range(a.size):
            a[j] = sigmoid_(a[j] + rec[j])


# big GEMMs: BLAS, split across threads -----------------------------------------------------
def _cython_blas_address(name):
    """The address of SciPy's BLAS routine ``name`` (what NumPy's dot uses inside @njit too)."""
    import scipy.linalg.cython_blas

    capsule = scipy.linalg.cython_blas.__pyx_capi__[name]
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype, api.PyCapsule_GetName.argtypes = ctypes.c_char_p, [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))


def _intel_cpu():
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in f)
    except OSError:
        return False


def _blas_choice():
    """RNNCORE_BLAS: "mkl", "scipy" or "auto" (the default): MKL on Intel CPUs only. On an AMD
    EPYC (Zen 3) MKL's single-threaded SGEMM ran the weight-gradient shapes 1.4x slower than
    OpenBLAS (the pair at H=650: 49-53 against 35-37 ms); on Intel it was 9-19% faster."""
    choice = os.environ.get("RNNCORE_BLAS", "auto")
    if choice not in ("auto", "mkl", "scipy"):
        raise ValueError(f"RNNCORE_BLAS must be auto, mkl or scipy, got {choice!r}")
    return choice if choice != "auto" else ("mkl" if _intel_cpu() else "scipy")


def _sequential_mkl():
    """Intel MKL's runtime library (``pip install mkl``, Linux) set to run sequentially, or None:
    not installed, not chosen (``_blas_choice``), or already loaded by someone else (NumPy
    built on MKL: switching its threading would slow it, and its own threads would fight
    Numba's)."""
    if _blas_choice() != "mkl" or not sys.platform.startswith("linux"):
        return None
    paths = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*"))) + [ctypes.util.find_library("mkl_rt")]
    for path in filter(None, paths):
        try:
            ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
            return None  # loaded already: not ours to configure
        except OSError:
            pass
        try:
            mkl = ctypes.CDLL(path)
        except OSError:
            continue
        sequential, lp64 = 1, 0  # MKL_THREADING_SEQUENTIAL; MKL_INTERFACE_LP64: 32-bit integers, as the kernels pass
        configured = (mkl.MKL_Set_Threading_Layer(ctypes.c_int(sequential)) == sequential
                      and mkl.MKL_Set_Interface_Layer(ctypes.c_int(lp64)) == lp64)
        return (mkl, path) if configured else None
    return None


def _blas():
    """{"sgemm": address, "dgemm": address} and the library's path: MKL where installed and
    chosen (on Intel its single-threaded GEMMs made a training step 9-19% faster than
    OpenBLAS), else SciPy's OpenBLAS."""
    found = _sequential_mkl()
    if found is not None:
        mkl, path = found
        return {n: ctypes.cast(getattr(mkl, n + "_"), ctypes.c_void_p).value for n in ("sgemm", "dgemm")}, path
    import scipy.linalg.cython_blas

    return {n: _cython_blas_address(n) for n in ("sgemm", "dgemm")}, scipy.linalg.cython_blas.__file__


# Called through a symbol the JIT linker resolves in each process, so the kernels that call
# them stay cacheable (a ctypes function pointer would be baked into the code). Fortran ABI:
# every argument by address.
_addresses, BLAS_LIBRARY = _blas()
for _name, _address in _addresses.items():
    llvm_binding.add_symbol(f"rnncore_{_name}", _address)
_sgemm, _dgemm = (types.ExternalFunction(f"rnncore_{n}", types.void(*[types.intp] * 13)) for n in ("sgemm", "dgemm"))


@parallel_kernel
def gemm(a, b, out, threads, bias=None):
    """out = a @ b (+ bias); a and b C- or F-contiguous, out C-contiguous.

    Each thread runs single-threaded BLAS on its share of the larger of a and b: rows of a or
    columns of b, so each packs half of the big operand (10-15% faster than always splitting
    rows), adding the bias while its block is in cache. Transposed operands go to BLAS as
    they are (no copy)."""
    P = _shares(a, b, threads)
    work = _blas_workspace(P, a.dtype)
    for c in prange(P):
        _gemm_share(a, b, out, c, P, work, c, bias)


@parallel_kernel
def gemm_three(a1, b1, out1, a2, b2, out2, a3, b3, out3, threads):
    """out1 = a1 @ b1 and out2 = a2 @ b2 in one parallel region, half the threads on each; then
    out3 = a3 @ b3 split between all of them, in the same region.

    For the two weight gradients of a recurrent layer (x^T dA and h^T dA): a whole product on
    each of two threads took 6-9% less time than the two products one after the other, each
    split in two (H = 650: 19.4 -> 18.3 ms; H = 100: 0.63 -> 0.575 ms), as BLAS runs nearer
    its speed on a whole product than on half of one. The third is the input gradient dA Wx^T:
    in a region of its own it waited for TBB's workers to wake (20-35 us once they have idled
    50 us) after the Python that called it. (Three products always: an optional third compiled
    a second kernel, 9 s a dtype.)"""
    P1, P2 = _shares(a1, b1, max(1, threads // 2)), _shares(a2, b2, max(1, threads - threads // 2))
    work = _blas_workspace(2 * (P1 + P2), a1.dtype)
    for c in prange(P1 + P2):
        if c < P1:
            _gemm_share(a1, b1, out1, c, P1, work, c, None)
        else:
            _gemm_share(a2, b2, out2, c - P1, P2, work, c, None)
        _gemm_share(a3, b3, out3, c, P1 + P2, work, P1 + P2 + c, None)


@kernel(inline="always")
def _shares(a, b, threads):
    """How many threads share out = a @ b: one per row of a or column of b at most."""
    return max(1, min(threads, a.shape[0] if a.size >= b.size else b.shape[1]))


@kernel(inline="always")
def _blas_workspace(shares, dtype):
    """BLAS takes every argument by address: per share the integers m, n, k, lda, ldb, ldc;
    then alpha = 1, beta = 0 and the flags 'N' (as stored) and 'T' (transposed)."""
    ints = np.empty((shares, 6), dtype=np.int32)
    scalars = np.zeros(2, dtype=dtype)
    scalars[0] = 1
    flags = np.full(2, ord("N"), dtype=np.uint8)
    flags[1] = ord("T")
    return ints, scalars, flags


@kernel(inline="always")
def _gemm_share(a, b, out, c, P, work, slot, bias):
    """Share c of P of out = a @ b (+ bias): rows of a, or columns of b, whichever operand is
    larger; ``slot``: this share's row of the integer workspace."""
    ints, scalars, flags = work
    M, K = a.shape
    J = b.shape[1]
    by_rows = a.size >= b.size
    lo, hi = c * (M if by_rows else J) // P, (c + 1) * (M if by_rows else J) // P
    r0, r1, j0, j1 = (lo, hi, 0, J) if by_rows else (0, M, lo, hi)
    if r1 <= r0 or j1 <= j0:
        return
    if K == 0:  # no BLAS call: its checks of the leading dimensions of empty operands vary
        out[r0:r1, j0:j1] = 0
    else:
        # column-major BLAS sees out^T (n, m) = b^T (n, K) @ a^T (K, m)
        pa = a.ctypes.data + r0 * a.strides[0]
        pb = b.ctypes.data + j0 * b.strides[1]
        po = out.ctypes.data + r0 * out.strides[0] + j0 * out.itemsize
        tb, ldb = _blas_layout(b)
        ta, lda = _blas_layout(a)
        v = ints[slot]
        v[0], v[1], v[2], v[3], v[4], v[5] = j1 - j0, r1 - r0, K, ldb, lda, out.strides[0] // out.itemsize
        at, alpha, f = v.ctypes.data, scalars.ctypes.data, flags.ctypes.data
        if a.itemsize == 4:
            _sgemm(f + tb, f + ta, at, at + 4, at + 8, alpha, pb, at + 12, pa, at + 16, alpha + 4, po, at + 20)
        else:
            _dgemm(f + tb, f + ta, at, at + 4, at + 8, alpha, pb, at + 12, pa, at + 16, alpha + 8, po, at + 20)
    if bias is not None:  # while the block is in cache
        for i in range(r0, r1):
            add_into(out[i, j0:j1], bias[j0:j1])


@kernel(inline="always")
def _blas_layout(x):
    """(1 if BLAS reads x transposed else 0, leading dimension) for a C- or F-contiguous matrix
    in the row-major call of ``gemm``."""
    rows, cols = x.shape
    if x.strides[1] == x.itemsize and (rows == 1 or x.strides[0] >= cols * x.itemsize):
        return 0, max(1, x.strides[0] // x.itemsize if rows > 1 else cols)
    return 1, max(1, x.strides[1] // x.itemsize if cols > 1 else rows)
