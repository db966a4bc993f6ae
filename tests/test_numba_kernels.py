"""The numba backend's own machinery: BLAS binding and threads, float32 math, the one recurrence
driver and its thread splits for every cell, the GEMM kernel, compiling once per array type and
only what runs, caching across processes, imports without side effects."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CELL_KINDS, layer_class, random_params
from test_parity import TOLERANCE, rel_err, run_recurrent

import rnncore

pytest.importorskip("numba")
nb = pytest.importorskip("rnncore.backends.numba_backend")


def run_python(code, **env):
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_numba_runs_scipy_blas_single_threaded():
    """Two busy thread pools on two cores stall each other: the numba backend keeps one."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    libs = rnncore.get_backend("numba").blas_libraries
    assert libs, "SciPy's BLAS was not found"
    info = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
    assert all(info[path] == 1 for path in libs)


def _arrays(types_):
    """The array types in a signature, tuples opened."""
    from numba import types

    for t in types_:
        if isinstance(t, types.BaseTuple):
            yield from _arrays(t.types)
        elif isinstance(t, types.Array):
            yield t


def test_numba_recurrences_compile_once_for_any_weight_layout():
    """PyTorch's weights go in transposed (Fortran order), an upstream gradient may be read-only:
    neither may compile a second copy of a recurrence driver (each array type Numba sees is
    seconds of compiling); every cell's driver takes C-ordered, writable, aligned arrays only."""
    from numba import types

    be = rnncore.get_backend("numba")
    rng = np.random.default_rng(4)
    for kind in CELL_KINDS:
        cls = layer_class(kind)
        G, H = cls.cell.gates * 3, 3
        Wx, Wh = (np.asfortranarray(rng.standard_normal((3, G)).astype(np.float32)) for _ in range(2))
        biases = [np.zeros(G, np.float32) for _ in cls.cell.param_names[2:]]
        layer = cls(Wx, Wh, *biases, backend=be)
        layer.backward(layer.forward(rng.standard_normal((2, 4, 3)).astype(np.float32)))
        frozen = rng.standard_normal((2, 4, H)).astype(np.float32)
        frozen.setflags(write=False)  # read-only upstream gradient: copied, not a new compile
        layer.forward(rng.standard_normal((2, 4, 3)).astype(np.float32))
        layer.backward(frozen)
        module = rnncore._kernels.numba_module(f"{kind}_numba")
        for driver in (module.forward, module.backward):
            plain = [sig for sig in driver.signatures  # float32 only, without lengths (None: the last argument but two)
                     if {a.dtype for a in _arrays(sig) if a.dtype in (types.float32, types.float64)} == {types.float32}
                     and sig[-3] == types.none]
            assert len(plain) == 1, (kind, driver.signatures)
            layouts = {(a.layout, a.mutable, a.aligned) for a in _arrays(plain[0])}
            assert layouts == {("C", True, True)}, (kind, plain)


def test_numba_matmul_into_another_dtype():
    """An out of another dtype than the operands goes to NumPy's matmul, not to BLAS (which
    would write float32 bits into a float64 buffer)."""
    be = rnncore.get_backend("numba")
    a, b = np.random.default_rng(0).standard_normal((2, 6, 6)).astype(np.float32)
    out = np.empty((6, 6))
    be.matmul(a, b, out=out)
    assert rel_err(a.astype(np.float64) @ b, out) <= TOLERANCE[np.float32]


