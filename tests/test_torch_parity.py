"""TimeRNN/TimeLSTM against torch.nn.RNN/LSTM on the same weights (float64, CPU)."""
import numpy as np
import pytest
from conftest import to_backend

import rnncore

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 7, 5, 4), (2, 12, 3, 9)])
def test_matches_torch(backend, kind, shape):
    N, T, D, H = shape
    torch.manual_seed(sum(shape))
    net = (torch.nn.RNN if kind == "rnn" else torch.nn.LSTM)(D, H, batch_first=True).double()
    x = torch.randn(N, T, D, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(1, N, H, dtype=torch.float64, requires_grad=True) for _ in range(1 if kind == "rnn" else 2)]
    weights = torch.randn(N, T, H, dtype=torch.float64)
    out, _ = net(x, states[0] if kind == "rnn" else tuple(states))
    (out * weights).sum().backward()

    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    params = [sd["weight_ih_l0"].T, sd["weight_hh_l0"].T, sd["bias_ih_l0"] + sd["bias_hh_l0"]]
    cls = rnncore.TimeRNN if kind == "rnn" else rnncore.TimeLSTM
    layer = cls(*to_backend(backend, params), stateful=True, backend=backend)
    layer.set_state(*to_backend(backend, [s.detach().numpy()[0] for s in states]))
    hs = layer.forward(backend.asarray(x.detach().numpy()))
    dxs = layer.backward(backend.asarray(weights.numpy()))

    def same(ours, theirs):
        np.testing.assert_allclose(backend.to_numpy(ours), theirs, rtol=1e-10, atol=1e-12)

    same(hs, out.detach().numpy())
    same(dxs, x.grad.numpy())
    same(layer.grads[0], net.weight_ih_l0.grad.numpy().T)
    same(layer.grads[1], net.weight_hh_l0.grad.numpy().T)
    same(layer.grads[2], net.bias_ih_l0.grad.numpy())
    same(layer.dh, states[0].grad.numpy()[0])
    if kind == "lstm":
        same(layer.dc, states[1].grad.numpy()[0])
