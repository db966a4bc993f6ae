"""Finite-difference gradient checks in float64 for every layer, parameter and input, on every backend."""
import zlib

import numpy as np
import pytest
from conftest import CELL_KINDS, layer_class, random_params, to_backend
from gradcheck import assert_close_grad, numerical_grad

import rnncore

# (N, T, D, H): the degenerate sizes N=1, T=1, H=1 included
SHAPES = [(1, 1, 1, 1), (2, 3, 4, 5), (3, 1, 2, 1), (1, 5, 3, 2), (4, 2, 1, 3)]


def weighted_sum(out, weights):
    return (out * weights).sum()


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_recurrent_layer_gradients(backend, kind, shape):
    N, T, D, H = shape
    rng = np.random.default_rng(zlib.crc32(repr((kind, shape)).encode()))
    cls = layer_class(kind)
    layer = cls(*to_backend(backend, random_params(rng, kind, D, H, np.float64)), stateful=True, backend=backend)
    xs, weights = to_backend(backend, [rng.standard_normal((N, T, D)), rng.standard_normal((N, T, H))])
    states = to_backend(backend, [rng.standard_normal((N, H)) for _ in layer.state_names])

    def loss():
        layer.set_state(*states)
        return weighted_sum(layer.forward(xs), weights)

    loss()
    dxs = layer.backward(weights)
    analytic = [backend.to_numpy(g).copy() for g in layer.grads]
    analytic += [backend.to_numpy(dxs), backend.to_numpy(layer.dh)]
    if "c" in layer.state_names:
        analytic.append(backend.to_numpy(layer.dc))
    targets = list(layer.params) + [xs] + states
    names = list(layer.param_names) + ["xs"] + [f"{s}0" for s in layer.state_names]
    for name, target, grad in zip(names, targets, analytic):
        assert_close_grad(numerical_grad(loss, target, backend), grad, f"{kind} d{name}")


@pytest.mark.parametrize("shape", SHAPES)
def test_affine_gradients(backend, shape):
    N, T, D, M = shape
    rng = np.random.default_rng(1)
    W, b, x, weights = to_backend(
        backend, [rng.standard_normal(s) for s in ((D, M), (M,), (N, T, D), (N, T, M))]
    )
    layer = rnncore.TimeAffine(W, b, backend=backend)

    def loss():
        return weighted_sum(layer.forward(x), weights)

    loss()
    dx = backend.to_numpy(layer.backward(weights))
    dW, db = (backend.to_numpy(g).copy() for g in layer.grads)
    for name, target, grad in (("W", W, dW), ("b", b, db), ("x", x, dx)):
        assert_close_grad(numerical_grad(loss, target, backend), grad, f"affine d{name}")


@pytest.mark.parametrize("shape", SHAPES)
def test_embedding_gradient(backend, shape):
    N, T, V, D = shape[0], shape[1], shape[2] + 2, shape[3]
    rng = np.random.default_rng(2)
    ids = rng.integers(0, V, size=(N, T))
    ids[0, 0] = ids[-1, -1]  # a repeated id must accumulate
    W, weights = to_backend(backend, [rng.standard_normal((V, D)), rng.standard_normal((N, T, D))])
    ids = backend.asarray(ids)
    layer = rnncore.TimeEmbedding(W, backend=backend)

    def loss():
        return weighted_sum(layer.forward(ids), weights)

    loss()
    layer.backward(weights)
    assert_close_grad(numerical_grad(loss, W, backend), backend.to_numpy(layer.grads[0]), "embedding dW")


@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_with_loss_gradient(backend, shape):
    N, T, V = shape[0], shape[1], shape[2] + 1
    rng = np.random.default_rng(3)
    ts = rng.integers(0, V, size=(N, T))
    ts.flat[::3] = -1  # ignored labels
    ts.flat[-1] = V - 1
    xs = backend.asarray(rng.standard_normal((N, T, V)) * 3)
    ts = backend.asarray(ts)
    layer = rnncore.TimeSoftmaxWithLoss(backend=backend)

    def loss():
        return layer.forward(xs, ts)

    loss()
    dxs = backend.to_numpy(layer.backward(2.5)) / 2.5
    assert_close_grad(numerical_grad(loss, xs, backend), dxs, "softmax dxs")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_backward_takes_any_scalar_dout(backend, dtype):
    """dout as a number, a NumPy scalar or 0-d array, or a 0-d array of the backend (a CuPy one
    must stay on the device: CuPy refuses the implicit host conversion): the gradient scales,
    keeping its dtype."""
    rng = np.random.default_rng(5)
    xs = backend.asarray(rng.standard_normal((2, 3, 4)).astype(dtype))
    ts = backend.asarray(rng.integers(0, 4, size=(2, 3)))
    douts = [2.5, np.float32(2.5), np.array(2.5), backend.asarray(np.float64(2.5)), backend.asarray(np.float32(2.5))]
    for layer, target in ((rnncore.TimeSoftmaxWithLoss(backend=backend), ts), (rnncore.TimeMSELoss(backend=backend), xs * 0.5)):
        layer.forward(xs, target)
        unit = backend.to_numpy(layer.backward())
        for dout in douts:
            layer.forward(xs, target)
            grad = layer.backward(dout)
            assert grad.dtype == dtype, (layer.name, type(dout))
            np.testing.assert_allclose(backend.to_numpy(grad), unit * 2.5, rtol=1e-6, err_msg=f"{layer.name} {type(dout)}")


