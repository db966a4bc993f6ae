"""Checkpointed (memory-efficient) BPTT: the same gradients as the plain pass, in less memory."""
import numpy as np
import pytest
from conftest import CELL_KINDS, layer_class, random_params, to_backend
from gradcheck import assert_close_grad, numerical_grad

import rnncore
from rnncore import bptt
from rnncore.models import RecurrentLM


def layer(backend, kind, params, checkpoint=None):
    cls = layer_class(kind)
    return cls(*to_backend(backend, params), stateful=True, checkpoint=checkpoint, backend=backend)


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("checkpoint", [1, 3, 7, 9])  # 9: segments of 9 and 1 (checkpoint >= T is the plain pass)
def test_layer_checkpointing_changes_nothing_but_memory(backend, kind, checkpoint):
    rng = np.random.default_rng(checkpoint)
    N, T, D, H = 3, 10, 4, 5
    params = random_params(rng, kind, D, H, np.float64)
    xs, dhs = (backend.asarray(rng.standard_normal(s)) for s in ((N, T, D), (N, T, H)))
    states = to_backend(backend, [rng.standard_normal((N, H)) for _ in layer_class(kind).cell.states])
    incoming = to_backend(backend, [rng.standard_normal((N, H)) for _ in states])
    results = []
    for k in (None, checkpoint):
        lay = layer(backend, kind, params, k)
        lay.set_state(*states)
        hs = lay.forward(xs)
        dxs = lay.backward(dhs, *incoming)
        outs = [hs, dxs, *lay.grads, lay.h, lay.dh] + ([lay.c, lay.dc] if "c" in lay.state_names else [])
        results.append([backend.to_numpy(o).copy() for o in outs])
    for plain, ckpt in zip(*results):
        np.testing.assert_allclose(ckpt, plain, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_incoming_state_gradient_is_the_derivative(backend, kind):
    """backward(dhs, dh_next, dc_next) is the gradient of sum(hs*w) + dh_next.h_T + dc_next.c_T,
    on every backend (the dh_next/dc_next path runs in each backend's own kernels)."""
    be = backend
    rng = np.random.default_rng(4)
    N, T, D, H = 2, 4, 3, 3
    lay = layer(be, kind, random_params(rng, kind, D, H, np.float64), checkpoint=3)
    xs, w = (be.asarray(rng.standard_normal(s)) for s in ((N, T, D), (N, T, H)))
    incoming = [be.asarray(rng.standard_normal((N, H))) for _ in lay.state_names]

    def loss():
        lay.reset_state()
        out = (lay.forward(xs) * w).sum()
        return out + sum((g * getattr(lay, s)).sum() for g, s in zip(incoming, lay.state_names))

    loss()
    lay.backward(w, *incoming)
    analytic = [be.to_numpy(g).copy() for g in lay.grads]
    for name, p, g in zip(lay.param_names, lay.params, analytic):
        assert_close_grad(numerical_grad(loss, p, be), g, f"d{name}")


def test_layer_checkpointing_saves_lstm_memory():
    """What a TimeLSTM holds between forward and backward: x, h, c and 4 gates per step
    plainly; x, h and one state per segment when checkpointed."""
    import tracemalloc

    be = rnncore.get_backend("numpy")
    rng = np.random.default_rng(0)
    N, T, D, H = 8, 400, 32, 64
    params = random_params(rng, "lstm", D, H, np.float32)
    xs = rng.standard_normal((N, T, D)).astype(np.float32)
    held = {}
    tracemalloc.start()
    try:
        for k in (None, 20):
            lay = layer(be, "lstm", params, k)
            before = tracemalloc.get_traced_memory()[0]
            lay.forward(xs)
            held[k] = tracemalloc.get_traced_memory()[0] - before
            lay.backward(np.ones((N, T, H), np.float32))
    finally:
        tracemalloc.stop()
    step = N * 4  # bytes per unit per step
    assert held[None] == pytest.approx(T * step * (D + 6 * H), rel=0.05)
    assert held[20] == pytest.approx(T * step * (D + H) + (T // 20) * step * 2 * H, rel=0.05)


def model(backend, cell="lstm", **kw):
    return RecurrentLM(13, 6, 6, cell=cell, num_layers=2, backend=backend, dtype="float64", seed=2, **kw)


@pytest.mark.parametrize("cell", CELL_KINDS)
@pytest.mark.parametrize("segment", [1, 6, 36])  # 36: the restore path too (37 = L is one plain segment)
def test_checkpointed_pass_equals_full_bptt(backend, cell, segment):
    rng = np.random.default_rng(segment)
    xs, ts = (backend.asarray(rng.integers(0, 13, size=(3, 37))) for _ in range(2))
    m = model(backend, cell, tie_weights=True)
    full_loss, full = bptt.truncated_pass(m, xs, ts, [37])
    loss, grads = bptt.checkpointed_pass(m, xs, ts, segment)
    assert float(loss) == pytest.approx(float(full_loss), rel=1e-12)
    for a, b in zip(full, grads):
        np.testing.assert_allclose(backend.to_numpy(b), backend.to_numpy(a), rtol=1e-10, atol=1e-13)


def test_checkpointed_pass_memory_grows_like_sqrt_L():
    be = rnncore.get_backend("numpy")
    rng = np.random.default_rng(0)
    m = RecurrentLM(32, 32, 64, cell="lstm", backend=be, seed=0)
    peaks = {}
    for L in (400, 1600):
        xs, ts = (rng.integers(0, 32, size=(8, L)) for _ in range(2))
        for name, run in (("full", lambda: bptt.truncated_pass(m, xs, ts, [L])),
                          ("checkpointed", lambda: bptt.checkpointed_pass(m, xs, ts, int(np.sqrt(L))))):
            with be.peak_memory() as report:
                run()
            peaks[name, L] = report.peak_bytes
    assert 3.2 < peaks["full", 1600] / peaks["full", 400] < 4.5  # linear in L
    assert peaks["checkpointed", 1600] / peaks["checkpointed", 400] < 2.6  # about sqrt(4) = 2
    assert peaks["checkpointed", 1600] < peaks["full", 1600] / 5


def test_truncated_pass_with_one_chunk_is_a_plain_step():
    be = rnncore.get_backend("numpy")
    rng = np.random.default_rng(1)
    xs, ts = (rng.integers(0, 13, size=(2, 9)) for _ in range(2))
    m = model(be)
    loss, grads = bptt.truncated_pass(m, xs, ts, [9])
    m.reset_state()
    assert float(m.forward(xs, ts)) == pytest.approx(float(loss), rel=1e-14)
    m.backward()
    for a, b in zip(grads, m.grads):
        np.testing.assert_allclose(a, b, rtol=1e-13)


def test_truncation_lengths():
    assert bptt.regular_lengths(10, 4) == [4, 4, 2]
    lengths = bptt.random_lengths(10_000, 20, seed=3)
    assert sum(lengths) == 10_000 and min(lengths) >= 1 and max(lengths) <= 30
    assert abs(np.mean(lengths) - 20) < 1
    assert len(set(lengths)) > 5


@pytest.mark.parametrize("cell", ["rnn", "lstm"])  # the GRU's scaled backward: test_gradients.py
def test_randomized_truncation_is_unbiased(cell):
    """Averaged over draws, randomized truncation's gradient converges to full BPTT's (its error
    shrinks like 1/sqrt(draws)) and ends below regular truncation's bias at the same mean reach."""
    be = rnncore.get_backend("numpy")
    rng = np.random.default_rng(11)
    L, T = 16, 4
    xs, ts = (be.asarray(rng.integers(0, 13, size=(2, L))) for _ in range(2))
    m = RecurrentLM(13, 6, 6, cell=cell, backend=be, dtype="float64", seed=5)
    for layer in m.rnn_layers:  # recurrent weights that carry the gradient a long way
        layer.params[1][...] *= 4
    full = np.concatenate([g.ravel() for g in bptt.truncated_pass(m, xs, ts, [L])[1]])
    truncated = np.concatenate([g.ravel() for g in bptt.truncated_pass(m, xs, ts, bptt.regular_lengths(L, T))[1]])

    def error(draws):
        total = sum(np.concatenate([g.ravel() for g in bptt.randomized_pass(m, xs, ts, T, seed)[1]])
                    for seed in range(draws))
        return np.linalg.norm(total / draws - full) / np.linalg.norm(full)

    bias = np.linalg.norm(truncated - full) / np.linalg.norm(full)
    few, many = error(40), error(640)
    assert many < few / 2  # 1/sqrt(draws) predicts a ratio of 1/4
    assert many < bias / 2, (many, bias)


def test_randomized_scale_has_mean_one_and_reach_T():
    xi = bptt.randomized_scale(200_000, 8, seed=1)
    assert set(np.unique(xi)) == {0.0, 8 / 7}
    assert abs(xi.mean() - 1) < 0.01
    cuts = np.flatnonzero(xi == 0)
    assert abs(np.diff(cuts).mean() - 8) < 0.1  # the gradient's reach between two cuts: T on average
    assert (bptt.randomized_scale(10, 1) == 0).all()


def test_scale_is_checked(backend):
    layer = rnncore.TimeRNN(*to_backend(backend, random_params(np.random.default_rng(0), "rnn", 2, 3, np.float64)),
                            backend=backend)
    xs = backend.asarray(np.ones((1, 4, 2)))
    for bad, error in (([1.0] * 3, ValueError), ([1.0, np.nan, 1, 1], ValueError), ("abcd", TypeError)):
        layer.forward(xs)
        with pytest.raises(error, match="scale"):
            layer.backward(backend.asarray(np.ones((1, 4, 3))), scale=bad)
