"""Every backend computes what the NumPy reference computes, on random inputs and shapes."""
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
        expected = run_recurrent(rnncore.get_backend("numpy"), kind, params, xs, dhs, states)
        got = run_recurrent(other_backend, kind, params, xs, dhs, states)
        for k, (e, g) in enumerate(zip(expected, got)):
            assert g.dtype == dtype
            assert rel_err(e, g) <= TOLERANCE[dtype], f"output {k}: {rel_err(e, g):.2e}"

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