def test_numba_float32_math_ulps():
    """The kernels' own float32 exp, tanh and sigmoid (vectorizable, not libm's) stay within
    1, 1.5 and 2.5 ulp of the float64 truth (NumPy's float32 ones: 2.2, 1.4 and 3.1), and
    NaN and inf go through."""
    import numba

    fm = rnncore._kernels.numba_module("numba.float32_math")

    @numba.njit
    def apply(x, out):
        for j in range(x.size):
            out[0, j], out[1, j], out[2, j] = fm.exp_(x[j]), fm.tanh_(x[j]), fm.sigmoid_(x[j])

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(100_000) * 4, rng.uniform(-120, 120, 50_000),
                        rng.standard_normal(10_000) * 1e-4]).astype(np.float32)
    got = np.empty((3, x.size), np.float32)
    apply(x, got)
    x64 = x.astype(np.float64)
    # exp where e^x is a normal float32, short of its last 0.4 before overflow: e^88.38 ..
    # e^88.72 overflow early (the kernels take e^x only inside tanh and sigmoid, or of x <= 0)
    exp_range = (x > -87.3) & (x < 88.3)
    checks = [("exp", 1.0, got[0], np.exp(x64), exp_range), ("tanh", 1.5, got[1], np.tanh(x64), ~np.isnan(x)),
              ("sigmoid", 2.5, got[2], 1 / (1 + np.exp(-x64)), x > -87.3)]
    for name, limit, out, truth, where in checks:
        ulp = np.spacing(np.abs(truth[where]).astype(np.float32)).astype(np.float64)
        worst = (np.abs(out[where] - truth[where]) / ulp).max()
        assert worst <= limit, f"{name}: {worst:.2f} ulp"
    special = np.array([np.nan, np.inf, -np.inf], np.float32)
    out = np.empty((3, 3), np.float32)
    apply(special, out)
    np.testing.assert_array_equal(out[:, 0], np.nan)
    np.testing.assert_array_equal(out[1:, 1:], [[1, -1], [1, 0]])
    assert out[0, 1] == np.inf and 0 <= out[0, 2] < 2e-38  # e^-inf: e^-87.3, where the clamp stops


BLAS_CHECK = """
import numpy as np, rnncore
be = rnncore.get_backend("numba")
a, b = np.random.default_rng(0).standard_normal((2, 70, 70)).astype(np.float32)
assert np.allclose(be.matmul(a, b[:, :50]), a @ b[:, :50], rtol=1e-4, atol=1e-4)
print(be.blas)
"""


