"""Language models: tied weights counted once, parity across backends, PyTorch weights."""
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from gradcheck import assert_close_grad, numerical_grad

import rnncore
from rnncore.models import RecurrentLM, build_model


def tiny(backend, **kw):
    cfg = dict(vocab_size=7, wordvec_size=4, hidden_size=4, cell="lstm", dtype="float64", seed=3)
    cfg.update(kw)
    return RecurrentLM(**cfg, backend=backend)


def batch(backend, N=2, T=3, V=7, seed=0):
    rng = np.random.default_rng(seed)
    return [backend.asarray(rng.integers(0, V, size=(N, T))) for _ in range(2)]


def test_presets_build_the_book_models():
    simple, rnnlm, better = (f(50, backend="numpy") for f in (rnncore.SimpleRnnlm, rnncore.Rnnlm, rnncore.BetterRnnlm))
    assert [type(r).__name__ for r in simple.rnn_layers] == ["TimeRNN"]
    assert [type(r).__name__ for r in rnnlm.rnn_layers] == ["TimeLSTM"]
    assert [type(r).__name__ for r in better.rnn_layers] == ["TimeLSTM", "TimeLSTM"]
    assert better.config["tie_weights"] and better.config["dropout"] == 0.5
    # tied: the embedding appears once, the output layer has only its bias
    assert len(better.params) == 1 + 3 + 3 + 1
    assert better.affine.params[0].base is better.embed.params[0]


def test_tied_model_gradient_counts_both_uses(backend):
    model = tiny(backend, num_layers=2, tie_weights=True, dropout=0.25)
    model.embed.params[0][...] *= 100  # the book's 1/100 scale leaves gradients too small to difference
    xs, ts = batch(backend)

    def loss():
        backend.seed(1)
        model.reset_state()
        return model.forward(xs, ts)

    loss()
    model.backward()
    for k, (p, g) in enumerate(zip(model.params, model.grads)):
        assert_close_grad(numerical_grad(loss, p, backend), backend.to_numpy(g).copy(), f"param {k}")


def test_a_tied_weight_is_updated_once():
    model = tiny("numpy", tie_weights=True)
    before = model.embed.params[0].copy()
    xs, ts = batch(model.backend)
    model.forward(xs, ts)
    model.backward()
    rnncore.optim.SGD(0.5).update(model.params, model.grads, model.backend)
    np.testing.assert_allclose(model.embed.params[0], before - 0.5 * model.grads[0])
    np.testing.assert_array_equal(model.affine.params[0], model.embed.params[0].T)


def test_same_seed_same_model_on_every_backend(other_backend):
    ref = tiny("numpy", dtype="float32")
    other = tiny(other_backend, dtype="float32")
    for a, b in zip(ref.params, other.params):
        np.testing.assert_array_equal(a, other_backend.to_numpy(b))
    xs, ts = batch(ref.backend)
    loss_ref = float(ref.forward(xs, ts))
    loss = float(other.forward(*(other_backend.asarray(a) for a in (xs, ts))))
    assert loss == pytest.approx(loss_ref, rel=1e-5)


def test_build_model_from_config():
    model = tiny("numpy", cell="rnn", num_layers=3)
    assert build_model(model.config, "numpy").config == model.config


@pytest.mark.parametrize("bad, message", [
    (dict(cell="transformer"), "cell must be one of rnn, lstm, gru"),
    (dict(tie_weights=True, hidden_size=5), "tie_weights needs wordvec_size == hidden_size"),
    (dict(num_layers=0), "at least 1"),
])
def test_bad_model_settings(bad, message):
    with pytest.raises(ValueError, match=message):
        tiny("numpy", **bad)


def test_load_torch_weights_into_a_model(backend):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.LSTM(4, 4, num_layers=2, batch_first=True).double()
    model = tiny(backend, num_layers=2)
    model.load_torch(net.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 5, 4))
    expected, _ = net(torch.from_numpy(x))
    h = backend.asarray(x)
    for rnn in model.rnn_layers:
        rnn.reset_state()
        h = rnn.forward(h)
    np.testing.assert_allclose(backend.to_numpy(h), expected.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_from_torch_builds_a_layer_without_importing_torch():
    """Plain arrays in: rnncore never imports torch itself."""
    code = (
        "import sys, numpy as np, rnncore\n"
        "rng = np.random.default_rng(0)\n"
        "sd = {'rnn.weight_ih_l0': rng.standard_normal((12, 2)), 'rnn.weight_hh_l0': rng.standard_normal((12, 3)),\n"
        "      'rnn.bias_ih_l0': rng.standard_normal(12), 'rnn.bias_hh_l0': rng.standard_normal(12)}\n"
        "layer = rnncore.TimeLSTM.from_torch(sd, prefix='rnn.', backend='numpy', dtype='float64')\n"
        "np.testing.assert_array_equal(layer.params[0], sd['rnn.weight_ih_l0'].T)\n"
        "np.testing.assert_array_equal(layer.params[2], sd['rnn.bias_ih_l0'] + sd['rnn.bias_hh_l0'])\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_from_torch_names_missing_keys():
    with pytest.raises(KeyError, match="the state dict has no weight_ih_l1"):
        rnncore.TimeRNN.from_torch({"weight_ih_l0": np.zeros((3, 2))}, index=1)


def test_a_share_of_the_rows_trains_as_the_whole_batch_would():
    """Two halves of a batch, each on its own model copy with share_rows, give the whole batch's
    loss and gradients once weighted by their share of rows: dropout masks included."""
    be = rnncore.get_backend("numpy")
    rng = np.random.default_rng(0)
    xs, ts = (rng.integers(0, 11, size=(5, 6)) for _ in range(2))
    whole = RecurrentLM(11, 4, 4, cell="gru", num_layers=2, dropout=0.5, backend=be, dtype="float64", seed=3)
    be.seed(9)
    loss = whole.forward(xs, ts)
    whole.backward()
    total_loss, total_grads = 0.0, [np.zeros_like(g) for g in whole.grads]
    for r0, r1 in ((0, 2), (2, 5)):
        part = RecurrentLM(11, 4, 4, cell="gru", num_layers=2, dropout=0.5, backend=be, dtype="float64", seed=3)
        part.share_rows(r0, r1, 5)
        be.seed(9)
        share = (r1 - r0) / 5
        total_loss += share * float(part.forward(xs[r0:r1], ts[r0:r1]))
        part.backward(share)
        for t, g in zip(total_grads, part.grads):
            t += g
    assert total_loss == pytest.approx(float(loss), rel=1e-12)
    for t, g in zip(total_grads, whole.grads):
        np.testing.assert_allclose(t, g, rtol=1e-10, atol=1e-14)
