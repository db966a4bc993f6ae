"""Sequences as users have them: variable lengths (PyTorch's packed sequences as the oracle),
finite differences of the masked backward, and bad lengths refused."""
import zlib

import numpy as np
import pytest
from conftest import CELL_KINDS, layer_class, random_params, to_backend
from gradcheck import assert_close_grad, numerical_grad

torch = pytest.importorskip("torch")

TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def torch_packed(net, x, lengths, states):
    """PyTorch's run over packed sequences (rows of length 0 left out: PyTorch refuses them):
    outputs padded with zeros, and each row's last state."""
    nonzero = [n for n in range(len(lengths)) if lengths[n] > 0]
    if not nonzero:  # nothing to run: zeros out, the states as they came
        return torch.zeros(*x.shape[:2], net.hidden_size, dtype=x.dtype), [s[0] * 1 for s in states]
    packed = torch.nn.utils.rnn.pack_padded_sequence(x[nonzero], torch.tensor(lengths[nonzero]), batch_first=True,
                                                     enforce_sorted=False)
    start = [s[:, nonzero] for s in states]
    out, last = net(packed, tuple(start) if len(start) == 2 else start[0])
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    full = torch.zeros(x.shape[0], x.shape[1], out.shape[2], dtype=x.dtype)
    full[nonzero] = out
    last = list(last) if isinstance(last, tuple) else [last]
    finals = []
    for s, l in zip(states, last):
        f = s[0].clone()
        f[nonzero] = l[0]
        finals.append(f)
    return full, finals


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("lengths, checkpoint", [([7, 3, 0, 1, 7], None), ([1, 5, 2, 6, 4], 2), ([4] * 5, None),
                                                  ([0, 0, 0, 0, 0], 3), ([7, 6, 3, 1, 0], None),
                                                  ([10] * 5, None), ([10] * 5, 4)])
def test_variable_lengths_match_packed_torch(backend, kind, lengths, checkpoint):
    """Outputs (zeros past each row's end), each row's last state, and every gradient, with the
    gradient of the last states arriving from beyond the chunk (dh_next, dc_next). T is one step
    past the longest row: the input and weight products take only the live steps where over a
    tenth are padding, and all steps otherwise ([10] * 5, and its full segments)."""
    lengths = np.array(lengths)
    N, T, D, H = len(lengths), max(int(lengths.max()), 1) + 1, 3, 4
    torch.manual_seed(int(lengths.sum()) + len(kind))
    net = TORCH[kind](D, H, batch_first=True).double()
    x = torch.randn(N, T, D, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(1, N, H, dtype=torch.float64, requires_grad=True) for _ in layer_class(kind).cell.states]
    weights, final_weights = torch.randn(N, T, H, dtype=torch.float64), [torch.randn(N, H, dtype=torch.float64)
                                                                        for _ in states]
    out, finals = torch_packed(net, x, lengths, states)
    ((out * weights).sum() + sum((f * w).sum() for f, w in zip(finals, final_weights))).backward()

    layer = layer_class(kind).from_torch(net.state_dict(), stateful=True, backend=backend, dtype="float64")
    layer.checkpoint = checkpoint
    layer.set_state(*to_backend(backend, [s.detach().numpy()[0] for s in states]))
    hs = layer.forward(backend.asarray(x.detach().numpy()), lengths=lengths)
    ours_final = [backend.to_numpy(getattr(layer, s)) for s in layer.state_names]
    dxs = layer.backward(backend.asarray(weights.numpy()), *to_backend(backend, [w.numpy() for w in final_weights]))

    def same(ours, theirs):
        np.testing.assert_allclose(backend.to_numpy(ours), theirs, rtol=1e-10, atol=1e-12)

    def grad(t):  # no row ran: PyTorch leaves the weights' gradients unset
        return np.zeros(tuple(t.shape)) if t.grad is None else t.grad.numpy()

    same(hs, out.detach().numpy())
    for ours, theirs in zip(ours_final, finals):
        same(ours, theirs.detach().numpy())
    same(dxs, grad(x))
    same(layer.grads[0], grad(net.weight_ih_l0).T)
    same(layer.grads[1], grad(net.weight_hh_l0).T)
    same(layer.grads[-1], grad(net.bias_hh_l0))
    for name, s in zip(layer.state_names, states):
        same(getattr(layer, "d" + name), grad(s)[0])


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_masked_backward_by_finite_differences(backend, kind):
    N, T, D, H = 3, 4, 2, 3
    lengths = np.array([4, 0, 2])
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    layer = layer_class(kind)(*to_backend(backend, random_params(rng, kind, D, H, np.float64)), stateful=True,
                              backend=backend)
    xs, weights = to_backend(backend, [rng.standard_normal((N, T, D)), rng.standard_normal((N, T, H))])
    states = to_backend(backend, [rng.standard_normal((N, H)) for _ in layer.state_names])
    final_weights = to_backend(backend, [rng.standard_normal((N, H)) for _ in layer.state_names])

    def loss():
        layer.set_state(*states)
        total = (layer.forward(xs, lengths=lengths) * weights).sum()
        return total + sum((getattr(layer, s) * w).sum() for s, w in zip(layer.state_names, final_weights))

    loss()
    dxs = layer.backward(weights, *final_weights)
    analytic = [backend.to_numpy(g).copy() for g in layer.grads] + [backend.to_numpy(dxs)]
    analytic += [backend.to_numpy(getattr(layer, "d" + s)) for s in layer.state_names]
    names = list(layer.param_names) + ["xs"] + [f"{s}0" for s in layer.state_names]
    for name, target, grad in zip(names, list(layer.params) + [xs] + states, analytic):
        assert_close_grad(numerical_grad(loss, target, backend), grad, f"{kind} d{name}")


