"""The recurrent product near the core's peak: Wh packed into panels, a register tile in LLVM IR.

A recurrence step multiplies a few rows (a batch of 20) by Wh: too few rows for BLAS to reach
its speed, so each thread packs the columns of Wh its units need into contiguous panels once
per sequence (``unit_panels``, ``pack_panels``) and every step streams them through ``_tile``,
which keeps a tile of the product in registers (``panel_product``).
"""
import functools

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, from_dtype, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .float32_math import like
from .jit import OPTIONS, callee, kernel
from .schedule import thread_columns


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


@callee  # not inlined: inlined into the drivers' parallel loops it packed slower (5 of 200 us, RNN at 100)
def pack_panels(W, transposed, cols, panels, p0, p1):
    """panels[p, k, i] = B[k, cols[p * C + i]] for B = W^T if ``transposed`` else W (C order
    either way: one compiled copy), zero where cols is -1, for p0 <= p < p1.

    Packing makes each panel one contiguous (K, C) block the tile streams through; the
    loop order follows B's layout so the reads are contiguous either way."""
    K, C = panels.shape[1], panels.shape[2]
    zero = like(panels, 0)
    for p in range(p0, p1):
        for i in range(C):
            if cols[p * C + i] < 0:
                panels[p, :, i] = zero
        j0 = cols[p * C]
        one_run = j0 >= 0 and cols[p * C + C - 1] == j0 + C - 1  # cols only increase within a panel
        if transposed:  # B's columns are W's rows: a transpose, in blocks of 16 k that stay in L1
            for k0 in range(0, K, 16):
                for i in range(C):
                    j = cols[p * C + i]
                    if j >= 0:
                        for k in range(k0, min(k0 + 16, K)):
                            panels[p, k, i] = W[j, k]
        elif one_run:  # a plain copy, which vectorizes
            for k in range(K):
                for i in range(C):
                    panels[p, k, i] = W[k, j0 + i]
        else:
            for k in range(K):
                for i in range(C):
                    j = cols[p * C + i]
                    if j >= 0:
                        panels[p, k, i] = W[k, j]


@callee
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


@callee
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


# Not inlined: in a driver (a parallel kernel) its np.zeros and np.full became parallel loops, a
# parallel region each a call (6-9% of the RNN's recurrences at H=100).
@callee
def unit_panels(W, transposed, H, gates, units):
    """Room for the columns of B = W^T if ``transposed`` else W that each unit group needs, packed
    (``thread_columns``): (panels, cols, first, C)."""
    C = PANEL_BYTES // W.itemsize
    cols, first = thread_columns(H, gates, units, C)
    return np.empty((first[-1], W.shape[1] if transposed else W.shape[0], C), dtype=W.dtype), cols, first, C


# The drivers call panel_product through a symbol, as the GEMM kernels call BLAS: Numba links a
# callee's code into every function that calls it and optimizes and emits it again in each (a
# parallel loop is three such functions), and the tile's twenty loops, linked into an LSTM's
# two drivers, were 8 of the 25 s they took to compile. Behind a symbol it compiles once a dtype.
_ADDRESSES = types.void(*[types.intp] * 15)
_SYMBOL = __name__.replace(".", "_") + "_panel_product_"  # + dtype; the package's own: ab_kernels.py loads two


def product(A, panels, out, p0, p1, r0, r1, live, backwards):
    """``panel_product`` for the drivers, through the symbol ``bind_product`` registers (C order)."""


@overload(product, jit_options=OPTIONS)
def _product_impl(A, panels, out, p0, p1, r0, r1, live, backwards):
    external = types.ExternalFunction(f"{_SYMBOL}{A.dtype}", _ADDRESSES)

    def call(A, panels, out, p0, p1, r0, r1, live, backwards):
        external(A.ctypes.data, A.shape[0], A.shape[1], panels.ctypes.data, panels.shape[0], panels.shape[2],
                 out.ctypes.data, out.shape[0], out.shape[1], p0, p1, r0, r1, live, 1 if backwards else 0)

    return call


def _by_address(a, rows, K, p, P, C, o, out_rows, out_cols, p0, p1, r0, r1, live, backwards):
    """panel_product on arrays given by address and shape (all C order)."""
    panel_product(carray(a, (rows, K)), carray(p, (P, K, C)), carray(o, (out_rows, out_cols)), p0, p1, r0, r1, live,
                  backwards != 0)


@functools.cache
def bind_product(dtype):
    """Compile (or load from the cache) panel_product for ``dtype`` and register the symbol the
    drivers call it by; once a process, before a driver of that dtype is first called."""
    pointer, intp = types.CPointer(from_dtype(np.dtype(dtype))), types.intp
    compiled = cfunc(types.void(pointer, intp, intp, pointer, intp, intp, pointer, *[intp] * 8), cache=True,
                     **OPTIONS)(_by_address)
    llvm_binding.add_symbol(f"{_SYMBOL}{np.dtype(dtype)}", compiled.address)
