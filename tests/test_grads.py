"""rnncore grads (d2l 9.7): dL/dh_{T-k} against an unrolled NumPy RNN and finite differences,
the spectral radii, vanishing and exploding at the documented settings, and the command."""
import json

import numpy as np
import pytest

import rnncore
from rnncore.app.cli import main
from rnncore.app.grads import gate_radii, last_step_loss_grad, measure, recurrent_layer, state_gradients, token_windows

BE = rnncore.get_backend("numpy")


def small_case(cell, N=2, T=7, D=3, H=4, seed=0, gate_bias=0.0):
    rng = np.random.default_rng(seed)
    layer = recurrent_layer(cell, D, H, 1.5, rng, BE, gate_bias)
    for b in layer.params[2:]:  # nonzero biases, so every term of the step is exercised
        b += rng.standard_normal(b.shape) * 0.3
    return layer, rng.standard_normal((N, T, D)), rng.standard_normal((N, H))


def test_rnn_state_gradients_equal_an_unrolled_numpy_backward():
    layer, xs, g = small_case("rnn")
    Wx, Wh, b = (p.copy() for p in layer.params)
    hs = [np.zeros_like(g)]
    for t in range(xs.shape[1]):
        hs.append(np.tanh(xs[:, t] @ Wx + hs[-1] @ Wh + b))
    expected = [g]
    for t in range(xs.shape[1], 0, -1):  # h_t = tanh(a_t): dL/dh_{t-1} = (dL/dh_t * (1 - h_t^2)) Wh^T
        expected.append((expected[-1] * (1 - hs[t] ** 2)) @ Wh.T)
    got = state_gradients(layer, xs, g)
    assert len(got) == xs.shape[1] + 1
    for k, (a, e) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-14, err_msg=f"lag {k}")


def states_after(layer, xs, steps):
    """The carried states after the first ``steps`` steps, from zeros."""
    N, H = xs.shape[0], layer.hidden_size
    layer.set_state(*[np.zeros((N, H)) for _ in layer.state_names])
    if steps:
        layer.forward(xs[:, :steps])
    return [getattr(layer, name).copy() for name in layer.state_names]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_state_gradients_match_finite_differences(cell):
    layer, xs, g = small_case(cell, gate_bias=1.0)
    T = xs.shape[1]
    got = state_gradients(layer, xs, g)
    for k in (1, 3, T):
        start = states_after(layer, xs, T - k)

        def loss(h, start=start, k=k):
            layer.set_state(h, *start[1:])
            return float((layer.forward(xs[:, T - k :])[:, -1] * g).sum())

        h0, eps = start[0], 1e-6
        numerical = np.zeros_like(h0)
        for idx in np.ndindex(h0.shape):
            bump = np.zeros_like(h0)
            bump[idx] = eps
            numerical[idx] = (loss(h0 + bump) - loss(h0 - bump)) / (2 * eps)
        np.testing.assert_allclose(got[k], numerical, rtol=1e-6, atol=1e-9, err_msg=f"{cell} lag {k}")


def test_loss_gradient_is_softmax_minus_one_hot_through_the_head():
    rng = np.random.default_rng(3)
    h, targets = rng.standard_normal((5, 4)), np.array([0, 2, 1, 2, 0])
    head_rng = np.random.default_rng(9)
    got = last_step_loss_grad(h, targets, np.random.default_rng(9), BE)
    W = head_rng.standard_normal((4, 3)) / 2  # the head draws (H, V) / sqrt(H) first
    scores = h @ W
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(5), targets] -= 1
    np.testing.assert_allclose(got, p @ W.T / 5, rtol=1e-10)


def test_radii_are_those_of_each_gate_block():
    layer = recurrent_layer("lstm", 2, 3, 1.0, np.random.default_rng(0), BE)
    layer.params[1][...] = np.hstack([np.diag([0.5, -k, 0.1]) for k in (1.0, 2.0, 3.0, 4.0)])
    assert gate_radii(layer) == pytest.approx([1.0, 2.0, 3.0, 4.0])
    rnn = recurrent_layer("rnn", 2, 30, 2.0, np.random.default_rng(0), BE)
    assert gate_radii(rnn)[0] == pytest.approx(2.0, rel=0.3)  # circular law: about the scale


def test_rnn_vanishes_by_default_and_explodes_with_a_large_scale_where_the_gated_cells_do_not():
    settings = {"hidden": 32, "length": 60, "rows": 8, "backend": "numpy"}
    default = measure("rnn", **settings)
    assert default["norms"][-1] / default["norms"][0] < 1e-9 and default["rate"] < 0.8
    large = {cell: measure(cell, scale=3.0, **settings) for cell in ("rnn", "lstm", "gru")}
    assert large["rnn"]["norms"][-1] / large["rnn"]["norms"][0] > 1e6 and large["rnn"]["rate"] > 1.2
    for cell in ("lstm", "gru"):
        assert large[cell]["norms"][-1] < large[cell]["norms"][0] and large[cell]["rate"] < 1


def test_corpus_windows_are_slices_of_the_training_split(shared_data):
    from rnncore.app import data

    ids = data.load_corpus("timemachine", shared_data)["train"]
    windows = token_windows("timemachine", 3, 12, np.random.default_rng(0), shared_data)
    slices = np.lib.stride_tricks.sliding_window_view(ids, 13)
    for row in windows:
        assert (slices == row).all(axis=1).any()


def test_grads_command_writes_json_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out_json, out_png = tmp_path / "g.json", tmp_path / "g.png"
    args = ["grads", "--backend", "numpy", "--cell", "rnn,gru", "--hidden", "8", "--length", "12", "--rows", "2"]
    assert main([*args, "--json", str(out_json), "--plot", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert "k=12" in out and out.count("\nrnn |") == 1 and out.count("\ngru |") == 1
    results = json.loads(out_json.read_text())["results"]
    assert [r["cell"] for r in results] == ["rnn", "gru"] and len(results[0]["norms"]) == 13
    assert results[1]["norms"] == measure("gru", hidden=8, length=12, rows=2, backend="numpy")["norms"]
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    assert main(["grads", "--cell", "rnn,tcn"]) == 2
