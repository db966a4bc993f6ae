"""Bad input gets a ValueError or TypeError naming the layer, the argument and what was expected."""
import numpy as np
import pytest
from conftest import random_params, to_backend

import rnncore

rng = np.random.default_rng(0)


def lstm(backend="numpy", D=3, H=2, dtype=np.float32):
    be = rnncore.get_backend(backend)
    return rnncore.TimeLSTM(*to_backend(be, random_params(rng, "lstm", D, H, dtype)), backend=be)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: lstm().forward(f32(2, 3)), ValueError, r"TimeLSTM\.forward: xs must have shape \(N, T, D=3\), got \(2, 3\)"),
        (lambda: lstm().forward(f32(2, 3, 4)), ValueError, r"TimeLSTM\.forward: xs must have shape \(N, T, D=3\), got \(2, 3, 4\)"),
        (lambda: lstm().forward(f32(2, 0, 3)), ValueError, r"TimeLSTM\.forward: xs must not be empty"),
        (lambda: lstm().forward(f32(2, 3, 3).astype(np.float64)), TypeError, r"TimeLSTM\.forward: xs has dtype float64, but the layer's parameters are float32"),
        (lambda: lstm().forward([[[1.0, 2.0, 3.0]]]), TypeError, r"TimeLSTM\.forward: xs is a builtins\.list"),
        (lambda: rnncore.TimeLSTM(f32(3, 8), f32(2, 8), f32(8).astype(np.float64)), TypeError, r"TimeLSTM: parameters must share one dtype, float32 or float64; got Wx float32, Wh float32, b float64"),
        (lambda: rnncore.TimeLSTM(*(a.astype(np.int32) for a in (f32(3, 8), f32(2, 8), f32(8)))), TypeError, r"TimeLSTM: parameters must share one dtype"),
        (lambda: rnncore.TimeLSTM(f32(3, 8), f32(2, 6), f32(8)), ValueError, r"TimeLSTM: Wh must have shape \(2, 8\) \(H, G = 4H\), got \(2, 6\)"),
        (lambda: rnncore.TimeLSTM(f32(3, 7), f32(2, 8), f32(8)), ValueError, r"TimeLSTM: Wx must have shape \(D, G=8\), got \(3, 7\)"),
        (lambda: rnncore.TimeRNN(f32(3, 2), f32(2, 2), f32(3)), ValueError, r"TimeRNN: b must have shape \(2,\) \(G = H\), got \(3,\)"),
        (lambda: rnncore.TimeAffine(f32(3, 4), f32(5)), ValueError, r"TimeAffine: b must have shape \(4,\)"),
        (lambda: rnncore.TimeAffine(f32(3, 4), f32(4)).forward(f32(2, 2, 5)), ValueError, r"TimeAffine\.forward: x must have shape \(N, T, D=3\), got \(2, 2, 5\)"),
        (lambda: rnncore.TimeEmbedding(f32(5, 3)).forward(np.array([[1.0, 2.0]])), TypeError, r"TimeEmbedding\.forward: ids must hold integer ids, got dtype float64"),
        (lambda: rnncore.TimeEmbedding(f32(5, 3)).forward(np.array([[1, 5]])), ValueError, r"TimeEmbedding\.forward: ids holds id 5, outside the valid range \[0, 4\]"),
        (lambda: rnncore.TimeEmbedding(f32(5, 3)).forward(np.array([[-1, 2]])), ValueError, r"TimeEmbedding\.forward: ids holds id -1, outside the valid range \[0, 4\]"),
        (lambda: rnncore.TimeEmbedding(f32(5, 3)).forward(np.array([1, 2])), ValueError, r"TimeEmbedding\.forward: ids must have shape \(N, T\), got \(2,\)"),
        (lambda: rnncore.TimeSoftmaxWithLoss().forward(f32(2, 3, 4), np.zeros((2, 3)) + 0.5), TypeError, r"TimeSoftmaxWithLoss\.forward: ts must hold integer ids"),
        (lambda: rnncore.TimeSoftmaxWithLoss().forward(f32(2, 3, 4), np.full((2, 3), 4)), ValueError, r"TimeSoftmaxWithLoss\.forward: ts holds id 4, outside the valid range \[-1, 3\]"),
        (lambda: rnncore.TimeSoftmaxWithLoss().forward(f32(2, 3, 4), np.full((2, 3), -2)), ValueError, r"ts holds id -2, outside the valid range \[-1, 3\]"),
        (lambda: rnncore.TimeSoftmaxWithLoss().forward(f32(2, 3, 4), np.zeros((3, 2), dtype=int)), ValueError, r"TimeSoftmaxWithLoss\.forward: ts must have shape \(N=2, T=3\), got \(3, 2\)"),
        (lambda: rnncore.TimeDropout(1.0), ValueError, r"TimeDropout: ratio must be a number in \[0, 1\), got 1.0"),
        (lambda: lstm().set_state(f32(2, 3), f32(2, 3)), ValueError, r"TimeLSTM\.set_state: h must have shape \(N, H=2\), got \(2, 3\)"),
        (lambda: lstm().set_state(f32(2, 2)), ValueError, r"TimeLSTM\.set_state: c is required"),
        (lambda: lstm().backward(f32(1, 1, 2)), RuntimeError, r"TimeLSTM\.backward called without a forward pass"),
        (lambda: rnncore.get_backend("tpu"), ValueError, r"unknown backend 'tpu'; valid names: numpy, numba, cupy, auto"),
    ],
)
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_backward_checks_the_gradient_shape():
    layer = lstm()
    layer.forward(f32(2, 3, 3))
    with pytest.raises(ValueError, match=r"TimeLSTM\.backward: dhs must have shape \(N=2, T=3, H=2\), got \(2, 3, 3\)"):
        layer.backward(f32(2, 3, 3))


