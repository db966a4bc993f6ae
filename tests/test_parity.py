"""Every backend computes what the NumPy reference computes, on random inputs and shapes."""
import os

import numpy as np
import pytest
from conftest import random_params, to_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnncore

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
dims = st.integers(1, 9)


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)


def run_recurrent(backend, kind, params, xs, dhs, h0):
    cls = rnncore.TimeRNN if kind == "rnn" else rnncore.TimeLSTM
    layer = cls(*to_backend(backend, params), stateful=True, backend=backend)
    layer.set_state(*to_backend(backend, h0))
    hs = layer.forward(backend.asarray(xs))
    dxs = layer.backward(backend.asarray(dhs))
    outs = [hs, dxs, *layer.grads, layer.h, layer.dh]
    if kind == "lstm":
        outs += [layer.c, layer.dc]
    return [backend.to_numpy(o) for o in outs]


def _float64(params, xs, dhs, states):
    return [p.astype(np.float64) for p in params], xs.astype(np.float64), dhs.astype(np.float64), [
        s.astype(np.float64) for s in states]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_recurrent_matches_numpy(other_backend, kind, dtype):
    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(N=dims, T=dims, D=dims, H=st.integers(1, 40), seed=st.integers(0, 2**31))
    def check(N, T, D, H, seed):
        rng = np.random.default_rng(seed)
        params = random_params(rng, kind, D, H, dtype)
        xs, dhs = (rng.standard_normal(s).astype(dtype) for s in ((N, T, D), (N, T, H)))
        states = [rng.standard_normal((N, H)).astype(dtype) for _ in range(1 if kind == "rnn" else 2)]
        numpy = rnncore.get_backend("numpy")
        expected = run_recurrent(numpy, kind, params, xs, dhs, states)
        got = run_recurrent(other_backend, kind, params, xs, dhs, states)
        exact = run_recurrent(numpy, kind, *_float64(params, xs, dhs, states))
        for k, (e, g, x) in enumerate(zip(expected, got, exact)):
            assert g.dtype == dtype
            # Where float32 itself is ill-conditioned (a sum that nearly cancels) no two
            # float32 implementations agree to 1e-5; then the result must be within 1e-5 of
            # the float64 truth, or as close to it as the reference is (whose own error
            # varies with the order of the sum: 4e-6 where ours was 9e-6, both fine).
            near_truth = max(2 * rel_err(x, e), TOLERANCE[dtype])
            assert rel_err(e, g) <= TOLERANCE[dtype] or rel_err(x, g) <= near_truth, (
                f"output {k}: {rel_err(e, g):.2e} from the reference, {rel_err(x, g):.2e} from float64")

    check()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_kernels_match_numpy(other_backend, dtype):
    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(M=st.integers(1, 30), V=st.integers(1, 700), D=dims, seed=st.integers(0, 2**31))
    def check(M, V, D, seed):
        rng = np.random.default_rng(seed)
        scores = (rng.standard_normal((M, V)) * 4).astype(dtype)
        labels = rng.integers(-1, V, size=M)
        ids = rng.integers(0, V, size=M)
        dout = rng.standard_normal((M, D)).astype(dtype)
        ref = rnncore.get_backend("numpy")
        results = []
        for be in (ref, other_backend):
            loss, dscores = be.softmax_cross_entropy(be.asarray(scores), be.asarray(labels))
            dW = be.xp.zeros((V, D), dtype=dtype)
            be.embedding_scatter_add(dW, be.asarray(ids), be.asarray(dout))
            results.append([be.to_numpy(x) for x in (loss, dscores, dW)])
        for e, g in zip(*results):
            assert g.dtype == dtype
            assert rel_err(e, g) <= TOLERANCE[dtype] or np.abs(e - g).max() <= TOLERANCE[dtype]

    check()


def test_dropout_keeps_the_expected_fraction(backend):
    backend.seed(11)
    mask = backend.to_numpy(backend.dropout_mask((200, 50), 0.3, np.dtype(np.float32)))
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.7)}
    assert abs((mask == 0).mean() - 0.3) < 0.02