@pytest.mark.parametrize("bad, error, message", [
    ([1, 2], ValueError, r"lengths must have shape \(N=3,\)"),
    ([1, -1, 2], ValueError, r"lengths must lie in \[0, T=4\], got -1"),
    ([1, 5, 2], ValueError, r"lengths must lie in \[0, T=4\], got 5"),
    ([1.0, 2.0, 3.0], TypeError, "lengths must hold integers, got dtype float64"),
    ([True, False, True], TypeError, "lengths must hold integers, got dtype bool"),
    ("abc", TypeError, "lengths must be an array of N integers"),
    ([[1, 2, 3]], ValueError, r"lengths must have shape \(N=3,\)"),
])
def test_bad_lengths_are_refused(bad, error, message):
    import rnncore

    layer = rnncore.TimeGRU(*random_params(np.random.default_rng(0), "gru", 2, 3, np.float32), backend="numpy")
    with pytest.raises(error, match=message):
        layer.forward(np.zeros((3, 4, 2), np.float32), lengths=bad if isinstance(bad, str) else np.array(bad))


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("lengths", [[5, 2, 1, 5], None])
def test_stacked_bidirectional_matches_torch(backend, kind, lengths):
    """Stack.from_torch of a 2-layer bidirectional PyTorch module: outputs, each layer's and
    direction's last state, the input gradient and every weight gradient, over packed sequences."""
    import rnncore

    N, T, D, H = 4, 5, 3, 4
    torch.manual_seed(len(kind) + (0 if lengths is None else 7))
    net = TORCH[kind](D, H, num_layers=2, bidirectional=True, batch_first=True).double()
    x = torch.randn(N, T, D, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(N, T, 2 * H, dtype=torch.float64)
    if lengths is None:
        out, last = net(x)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=True,
                                                         enforce_sorted=False)
        out, last = net(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    (out * weights).sum().backward()
    h_n = (last[0] if kind == "lstm" else last).detach().numpy()  # (layers * 2, N, H)

    stack = rnncore.Stack.from_torch(net.state_dict(), kind, num_layers=2, bidirectional=True, backend=backend,
                                     dtype="float64")
    ours = stack.forward(backend.asarray(x.detach().numpy()), None if lengths is None else np.array(lengths))
    dx = stack.backward(backend.asarray(weights.numpy()))

    def same(a, b):
        np.testing.assert_allclose(backend.to_numpy(a), b, rtol=1e-10, atol=1e-12)

    same(ours, out.detach().numpy())
    same(dx, x.grad.numpy())
    for k, bi in enumerate(stack.layers):
        for direction, layer in enumerate(bi.layers):
            same(layer.h, h_n[2 * k + direction])
            suffix = f"_l{k}" + ("_reverse" if direction else "")
            torch_grads = [getattr(net, f"weight_ih{suffix}").grad.numpy().T,
                           getattr(net, f"weight_hh{suffix}").grad.numpy().T,
                           getattr(net, f"bias_hh{suffix}").grad.numpy()]
            for g, t in zip([layer.grads[0], layer.grads[1], layer.grads[-1]], torch_grads):
                same(g, t)


def test_stack_applies_dropout_between_layers_only():
    import rnncore

    be = rnncore.get_backend("numpy")
    rng = np.random.default_rng(3)
    layers = [rnncore.TimeRNN(*random_params(rng, "rnn", 4, 4, np.float64), backend=be) for _ in range(2)]
    stack = rnncore.Stack(layers, dropout=0.5)
    xs = rng.standard_normal((3, 5, 4))
    be.seed(0)
    a = stack.forward(xs)
    stack.train_flg = False
    plain = layers[1].forward(layers[0].forward(xs))
    np.testing.assert_allclose(stack.forward(xs), plain)  # no dropout when not training
    assert not np.allclose(a, plain)  # dropout between the layers while training
    be.seed(0)
    stack.train_flg = True
    mask = be.dropout_mask((5, 3, 4), 0.5, np.dtype(np.float64)).transpose(1, 0, 2)
    np.testing.assert_allclose(a, layers[1].forward(layers[0].forward(xs) * mask))