def test_softmax_loss_value_matches_definition(backend):
    rng = np.random.default_rng(4)
    scores = rng.standard_normal((2, 3, 5))
    ts = np.array([[0, -1, 4], [2, 2, -1]])
    layer = rnncore.TimeSoftmaxWithLoss(backend=backend)
    loss = float(layer.forward(backend.asarray(scores), backend.asarray(ts)))
    p = np.exp(scores) / np.exp(scores).sum(axis=2, keepdims=True)
    keep = ts != -1
    expected = -np.log(p[keep, ts[keep]]).mean()
    assert loss == pytest.approx(expected, rel=1e-12)


def test_softmax_all_labels_ignored_gives_zero(backend):
    layer = rnncore.TimeSoftmaxWithLoss(backend=backend)
    xs = backend.asarray(np.ones((2, 2, 3)))
    loss = layer.forward(xs, backend.asarray(-np.ones((2, 2), dtype=np.int64)))
    assert float(loss) == 0.0
    assert not np.any(backend.to_numpy(layer.backward()))


def test_dropout_gradient_uses_the_forward_mask(backend):
    rng = np.random.default_rng(5)
    xs, weights = to_backend(backend, [rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))])
    layer = rnncore.TimeDropout(0.4, backend=backend)

    def loss():
        backend.seed(7)  # the same mask every call
        return weighted_sum(layer.forward(xs), weights)

    loss()
    dxs = backend.to_numpy(layer.backward(weights))
    assert_close_grad(numerical_grad(loss, xs, backend), dxs, "dropout dxs")


def test_whole_stack_gradient(backend):
    """Embedding -> LSTM -> dropout -> affine -> softmax loss, end to end."""
    rng = np.random.default_rng(6)
    N, T, V, D, H = 2, 3, 6, 3, 4
    embed = rnncore.TimeEmbedding(backend.asarray(rng.standard_normal((V, D))), backend=backend)
    lstm = rnncore.TimeLSTM(*to_backend(backend, random_params(rng, "lstm", D, H, np.float64)), backend=backend)
    drop = rnncore.TimeDropout(0.3, backend=backend)
    affine = rnncore.TimeAffine(*to_backend(backend, [rng.standard_normal((H, V)), rng.standard_normal(V)]), backend=backend)
    loss_layer = rnncore.TimeSoftmaxWithLoss(backend=backend)
    ids, ts = (backend.asarray(rng.integers(0, V, size=(N, T))) for _ in range(2))
    layers = [embed, lstm, drop, affine]

    def loss():
        backend.seed(3)
        x = ids
        for layer in layers:
            x = layer.forward(x)
        return loss_layer.forward(x, ts)

    loss()
    d = loss_layer.backward()
    for layer in reversed(layers):
        d = layer.backward(d)
    for layer in (embed, lstm, affine):
        for name, p, g in zip(layer.param_names, layer.params, layer.grads):
            analytic = backend.to_numpy(g).copy()
            assert_close_grad(numerical_grad(loss, p, backend), analytic, f"{layer.name} d{name}")


def test_mse_loss_gradient(backend):
    rng = np.random.default_rng(8)
    ys, ts = to_backend(backend, [rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))])
    layer = rnncore.TimeMSELoss(backend=backend)
    layer.forward(ys, ts)
    dys = backend.to_numpy(layer.backward(1.5)) / 1.5
    assert_close_grad(numerical_grad(lambda: layer.forward(ys, ts), ys, backend), dys, "mse dys")
    assert float(layer.forward(ts, ts)) == 0.0


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_scaled_backward_is_the_gradient_of_the_mixed_recurrence(backend, kind):
    """``backward(..., scale=s)`` (randomized truncation) is the exact gradient of the recurrence in
    which step t reads s_t * state_{t-1} + (1 - s_t) * (state_{t-1} held at its current value):
    same values, gradient through the state scaled by s_t. Checked by finite differences of that
    recurrence, run step by step, for every parameter, the input and the start states."""
    N, T, D, H = 2, 5, 3, 4
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    layer = layer_class(kind)(*to_backend(backend, random_params(rng, kind, D, H, np.float64)), backend=backend)
    xs, weights = to_backend(backend, [rng.standard_normal((N, T, D)), rng.standard_normal((N, T, H))])
    states = to_backend(backend, [rng.standard_normal((N, H)) for _ in layer.state_names])
    scale = np.array([0.0, 2.5, 1.0, 0.0, 1.7])

    def run(held=None):
        """The loss, and the states entering each step (to hold them fixed later)."""
        current, entering, total = list(states), [], 0.0
        for t in range(T):
            entering.append([s.copy() for s in current])
            mixed = current if held is None else [scale[t] * s + (1 - scale[t]) * h for s, h in zip(current, held[t])]
            layer.set_state(*mixed)
            total = total + weighted_sum(layer.forward(xs[:, t : t + 1]), weights[:, t : t + 1])
            current = [getattr(layer, s) for s in layer.state_names]
        return total, entering

    _, held = run()
    layer.set_state(*states)
    layer.forward(xs)
    dxs = layer.backward(weights, scale=scale)
    analytic = [backend.to_numpy(g).copy() for g in layer.grads]
    analytic += [backend.to_numpy(dxs)] + [backend.to_numpy(getattr(layer, "d" + s)) for s in layer.state_names]
    targets = list(layer.params) + [xs] + states
    names = list(layer.param_names) + ["xs"] + [f"{s}0" for s in layer.state_names]
    for name, target, grad in zip(names, targets, analytic):
        if name.endswith("0"):  # the start state enters step 0 mixed too: its gradient is scaled by s_0
            numeric = scale[0] * numerical_grad(lambda: run()[0], target, backend)
        else:
            numeric = numerical_grad(lambda: run(held)[0], target, backend)
        assert_close_grad(numeric, grad, f"{kind} d{name}")