def test_seed_makes_dropout_repeatable(backend):
    masks = []
    for _ in range(2):
        backend.seed(5)
        masks.append(backend.to_numpy(backend.dropout_mask((10, 10), 0.5, np.dtype(np.float64))))
    np.testing.assert_array_equal(*masks)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_algebra_matches_numpy(other_backend, dtype):
    """matmul with every operand layout the layers use, linear, sums, axpy, scale."""
    rng = np.random.default_rng(0)
    be = other_backend
    for M, K, J in [(1, 1, 1), (7, 3, 5), (70, 33, 130), (3, 200, 2)]:
        a, b = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((K, J)).astype(dtype)
        bias = rng.standard_normal(J).astype(dtype)
        cases = {
            "a@b": (a, b),
            "a@bT": (a, np.ascontiguousarray(b.T).T),
            "aT@b": (np.ascontiguousarray(a.T).T, b),
        }
        for name, (x, y) in cases.items():
            got = be.to_numpy(be.matmul(be.asarray(x), be.asarray(y)))
            assert rel_err(x @ y, got) <= TOLERANCE[dtype], name
        out = be.xp.empty((M, J), dtype=dtype)
        be.matmul(be.asarray(a), be.asarray(b), out=out)
        assert rel_err(a @ b, be.to_numpy(out)) <= TOLERANCE[dtype]
        lin = be.to_numpy(be.linear(be.asarray(a), be.asarray(b), be.asarray(bias)))
        assert rel_err(a @ b + bias, lin) <= TOLERANCE[dtype]
        sums = be.to_numpy(be.sum_rows(be.asarray(a), be.xp.empty(K, dtype=dtype)))
        assert rel_err(a.sum(axis=0), sums) <= TOLERANCE[dtype]
    x, y = (rng.standard_normal((13, 17)).astype(dtype) for _ in range(2))
    assert float(be.sum_of_squares([be.asarray(x), be.asarray(y)])) == pytest.approx((x**2).sum() + (y**2).sum(), rel=1e-5)
    yb = be.asarray(y.copy())
    be.axpy_(-0.5, be.asarray(x), yb)
    assert rel_err(y - 0.5 * x, be.to_numpy(yb)) <= TOLERANCE[dtype]
    be.scale_(yb, 3.0)
    assert rel_err(3 * (y - 0.5 * x), be.to_numpy(yb)) <= TOLERANCE[dtype]


