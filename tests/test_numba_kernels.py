"""The numba backend's own machinery: BLAS binding and threads, float32 math, the register tile,
the thread splits of the recurrences, the GEMM kernels, compiling once per array type."""
import os

import numpy as np
import pytest
from conftest import random_params
from test_parity import TOLERANCE, rel_err, run_recurrent

import rnncore


def test_numba_runs_scipy_blas_single_threaded():
    """Two busy thread pools on two cores stall each other: the numba backend keeps one."""
    be = pytest.importorskip("rnncore.backends.numba_backend")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    libs = rnncore.get_backend("numba").blas_libraries
    assert libs, "SciPy's BLAS was not found"
    info = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
    assert all(info[path] == 1 for path in libs)
    assert be is not None


def test_numba_recurrences_compile_once_for_any_weight_layout():
    """PyTorch's weights go in transposed (Fortran order), an upstream gradient may be read-only:
    neither may compile a second copy of a recurrence kernel (each array type Numba sees is
    ~30 s of compiling the first time)."""
    nb = pytest.importorskip("rnncore.backends.numba_backend")
    from numba import types

    be = rnncore.get_backend("numba")
    rng = np.random.default_rng(4)
    for cls, G in ((rnncore.TimeRNN, 3), (rnncore.TimeLSTM, 12)):
        Wx, Wh = (np.asfortranarray(rng.standard_normal((3, G)).astype(np.float32)) for _ in range(2))
        layer = cls(Wx, Wh, np.zeros(G, np.float32), backend=be)
        layer.backward(layer.forward(rng.standard_normal((2, 4, 3)).astype(np.float32)))
        frozen = rng.standard_normal((2, 4, G // (4 if cls is rnncore.TimeLSTM else 1))).astype(np.float32)
        frozen.setflags(write=False)  # read-only upstream gradient: copied, not a new compile
        layer.forward(rng.standard_normal((2, 4, 3)).astype(np.float32))
        layer.backward(frozen)
    for kernel in (nb._rnn.rnn_forward, nb._rnn.rnn_backward, nb._lstm.lstm_forward, nb._lstm.lstm_backward):
        arrays = [arg for sig in kernel.signatures for arg in sig if isinstance(arg, types.Array)]
        assert {(a.layout, a.mutable, a.aligned) for a in arrays} == {("C", True, True)}, (kernel.__name__, arrays)


def test_numba_matmul_into_another_dtype():
    """An out of another dtype than the operands goes to NumPy's matmul, not to BLAS (which
    would write float32 bits into a float64 buffer)."""
    pytest.importorskip("rnncore.backends.numba_backend")
    be = rnncore.get_backend("numba")
    a, b = np.random.default_rng(0).standard_normal((2, 6, 6)).astype(np.float32)
    out = np.empty((6, 6))
    be.matmul(a, b, out=out)
    assert rel_err(a.astype(np.float64) @ b, out) <= TOLERANCE[np.float32]


def test_numba_float32_math_ulps():
    """The kernels' own float32 exp, tanh and sigmoid (vectorizable, not libm's) stay within
    1, 1.5 and 2.5 ulp of the float64 truth (NumPy's float32 ones: 2.2, 1.4 and 3.1), and
    NaN and inf go through."""
    numba = pytest.importorskip("numba")
    be = pytest.importorskip("rnncore.backends.numba_backend")
    cm = be._common

    @numba.njit
    def apply(x, out):
        for j in range(x.size):
            out[0, j], out[1, j], out[2, j] = cm.exp_(x[j]), cm.tanh_(x[j]), cm.sigmoid_(x[j])

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(100_000) * 4, rng.uniform(-120, 120, 50_000),
                        rng.standard_normal(10_000) * 1e-4]).astype(np.float32)
    got = np.empty((3, x.size), np.float32)
    apply(x, got)
    x64 = x.astype(np.float64)
    # exp where e^x is a normal float32, short of its last 0.4 before overflow: e^88.38 ..
    # e^88.72 overflow early (the kernels take e^x only inside tanh and sigmoid, or of x <= 0)
    exp_range = (x > -87.3) & (x < 88.3)
    checks = [("exp", 1.0, got[0], np.exp(x64), exp_range), ("tanh", 1.5, got[1], np.tanh(x64), x == x),
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
    once, at import."""
    pytest.importorskip("rnncore.backends.numba_backend")
    import ctypes.util
    import glob
    import subprocess
    import sys

    from rnncore.backends.numba_backend import _common

    env = dict(os.environ, RNNCORE_BLAS=choice, MKL_INTERFACE_LAYER="ILP64")  # LP64 is forced either way
    out = subprocess.run([sys.executable, "-c", BLAS_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    mkl_installed = sys.platform.startswith("linux") and (
        glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")) or ctypes.util.find_library("mkl_rt"))
    wanted = choice == "mkl" or (choice == "auto" and _common._intel_cpu())
    uses_mkl = "libmkl_rt" in out.stdout
    assert uses_mkl == bool(wanted and mkl_installed), out.stdout


def test_numba_blas_choice_rejects_unknown():
    pytest.importorskip("rnncore.backends.numba_backend")
    import subprocess
    import sys

    env = dict(os.environ, RNNCORE_BLAS="openblas")
    out = subprocess.run([sys.executable, "-c", "import rnncore; rnncore.get_backend('numba')"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "RNNCORE_BLAS must be auto, mkl or scipy, got 'openblas'" in out.stderr


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
@pytest.mark.parametrize("split", ["rows", "units"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("N, H", [(1, 70), (5, 26), (13, 3), (37, 45)])
def test_numba_recurrence_splits(monkeypatch, kind, split, threads, N, H):
    """Threads share a step by batch rows (Wh fits in L2) or by hidden units; both, with tiles
    of up to 4 or 10 rows (a share of 5 rows goes as 2 + 3, of 13 as 3 + 3 + 3 + 4) and panels
    of 16-32 columns whose last is cut at odd places (one, two or three vectors wide), compute
    what NumPy does."""
    numba = pytest.importorskip("numba")
    nb = pytest.importorskip("rnncore.backends.numba_backend")
    monkeypatch.setattr(nb, "WEIGHTS_KEPT_IN_L2", 1 << 40 if split == "rows" else 0)
    be = rnncore.get_backend("numba")
    T, D = 6, 5
    rng = np.random.default_rng(N * H + threads)
    params = random_params(rng, kind, D, H, np.float64)
    xs, dhs = (rng.standard_normal(s) for s in ((N, T, D), (N, T, H)))
    states = [rng.standard_normal((N, H)) for _ in range(1 if kind == "rnn" else 2)]
    expected = run_recurrent(rnncore.get_backend("numpy"), kind, params, xs, dhs, states)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        got = run_recurrent(be, kind, params, xs, dhs, states)
    finally:
        numba.set_num_threads(before)
    for k, (e, g) in enumerate(zip(expected, got)):
        assert rel_err(e, g) <= 1e-12, f"output {k}: {rel_err(e, g):.2e}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_numba_gemm_shares_and_layouts(dtype, threads):
    """The numba GEMM hands each thread the rows of a or the columns of b (whichever operand is
    larger) and passes C- or F-ordered operands to BLAS as they are; every split, layout, empty
    and one-wide shape gives a @ b (+ bias)."""
    pytest.importorskip("numba")
    pytest.importorskip("rnncore.backends.numba_backend")
    gemm = rnncore._kernels.numba_module("common_numba").gemm
    rng = np.random.default_rng(threads)
    shapes = [(1, 1, 1), (0, 3, 4), (3, 0, 5), (4, 3, 0), (1, 50, 70), (60, 50, 1), (70, 33, 5), (5, 33, 70), (2, 9, 3)]
    for M, K, J in shapes:
        for a_order, b_order in [("C", "C"), ("F", "C"), ("C", "F"), ("F", "F")]:
            a = np.asarray(rng.standard_normal((M, K)), dtype=dtype, order=a_order)
            b = np.asarray(rng.standard_normal((K, J)), dtype=dtype, order=b_order)
            bias = rng.standard_normal(J).astype(dtype)
            for with_bias in (False, True):
                out = np.full((M, J), np.nan, dtype=dtype)
                gemm(a, b, out, threads, bias if with_bias else None)
                expected = a.astype(np.float64) @ b + (bias if with_bias else 0)
                where = f"{M}x{K}x{J} {a_order}{b_order} bias={with_bias}"
                assert not np.isnan(out).any(), where
                assert rel_err(expected, out) <= TOLERANCE[dtype], where


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_numba_gemm_three(dtype, threads):
    """Two products in one region, half the threads each, then a third that all the threads
    split, on shapes that differ from each other (any may be empty or narrower than its
    threads); transposed views as the layer passes them."""
    pytest.importorskip("numba")
    pytest.importorskip("rnncore.backends.numba_backend")
    gemm_three = rnncore._kernels.numba_module("common_numba").gemm_three
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
        gemm_three(a1, b1, outs[0], a2, b2, outs[1], a3, b3, outs[2], threads)
        for out, (a, b) in zip(outs, ((a1, b1), (a2, b2), (a3, b3))):
            assert not np.isnan(out).any(), out.shape
            assert rel_err(a.astype(np.float64) @ b, out) <= TOLERANCE[dtype]