class ndarray:  # noqa: N801  a stand-in for cupy.ndarray on a machine without CuPy
    __module__ = "cupy"

    def __init__(self, a):
        self.ndim, self.shape, self.dtype = a.ndim, a.shape, a.dtype


def test_device_array_on_a_host_layer_is_refused():
    with pytest.raises(TypeError, match=r"TimeLSTM\.forward: xs is a cupy\.ndarray, but this layer runs on the 'numpy' backend, which takes numpy\.ndarray"):
        lstm().forward(ndarray(f32(2, 3, 3)))
    with pytest.raises(TypeError, match=r"TimeEmbedding: W is a cupy\.ndarray"):
        rnncore.TimeEmbedding(ndarray(f32(5, 3)))


@pytest.mark.gpu
def test_arrays_never_cross_between_host_and_device():
    import cupy

    with pytest.raises(TypeError, match=r"xs is a numpy\.ndarray, but this layer runs on the 'cupy' backend"):
        lstm("cupy").forward(f32(2, 3, 3))
    with pytest.raises(TypeError, match=r"xs is a cupy\.ndarray, but this layer runs on the 'numpy' backend"):
        lstm("numpy").forward(cupy.asarray(f32(2, 3, 3)))
    with pytest.raises(TypeError, match=r"TimeRNN: Wh is a numpy\.ndarray"):
        rnncore.TimeRNN(cupy.asarray(f32(3, 2)), f32(2, 2), cupy.asarray(f32(2)), backend="cupy")


def test_numba_and_numpy_share_host_arrays():
    """Both CPU backends take NumPy arrays, so mixing them needs no conversion."""
    pytest.importorskip("numba")
    np_layer = lstm("numpy")
    nb_layer = rnncore.TimeLSTM(*np_layer.params, backend="numba")
    xs = f32(2, 3, 3)
    np.testing.assert_allclose(nb_layer.forward(xs), np_layer.forward(xs), rtol=1e-5, atol=1e-6)


def test_a_rejected_backward_can_be_repeated_correctly():
    layer = lstm()
    layer.forward(f32(2, 3, 3))
    with pytest.raises(ValueError, match="dhs must have shape"):
        layer.backward(f32(2, 3, 3))
    assert layer.backward(f32(2, 3, 2)).shape == (2, 3, 3)
    with pytest.raises(RuntimeError, match="without a forward pass"):
        layer.backward(f32(2, 3, 2))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda d: d.backward(f32(3, 4)), ValueError, r"TimeDropout\.backward: dout must have shape \(N=2, T=3, D=4\)"),
        (lambda d: rnncore.TimeDropout().backward(f32(2, 3, 4)), RuntimeError, "without a forward pass"),
        (lambda d: d.forward(np.ones((2, 3, 4), dtype=bool)), TypeError, "xs must be float32 or float64"),
        (lambda d: rnncore.TimeDropout("0.5"), ValueError, "ratio must be a number"),
        (lambda d: rnncore.TimeSoftmaxWithLoss().forward(f32(2, 3, 4).astype(np.float16), np.zeros((2, 3), int)),
         TypeError, "float32 or float64 scores"),
        (lambda d: rnncore.TimeSoftmaxWithLoss().backward(), RuntimeError, "without a forward pass"),
        (lambda d: rnncore.TimeMSELoss().forward(f32(2, 3, 4), f32(2, 3, 4).astype(np.float64)), TypeError,
         "ts has dtype float64"),
        (lambda d: rnncore.TimeRNN(f32(3, 2), f32(2, 2), f32(2)).set_state(f32(1, 2), f32(1, 2)), ValueError,
         "a TimeRNN has no cell state"),
        (lambda d: rnncore.TimeLSTM(f32(3, 8), f32(2, 8), f32(8), checkpoint=True), ValueError, "checkpoint must be"),
    ],
)
def test_more_bad_input(call, error, message):
    drop = rnncore.TimeDropout(0.5)
    drop.forward(f32(2, 3, 4))
    with pytest.raises(error, match=message):
        call(drop)


def test_checkpoint_takes_numpy_integers():
    assert rnncore.TimeLSTM(f32(3, 8), f32(2, 8), f32(8), checkpoint=np.int64(5)).checkpoint == 5


def test_set_state_seeds_a_stateless_layer_once():
    layer = rnncore.TimeRNN(f32(3, 2), f32(2, 2), f32(2))
    xs = f32(1, 4, 3)
    plain = layer.forward(xs)
    layer.set_state(np.ones((1, 2), np.float32))
    seeded = layer.forward(xs)
    assert not np.allclose(seeded, plain)
    np.testing.assert_array_equal(layer.forward(xs), plain)


def test_fortran_ordered_parameters(backend):
    """Layouts users get from transposes (tied or PyTorch weights) compute what C order does."""
    from conftest import to_backend

    rng = np.random.default_rng(3)
    V, D, H = 7, 4, 5
    host = [rng.standard_normal(s) for s in ((V, D), (D, 4 * H), (H, 4 * H), (4 * H,))]
    ids = rng.integers(0, V, size=(2, 6))
    results = []
    for order in ("C", "F"):
        arrays = to_backend(backend, [np.array(a, order=order) for a in host])
        embed = rnncore.TimeEmbedding(arrays[0], backend=backend)
        layer = rnncore.TimeLSTM(*arrays[1:], backend=backend)
        out = layer.forward(embed.forward(backend.asarray(ids)))
        embed.backward(layer.backward(out))
        results.append([backend.to_numpy(g).copy() for g in embed.grads + layer.grads] + [backend.to_numpy(out)])
    for c, f in zip(*results):
        np.testing.assert_allclose(f, c, rtol=1e-12, atol=1e-14)
