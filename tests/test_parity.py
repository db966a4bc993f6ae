"""Every backend computes what the NumPy reference computes, on random inputs and shapes."""

import numpy as np
import pytest
from conftest import CELL_KINDS, layer_class, random_params, to_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnncore

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
dims = st.integers(1, 9)


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)


def run_recurrent(backend, kind, params, xs, dhs, h0):
    layer = layer_class(kind)(*to_backend(backend, params), stateful=True, backend=backend)
    layer.set_state(*to_backend(backend, h0))
    hs = layer.forward(backend.asarray(xs))
    dxs = layer.backward(backend.asarray(dhs))
    outs = [hs, dxs, *layer.grads, layer.h, layer.dh]
    if "c" in layer.state_names:
        outs += [layer.c, layer.dc]
    return [backend.to_numpy(o) for o in outs]


def _float64(params, xs, dhs, states):
    return [p.astype(np.float64) for p in params], xs.astype(np.float64), dhs.astype(np.float64), [
        s.astype(np.float64) for s in states]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_recurrent_matches_numpy(other_backend, kind, dtype):
    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(N=dims, T=dims, D=dims, H=st.integers(1, 40), seed=st.integers(0, 2**31))
    def check(N, T, D, H, seed):
        rng = np.random.default_rng(seed)
        params = random_params(rng, kind, D, H, dtype)
        xs, dhs = (rng.standard_normal(s).astype(dtype) for s in ((N, T, D), (N, T, H)))
        states = [rng.standard_normal((N, H)).astype(dtype) for _ in layer_class(kind).cell.states]
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


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("N, H", [(37, 45), (1, 33), (17, 3)])
def test_fused_steps_on_row_and_unit_edges(kind, N, H):
    """More rows than a lane keeps in registers (16), units that do not fill the last block."""
    from conftest import backend_by_name

    be = backend_by_name("cupy-emu-fused")
    rng = np.random.default_rng(N * H)
    params = random_params(rng, kind, 5, H, np.float64)
    xs, dhs = (rng.standard_normal(s) for s in ((N, 4, 5), (N, 4, H)))
    states = [rng.standard_normal((N, H)) for _ in layer_class(kind).cell.states]
    expected = run_recurrent(rnncore.get_backend("numpy"), kind, params, xs, dhs, states)
    got = run_recurrent(be, kind, params, xs, dhs, states)
    for e, g in zip(expected, got):
        assert rel_err(e, g) <= 1e-12


@pytest.mark.parametrize("kind", CELL_KINDS)
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
        layer = layer_class(kind)(*to_backend(backend, params),
                                                                         checkpoint=checkpoint, backend=backend)
        layer.forward(backend.asarray(xs))
        dxs = layer.backward(backend.asarray(d))
        extra = [layer.dc] if "c" in layer.state_names else []
        results[name] = [backend.to_numpy(a) for a in (dxs, *layer.grads, layer.dh, *extra)]
    for name in ("time-major", "strided"):
        for k, (want, got) in enumerate(zip(results["batch-major"], results[name])):
            np.testing.assert_array_equal(got, want, err_msg=f"{name}: output {k}")
    if kind == "rnn":  # its dxw is a new array: C order, whatever the view (a reshape must not copy it)
        cell = rnncore.cells.RNN
        zeros = backend.asarray(np.zeros((N, H)))
        hs, gates, saved = backend.recurrence_forward(cell, backend.asarray(rng.standard_normal((T, N, H))), [zeros],
                                                      backend.asarray(params[1]))
        dxw, _, _ = backend.recurrence_backward(cell, backend.asarray(dhs).transpose(1, 0, 2), hs, gates, saved,
                                                [zeros], backend.asarray(params[1]))
        assert dxw.flags.c_contiguous