def test_dense_algebra_odd_outputs_and_operands(backend):
    """Outputs as views BLAS cannot write row by row (reversed columns; a row whose stride is
    not its width), an out that is an operand, mixed dtypes: each computes what NumPy does,
    writes nothing outside out; mismatched inner dimensions raise."""
    rng = np.random.default_rng(1)
    be, xp = backend, backend.xp
    a, b, bias = rng.standard_normal((5, 3)), rng.standard_normal((3, 4)), rng.standard_normal(4)
    A, B, bias_ = be.asarray(a), be.asarray(b), be.asarray(bias)
    big = xp.zeros((6, 4))
    be.linear(A, B, bias_, out=big[:5, ::-1])
    np.testing.assert_allclose(be.to_numpy(big)[:5, ::-1], a @ b + bias, rtol=1e-12)
    assert not be.to_numpy(big)[5].any(), "linear wrote outside out"
    big[...] = 0
    be.matmul(A, B, out=big[:5, ::-1])
    np.testing.assert_allclose(be.to_numpy(big)[:5, ::-1], a @ b, rtol=1e-12)
    row = xp.zeros((4, 1)).T  # (1, 4): C-contiguous by its flags, row stride 8 bytes
    be.matmul(A[:1], B, out=row)
    np.testing.assert_allclose(be.to_numpy(row), a[:1] @ b, rtol=1e-12)
    for count in (2, 3):
        outs = [xp.zeros((4, 1)).T, xp.zeros((6, 4))[:5, ::-1], xp.zeros((5, 4))]
        be.matmuls([(A[:1], B, outs[0]), (A, B, outs[1]), (A[::-1], B, outs[2])][:count])
        for out, expected in zip(outs[:count], (a[:1] @ b, a @ b, a[::-1] @ b)):
            np.testing.assert_allclose(be.to_numpy(out), expected, rtol=1e-12)
    C, E = xp.zeros((5, 4)), xp.zeros((5, 4))
    B2 = be.asarray(rng.standard_normal((4, 4)))
    be.matmuls([(A, B, C), (C, B2, E)])  # the second reads the first's out: in order, as NumPy would
    np.testing.assert_allclose(be.to_numpy(E), (a @ b) @ be.to_numpy(B2), rtol=1e-12)
    square = be.asarray(rng.standard_normal((4, 4)))
    expected = be.to_numpy(square) @ be.to_numpy(square)
    be.matmul(square, square, out=square)
    np.testing.assert_allclose(be.to_numpy(square), expected, rtol=1e-12)
    mixed = be.to_numpy(be.linear(be.asarray(a.astype(np.float32)), B, bias_))
    np.testing.assert_allclose(mixed, a.astype(np.float32) @ b + bias, rtol=1e-6)
    with pytest.raises(ValueError):
        be.matmul(A, be.asarray(rng.standard_normal((4, 4))))
    with pytest.raises(ValueError):
        be.linear(A, be.asarray(rng.standard_normal((4, 4))), be.asarray(rng.standard_normal(4)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_survives_extreme_scores(backend, dtype):
    scores = np.array([[1e4, 0, -1e4, 5], [-50, -50, -50, -50], [88, -88, 0, 1]], dtype=dtype)
    loss, d = backend.softmax_cross_entropy(backend.asarray(scores), backend.asarray(np.array([0, 2, 1])))
    ref_loss, ref_d = rnncore.get_backend("numpy").softmax_cross_entropy(scores, np.array([0, 2, 1]))
    assert np.isfinite(float(loss))
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
    np.testing.assert_allclose(backend.to_numpy(d), ref_d, atol=1e-6)


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
@pytest.mark.parametrize("N, H", [(37, 45), (1, 33), (17, 3)])
def test_fused_steps_on_row_and_unit_edges(kind, N, H):
    """More rows than a lane keeps in registers (16), units that do not fill the last block."""
    from conftest import backend_by_name

    be = backend_by_name("cupy-emu-fused")
    rng = np.random.default_rng(N * H)
    params = random_params(rng, kind, 5, H, np.float64)
    xs, dhs = (rng.standard_normal(s) for s in ((N, 4, 5), (N, 4, H)))
    states = [rng.standard_normal((N, H)) for _ in range(1 if kind == "rnn" else 2)]
    expected = run_recurrent(rnncore.get_backend("numpy"), kind, params, xs, dhs, states)
    got = run_recurrent(be, kind, params, xs, dhs, states)
    for e, g in zip(expected, got):
        assert rel_err(e, g) <= 1e-12


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
@pytest.mark.parametrize("checkpoint", [None, 2])
def test_backward_reads_the_upstream_gradient_in_any_layout(backend, kind, checkpoint):
    """dhs batch-major (as a user passes it), as the transpose of a time-major array (as the
    layer above passes it in a model) and as a strided slice: the same gradients, bit for bit
    (backends read it where it lies, or copy it; either way the same numbers in the same order)."""
    rng = np.random.default_rng(7)
    N, T, D, H = 5, 6, 3, 7
    params = random_params(rng, kind, D, H, np.float64)
    xs, dhs = rng.standard_normal((N, T, D)), rng.standard_normal((N, T, H))
    layouts = {"batch-major": dhs, "time-major": np.ascontiguousarray(dhs.transpose(1, 0, 2)).transpose(1, 0, 2),
               "strided": np.repeat(dhs, 2, axis=2)[:, :, ::2]}
    results = {}
    for name, d in layouts.items():
        layer = (rnncore.TimeRNN if kind == "rnn" else rnncore.TimeLSTM)(*to_backend(backend, params),
                                                                         checkpoint=checkpoint, backend=backend)
        layer.forward(backend.asarray(xs))
        dxs = layer.backward(backend.asarray(d))
        extra = [layer.dc] if kind == "lstm" else []
        results[name] = [backend.to_numpy(a) for a in (dxs, *layer.grads, layer.dh, *extra)]
    for name in ("time-major", "strided"):
        for k, (want, got) in enumerate(zip(results["batch-major"], results[name])):
            np.testing.assert_array_equal(got, want, err_msg=f"{name}: output {k}")
    if kind == "rnn":  # its dxw is a new array: C order, whatever the view (a reshape must not copy it)
        hs = backend.rnn_forward(backend.asarray(rng.standard_normal((T, N, H))), backend.asarray(np.zeros((N, H))),
                                 backend.asarray(params[1]))
        dxw, _ = backend.rnn_backward(backend.asarray(dhs).transpose(1, 0, 2), hs, backend.asarray(np.zeros((N, H))),
                                      backend.asarray(params[1]))
        assert dxw.flags.c_contiguous


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