@pytest.mark.parametrize("choice", ["auto", "mkl", "scipy"])
def test_numba_blas_choice(choice):
    """RNNCORE_BLAS: MKL (sequential) where installed and chosen (auto: on Intel CPUs only),
    SciPy's OpenBLAS otherwise; both give the product. In a fresh process: the choice is made
    once, when the backend starts."""
    import ctypes.util
    import glob

    blas = rnncore._kernels.numba_module("numba.blas")
    out = run_python(BLAS_CHECK, RNNCORE_BLAS=choice, MKL_INTERFACE_LAYER="ILP64")  # LP64 is forced either way
    mkl_installed = sys.platform.startswith("linux") and (
        glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")) or ctypes.util.find_library("mkl_rt"))
    wanted = choice == "mkl" or (choice == "auto" and blas._intel_cpu())
    assert ("libmkl_rt" in out) == bool(wanted and mkl_installed), out


def test_numba_blas_choice_rejects_unknown():
    env = dict(os.environ, RNNCORE_BLAS="openblas")
    out = subprocess.run([sys.executable, "-c", "import rnncore; rnncore.get_backend('numba')"], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode != 0 and "RNNCORE_BLAS must be auto, mkl or scipy, got 'openblas'" in out.stderr


def seam_outputs(be, cell, arrays, lengths, scale):
    """Everything the two kernels return or write, on host copies of ``arrays``."""
    xw, states0, Wh, bh, dhs, dstates_T = (a.copy() if isinstance(a, np.ndarray) else a for a in arrays)
    hs, gates, saved = be.recurrence_forward(cell, xw, states0, Wh, bh, lengths)
    forward = [hs.copy(), *(s.copy() for s in saved)]
    if lengths is not None:  # a padded step's saved rows are left as they were: not compared
        valid = (np.arange(len(hs))[:, None] < lengths)[..., None]
        forward[1:] = [np.where(valid, s, 0) for s in forward[1:]]  # (uninitialized there: may be NaN)
    dxw, dhw, dstates0 = be.recurrence_backward(cell, dhs, hs, gates, saved, states0, Wh, dstates_T, scale, lengths)
    return forward + [dxw, dhw, *dstates0]


def recurrence_against_numpy(monkeypatch, kind, threads, N, H, l2_bytes):
    """Runs the cell through a layer and at the seam (sequence lengths 0, partial and full, a
    per-step gradient scale) on the numba backend with ``threads`` threads and Wh kept in L2 up
    to ``l2_bytes``, checks everything against the NumPy backend (its own Python loop of
    whole-batch NumPy calls, no numba kernel), and returns the (row bounds, unit bounds) every
    numba call actually handed the compiled drivers."""
    import numba

    be, numpy = rnncore.get_backend("numba"), rnncore.get_backend("numpy")
    monkeypatch.setattr(nb, "WEIGHTS_KEPT_IN_L2", l2_bytes(H, layer_class(kind).cell) if callable(l2_bytes)
                        else l2_bytes)
    taken, masked = [], []
    split = be._split

    def recorded(N, H, Wh, lengths=None):
        rows, units = split(N, H, Wh, lengths)
        if lengths is None or not lengths.size:
            taken.append((rows.tolist(), units.tolist()))
        else:
            masked.append((rows.tolist(), units.tolist(), lengths.copy()))
        return rows, units

    monkeypatch.setattr(be, "_split", recorded)
    cell = layer_class(kind).cell
    T, D = 6, 5
    rng = np.random.default_rng(N * H + threads)
    params = random_params(rng, kind, D, H, np.float64)
    xs, dhs = (rng.standard_normal(s) for s in ((N, T, D), (N, T, H)))
    states = [rng.standard_normal((N, H)) for _ in cell.states]
    expected = run_recurrent(numpy, kind, params, xs, dhs, states)
    G = cell.gates * H
    seam = [rng.standard_normal((T, N, G)), states, params[1], params[3] if cell.recurrent_bias else None,
            dhs.transpose(1, 0, 2), [rng.standard_normal((N, H)) for _ in cell.states]]
    lengths, scale = rng.integers(0, T + 1, N), rng.uniform(0, 2, T)
    lengths[0] = T
    expected_seam = seam_outputs(numpy, cell, seam, lengths, scale)
    assert not taken  # the reference ran no numba driver
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        got = run_recurrent(be, kind, params, xs, dhs, states)
        got_seam = seam_outputs(be, cell, seam, lengths, scale)
    finally:
        numba.set_num_threads(before)
    for k, (e, g) in enumerate(zip(expected + expected_seam, got + got_seam, strict=True)):
        assert rel_err(e, g) <= 1e-12, f"output {k}: {rel_err(e, g):.2e}"
    assert taken and all(t == taken[0] for t in taken), taken  # forward and backward, layer and seam
    rows, units = taken[0]
    for masked_rows, masked_units, masked_lengths in masked:  # with lengths: the same units; rows
        assert masked_units == units and len(masked_rows) == len(rows)  # shared by steps within the lengths
        assert masked_rows[0] == 0 and masked_rows[-1] == N and masked_rows == sorted(masked_rows)
        work = np.maximum(masked_lengths, 1)
        parts = [work[a:b].sum() for a, b in zip(masked_rows, masked_rows[1:])]
        assert max(parts) <= work.sum() / (len(rows) - 1) + work.max(), (masked_rows, masked_lengths)
    return taken[0]


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("split", ["rows", "units"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("N, H", [(1, 70), (5, 26), (13, 3), (37, 45)])
def test_numba_recurrence_splits(monkeypatch, kind, split, threads, N, H):
    """Threads share a step by batch rows (Wh fits in L2) or by hidden units; both, with tiles
    of up to 4 or 10 rows (a share of 5 rows goes as 2 + 3, of 13 as 3 + 3 + 3 + 4) and panels
    of 16-32 columns whose last is cut at odd places (one, two or three vectors wide), compute
    what NumPy does: through a layer, and at the seam with sequence lengths (0, partial, full)
    and a per-step scale of the gradient, which the same compiled drivers run. Each case checks
    which split the drivers were given: by rows only with 2 threads and at least 2 rows."""
    import numba

    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    rows, units = recurrence_against_numpy(monkeypatch, kind, threads, N, H,
                                           1 << 40 if split == "rows" else 0)
    if split == "rows" and N >= threads == 2:
        assert rows == [0, N // 2, N] and units == [0, H], (rows, units)
    else:  # one range of rows; the units in 64-byte lines, as many groups as threads and lines allow
        assert rows == [0, N], (rows, units)
        assert len(units) - 1 == min(threads, -(-H // 16)) and units[0] == 0 and units[-1] == H, units


ROW_SPLIT_FALLBACKS = {
    # name: (N, l2_bytes(H, cell)): a row split asked for or not, and the units the threads get instead
    "fewer rows than threads": (1, lambda H, cell: 1 << 40),  # Wh fits in L2, but 1 row for 2 threads
    "Wh one byte over L2": (5, lambda H, cell: H * cell.gates * H * 8 - 1),  # float64 Wh (H, gates*H)
}


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("case", list(ROW_SPLIT_FALLBACKS))
def test_numba_row_split_falls_back_to_units(monkeypatch, kind, case):
    """Where splitting by rows cannot pay (fewer batch rows than threads; Wh one byte over what a
    core's L2 keeps), the threads split the hidden units instead: 2 threads, H = 45 is 3 lines of
    16 units, so groups [0, 16) and [16, 45), all 5 (or 1) rows each; and what they compute is
    what the NumPy backend does. The control beside it: Wh exactly at the limit, 5 rows, goes by
    rows (2 + 3) on the same shapes."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    N, l2_bytes = ROW_SPLIT_FALLBACKS[case]
    rows, units = recurrence_against_numpy(monkeypatch, kind, 2, N, 45, l2_bytes)
    assert (rows, units) == ([0, N], [0, 16, 45])
    exactly = recurrence_against_numpy(monkeypatch, kind, 2, 5, 45, lambda H, cell: H * cell.gates * H * 8)
    assert exactly == ([0, 2, 5], [0, 45])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_numba_gemm_shares_and_layouts(dtype, threads):
    """The numba GEMM hands each thread the rows of a or the columns of b (whichever operand is
    larger) and passes C- or F-ordered operands to BLAS as they lie (one compiled kernel for
    every layout); every split, layout, empty and one-wide shape gives a @ b (+ bias)."""
    be = rnncore.get_backend("numba")
    gemm = rnncore._kernels.numba_module("numba.gemm").gemm
    rng = np.random.default_rng(threads)
    shapes = [(1, 1, 1), (0, 3, 4), (3, 0, 5), (4, 3, 0), (1, 50, 70), (60, 50, 1), (70, 33, 5), (5, 33, 70), (2, 9, 3)]
    for M, K, J in shapes:
        for a_order, b_order in [("C", "C"), ("F", "C"), ("C", "F"), ("F", "F")]:
            a = np.asarray(rng.standard_normal((M, K)), dtype=dtype, order=a_order)
            b = np.asarray(rng.standard_normal((K, J)), dtype=dtype, order=b_order)
            bias = rng.standard_normal(J).astype(dtype)
            for with_bias in (False, True):
                out = np.full((M, J), np.nan, dtype=dtype)
                gemm(*be._product(a, b, out), bias if with_bias else np.empty(0, dtype), threads)
                expected = a.astype(np.float64) @ b + (bias if with_bias else 0)
                where = f"{M}x{K}x{J} {a_order}{b_order} bias={with_bias}"
                assert not np.isnan(out).any(), where
                assert rel_err(expected, out) <= TOLERANCE[dtype], where
    assert [str(sig[0].dtype) for sig in gemm.signatures].count(np.dtype(dtype).name) == 1, gemm.signatures


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_numba_gemm_three(dtype, threads):
    """Two products in one region, half the threads each, then a third that all the threads
    split, on shapes that differ from each other (any may be empty or narrower than its
    threads); transposed views as the layer passes them."""
    be = rnncore.get_backend("numba")
    gemm_three = rnncore._kernels.numba_module("numba.gemm").gemm_three
    rng = np.random.default_rng(threads)
    for (M1, K1, J1), (M2, K2, J2), (M3, K3, J3) in [((7, 40, 9), (3, 40, 9), (40, 9, 7)),
                                                      ((0, 5, 4), (6, 5, 4), (1, 4, 5)),
                                                      ((30, 20, 1), (1, 1, 1), (3, 1, 30)),
                                                      ((5, 0, 3), (2, 6, 50), (0, 3, 2))]:
        a1 = rng.standard_normal((K1, M1)).astype(dtype).T  # F-ordered, as x^T
        a2 = rng.standard_normal((M2, K2)).astype(dtype)
        a3 = rng.standard_normal((M3, K3)).astype(dtype)
        b1, b2 = rng.standard_normal((K1, J1)).astype(dtype), rng.standard_normal((K2, J2)).astype(dtype)
        b3 = rng.standard_normal((J3, K3)).astype(dtype).T  # F-ordered, as Wx^T
        outs = [np.full(shape, np.nan, dtype=dtype) for shape in ((M1, J1), (M2, J2), (M3, J3))]
        gemm_three(*(be._product(a, b, out) for a, b, out in zip((a1, a2, a3), (b1, b2, b3), outs)), threads)
        for out, (a, b) in zip(outs, ((a1, b1), (a2, b2), (a3, b3))):
            assert not np.isnan(out).any(), out.shape
            assert rel_err(a.astype(np.float64) @ b, out) <= TOLERANCE[dtype]


KERNEL_MODULES = ("rnn_numba", "lstm_numba", "gru_numba", "training_numba", "numba.jit", "numba.float32_math",
                  "numba.loops", "numba.schedule", "numba.register_tile", "numba.blas", "numba.gemm",
                  "numba.recurrence")

FRESH_PROCESS = f"""
import sys, numpy as np, llvmlite.binding as llvm
import rnncore
from rnncore import _kernels

PRODUCT = "rnncore_kernels_numba_register_tile_panel_product_float32"


def bound(name):
    return bool(llvm.address_of_symbol(name))


def mkl_loaded():
    with open("/proc/self/maps") as f:
        return "libmkl_rt" in f.read()


def kernels():
    return [f for m in list(sys.modules.values()) if m.__name__.startswith("rnncore.kernels.")
            for f in vars(m).values() if hasattr(f, "signatures") and hasattr(f, "stats")]


modules = [_kernels.numba_module(name) for name in {KERNEL_MODULES!r}]
from rnncore.backends import numba_backend
print("imported", bound("rnncore_sgemm"), bound(PRODUCT), mkl_loaded(), sum(len(k.signatures) for k in kernels()))
be = rnncore.get_backend("numba")
layer = rnncore.TimeRNN(*(np.full(s, 0.1, np.float32) for s in ((3, 4), (4, 4), (4,))), backend=be)
layer.backward(layer.forward(np.ones((2, 5, 3), np.float32)))
rnn = _kernels.numba_module("rnn_numba")
print("started", bound("rnncore_sgemm"), bound(PRODUCT), mkl_loaded(), "libmkl_rt" in be.blas)
hits = [(sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values())) for d in (rnn.forward, rnn.backward)]
print("cached", hits == [(1, 0), (1, 0)])
print("dtypes", sorted({{str(a.dtype) for k in kernels() for sig in k.signatures for a in sig if hasattr(a, "dtype")
                         and str(a.dtype).startswith("float")}}))
"""


def test_numba_kernels_import_without_side_effects_and_cache_across_processes():
    """Importing every numba kernel module binds no BLAS symbol, loads no MKL and compiles nothing:
    ``NumbaBackend()`` binds BLAS, a cell's first run binds the product its drivers call. A second
    process loads the RNN's drivers from Numba's cache (each made from the one driver template by
    ``numba/jit.py``'s ``instance``) instead of compiling them, and a float32 run compiles no
    float64 kernel."""
    first = run_python(FRESH_PROCESS).split("\n")
    assert first[0] == "imported False False False 0", first
    out = run_python(FRESH_PROCESS).split("\n")
    assert out[0] == "imported False False False 0", out
    started = out[1].split()
    assert started[1:3] == ["True", "True"] and started[3] == started[4], out  # MKL loaded iff it is the BLAS
    assert out[2] == "cached True", out
    assert out[3] == "dtypes ['float32']", out


def test_compiling_ahead_fills_the_cache_the_backward_then_loads(tmp_path):
    """``compile_ahead`` compiles the backward driver, the gradient GEMMs, the loss, the
    embedding's gradient, the column sum and the update in a process of its own: a training
    then loads each from the cache (a cache hit, no compile), and with the cache warm a second
    call starts nothing."""
    code = textwrap.dedent("""
        import numpy as np, rnncore
        from rnncore import _kernels
        from rnncore.backends.numba_backend import _backward_cached
        from rnncore.cells import RNN
        from rnncore.optim import SGD
        be = rnncore.get_backend("numba")
        be.compile_ahead(RNN, np.float32, np.int32)
        assert be._ahead[("rnn", "float32")].wait() == 0
        assert _backward_cached(RNN, np.dtype(np.float32))
        rng = np.random.default_rng(0)
        layer = rnncore.TimeRNN(*[rng.standard_normal(s).astype(np.float32) for s in ((3, 5), (5, 5), (5,))],
                                backend=be)
        layer.forward(rng.standard_normal((4, 6, 3)).astype(np.float32))
        layer.backward(np.ones((4, 6, 5), np.float32))
        SGD(0.1).update(layer.params, layer.grads, be)
        ids = rng.integers(0, 5, 24).astype(np.int32)  # a corpus's ids
        be.softmax_cross_entropy(rng.standard_normal((24, 5)).astype(np.float32), ids)
        be.embedding_scatter_add(np.zeros((5, 3), np.float32), ids, rng.standard_normal((24, 3)).astype(np.float32))
        training = _kernels.numba_module("training_numba")
        for kernel in (_kernels.numba_module("rnn_numba").backward, _kernels.numba_module("numba.gemm").gemm_three,
                       training.axpy, training.softmax_cross_entropy, training.embedding_scatter_add):
            assert kernel.stats.cache_hits and not kernel.stats.cache_misses, (kernel, kernel.stats)
        fresh = type(be)()
        fresh.compile_ahead(RNN, np.float32)
        assert not fresh._ahead
        print("ok")
    """)
    script, work = tmp_path / "check.py", tmp_path / "work"
    script.write_text(code)
    work.mkdir()  # the user's folder: a module there must not stand in for a library in the child
    (work / "threadpoolctl.py").write_text("open('shadowed', 'w').close()")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "RNNCORE_COMPILE_AHEAD": "1"}
    out = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
    assert not (work / "shadowed").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a parent-death signal is Linux's")
def test_the_compiling_process_ends_with_its_parent(tmp_path):
    code = textwrap.dedent("""
        import os, numpy as np, rnncore
        from rnncore.cells import LSTM
        be = rnncore.get_backend("numba")
        be.compile_ahead(LSTM, np.float32)
        print(be._ahead[("lstm", "float32")].pid, flush=True)
        os._exit(0)  # dies before its first backward
    """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "RNNCORE_COMPILE_AHEAD": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    stat = Path(f"/proc/{int(out.stdout)}/stat")
    deadline = time.monotonic() + 10  # it compiles for 10 s or more when left alone
    while stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
