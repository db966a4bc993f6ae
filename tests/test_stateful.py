"""Stateful truncated BPTT: chunked forwards equal one long forward; backward stops at the chunk."""
import numpy as np
import pytest
from conftest import CELL_KINDS, layer_class, random_params, to_backend
from gradcheck import assert_close_grad, numerical_grad



def make(backend, kind, params, stateful):
    cls = layer_class(kind)
    return cls(*to_backend(backend, params), stateful=stateful, backend=backend)


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("chunks", [[12], [4, 4, 4], [1, 5, 6], [1] * 12])
def test_chunks_give_the_same_outputs(backend, kind, chunks):
    rng = np.random.default_rng(len(chunks))
    N, D, H = 3, 4, 5
    params = random_params(rng, kind, D, H, np.float64)
    xs = backend.asarray(rng.standard_normal((N, sum(chunks), D)))
    whole = backend.to_numpy(make(backend, kind, params, stateful=False).forward(xs))
    layer = make(backend, kind, params, stateful=True)
    parts, start = [], 0
    for size in chunks:
        parts.append(backend.to_numpy(layer.forward(xs[:, start : start + size])))
        start += size
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_backward_stops_at_the_chunk_boundary(backend, kind):
    """The gradient of chunk 2 treats the state carried from chunk 1 as a constant."""
    rng = np.random.default_rng(9)
    N, T, D, H = 2, 3, 3, 4
    params = random_params(rng, kind, D, H, np.float64)
    first, second = (backend.asarray(rng.standard_normal((N, T, D))) for _ in range(2))
    weights = backend.asarray(rng.standard_normal((N, T, H)))
    layer = make(backend, kind, params, stateful=True)
    layer.forward(first)
    carried = [getattr(layer, s).copy() for s in layer.state_names]
    layer.forward(second)
    layer.backward(weights)
    truncated = [backend.to_numpy(g).copy() for g in layer.grads]

    def loss_of_second_chunk():
        layer.set_state(*carried)  # the carried state, held fixed
        return (layer.forward(second) * weights).sum()

    for name, p, g in zip(layer.param_names, layer.params, truncated):
        assert_close_grad(numerical_grad(loss_of_second_chunk, p, backend), g, f"d{name}")


def test_reset_state_starts_from_zeros(backend):
    rng = np.random.default_rng(1)
    params = random_params(rng, "lstm", 2, 3, np.float64)
    xs = backend.asarray(rng.standard_normal((2, 4, 2)))
    fresh = backend.to_numpy(make(backend, "lstm", params, stateful=False).forward(xs))
    layer = make(backend, "lstm", params, stateful=True)
    layer.forward(xs)
    assert not np.allclose(backend.to_numpy(layer.forward(xs)), fresh)
    layer.reset_state()
    np.testing.assert_allclose(backend.to_numpy(layer.forward(xs)), fresh, rtol=1e-13)


def test_carried_state_needs_the_same_batch(backend):
    rng = np.random.default_rng(2)
    layer = make(backend, "rnn", random_params(rng, "rnn", 2, 3, np.float64), stateful=True)
    layer.forward(backend.asarray(rng.standard_normal((4, 2, 2))))
    with pytest.raises(ValueError, match=r"TimeRNN.forward: the carried state has batch size 4 but xs has N=3"):
        layer.forward(backend.asarray(rng.standard_normal((3, 2, 2))))


def test_given_state_survives_a_rejected_forward(backend):
    """A stateless layer starts once from set_state's h, c: a forward refused for its batch size
    does not use that up, so the corrected call still starts there."""
    rng = np.random.default_rng(3)
    params = random_params(rng, "lstm", 2, 3, np.float64)
    h, c = (backend.asarray(rng.standard_normal((3, 3))) for _ in range(2))
    xs = backend.asarray(rng.standard_normal((3, 4, 2)))
    layer = make(backend, "lstm", params, stateful=False)
    layer.set_state(h, c)
    expected = backend.to_numpy(layer.forward(xs))
    layer.set_state(h, c)
    with pytest.raises(ValueError, match=r"TimeLSTM.forward: the carried state has batch size 3 but xs has N=2"):
        layer.forward(backend.asarray(rng.standard_normal((2, 4, 2))))
    np.testing.assert_allclose(backend.to_numpy(layer.forward(xs)), expected, rtol=1e-13)
    fresh = backend.to_numpy(layer.forward(xs))  # used once: from zeros again
    assert not np.allclose(fresh, expected)
