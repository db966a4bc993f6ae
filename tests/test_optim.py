"""Optimizers and clipping against their formulas (and torch.optim where installed)."""
import numpy as np
import pytest

from rnncore.optim import SGD, Adam, Momentum, clip_grads


def arrays(backend, seed=0):
    rng = np.random.default_rng(seed)
    return [backend.asarray(rng.standard_normal(s)) for s in ((3, 4), (5,))]


def test_clip_scales_to_the_global_norm(backend):
    grads = arrays(backend)
    host = [backend.to_numpy(g).copy() for g in grads]
    norm = np.sqrt(sum((g**2).sum() for g in host))
    clip_grads(grads, norm / 4, backend)
    for g, h in zip(grads, host):
        np.testing.assert_allclose(backend.to_numpy(g), h / 4, rtol=1e-5)
    clip_grads(grads, norm, backend)  # already under: unchanged
    for g, h in zip(grads, host):
        np.testing.assert_allclose(backend.to_numpy(g), h / 4, rtol=1e-5)


def test_sgd_and_momentum_follow_their_formulas(backend):
    params, grads = arrays(backend, 1), arrays(backend, 2)
    p0 = [backend.to_numpy(p).copy() for p in params]
    g = [backend.to_numpy(x) for x in grads]
    SGD(0.1).update(params, grads, backend)
    for p, a, b in zip(params, p0, g):
        np.testing.assert_allclose(backend.to_numpy(p), a - 0.1 * b)
    opt = Momentum(0.1, 0.9)
    opt.update(params, grads, backend)
    opt.update(params, grads, backend)
    for p, a, b in zip(params, p0, g):  # v1 = -0.1g, v2 = -0.19g
        np.testing.assert_allclose(backend.to_numpy(p), a - 0.1 * b - 0.1 * b - 0.19 * b)


def test_adam_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p = rng.standard_normal(6)
    tp = torch.tensor(p.copy(), requires_grad=True)
    topt = torch.optim.Adam([tp], lr=0.01)
    ours = [p.copy()]
    opt = Adam(0.01)
    for _ in range(5):
        g = rng.standard_normal(6)
        tp.grad = torch.tensor(g)
        topt.step()
        opt.update(ours, [g], _numpy())
    np.testing.assert_allclose(ours[0], tp.detach().numpy(), rtol=1e-6, atol=1e-9)


def _numpy():
    import rnncore

    return rnncore.get_backend("numpy")


def test_optimizer_state_round_trip():
    be = _numpy()
    params, grads = arrays(be, 1), arrays(be, 2)
    a = Adam(0.01)
    a.update(params, grads, be)
    b = Adam(1.0)
    b.load_state_dict(a.state_dict(be), be)
    pa, pb = [p.copy() for p in params], [p.copy() for p in params]
    a.update(pa, grads, be)
    b.update(pb, grads, be)
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x, y)


def test_learning_rate_must_be_positive():
    with pytest.raises(ValueError, match="SGD: lr must be positive"):
        SGD(0)
