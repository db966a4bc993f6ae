"""TimeRNN/TimeLSTM/TimeGRU against torch.nn.RNN/LSTM/GRU on the same weights (float64, CPU):
outputs, the last states, and every gradient, with the weights loaded through ``from_torch``."""
import numpy as np
import pytest
from conftest import CELL_KINDS, layer_class, to_backend

torch = pytest.importorskip("torch")

TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 7, 5, 4), (2, 12, 3, 9)])
def test_matches_torch(backend, kind, shape):
    N, T, D, H = shape
    torch.manual_seed(sum(shape))
    net = TORCH[kind](D, H, batch_first=True).double()
    with torch.no_grad():  # biases away from PyTorch's small init, so a misplaced bias shows
        for name, p in net.named_parameters():
            if name.startswith("bias"):
                p.normal_()
    x = torch.randn(N, T, D, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(1, N, H, dtype=torch.float64, requires_grad=True) for _ in layer_class(kind).cell.states]
    weights = torch.randn(N, T, H, dtype=torch.float64)
    out, last = net(x, tuple(states) if kind == "lstm" else states[0])
    last = list(last) if kind == "lstm" else [last]
    ((out * weights).sum() + sum((s * s).sum() for s in last)).backward()

    layer = layer_class(kind).from_torch(net.state_dict(), stateful=True, backend=backend, dtype="float64")
    layer.set_state(*to_backend(backend, [s.detach().numpy()[0] for s in states]))
    hs = layer.forward(backend.asarray(x.detach().numpy()))
    ours_last = [getattr(layer, s) for s in layer.state_names]
    dxs = layer.backward(backend.asarray(weights.numpy()), *(2 * s for s in ours_last))

    def same(ours, theirs):
        np.testing.assert_allclose(backend.to_numpy(ours), theirs, rtol=1e-10, atol=1e-12)

    same(hs, out.detach().numpy())
    for ours, theirs in zip(ours_last, last):
        same(ours, theirs.detach().numpy()[0])
    same(dxs, x.grad.numpy())
    same(layer.grads[0], net.weight_ih_l0.grad.numpy().T)
    same(layer.grads[1], net.weight_hh_l0.grad.numpy().T)
    if kind == "gru":  # two biases, apart
        same(layer.grads[2], net.bias_ih_l0.grad.numpy())
        same(layer.grads[3], net.bias_hh_l0.grad.numpy())
    else:  # one bias, the sum of PyTorch's two, which get the same gradient
        same(layer.grads[2], net.bias_ih_l0.grad.numpy())
    for name, s in zip(layer.state_names, states):
        same(getattr(layer, "d" + name), s.grad.numpy()[0])
