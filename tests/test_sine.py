"""rnncore sine (d2l 9.1): the linear AR model against closed-form least squares and brute force,
the forecasts' alignment, and the command."""
import numpy as np
import pytest

from rnncore.app import sine
from rnncore.app.cli import main

SERIES = sine.noisy_sine(seed=0)


def test_lagged_features_are_the_tau_values_before_each_label():
    X, y = sine.lagged(SERIES, 4)
    assert X.shape == (996, 4) and y.shape == (996,)
    for j in (0, 1, 599, 995):
        assert X[j].tolist() == [float(SERIES[j + i]) for i in range(4)]
        assert y[j] == SERIES[j + 4]


def test_full_batch_descent_reaches_the_least_squares_solution():
    X, y = sine.lagged(SERIES)
    X, y = X[:600], y[:600]
    exact = np.linalg.lstsq(np.column_stack([X, np.ones(600)]), y, rcond=None)[0]
    w, b = sine.sgd_linear(X, y, np.zeros(4), 0.0, 0.4, [np.arange(600)] * 2000)
    np.testing.assert_allclose(np.r_[w, b], exact, atol=1e-10)


def test_one_sgd_step_follows_the_numerical_gradient():
    X, y = sine.lagged(SERIES)
    rows = np.array([5, 17, 3, 400])
    w0, b0, lr = np.array([0.1, -0.2, 0.3, 0.05]), 0.02, 0.01
    w1, b1 = sine.sgd_linear(X, y, w0, b0, lr, [rows])

    def loss(p):
        return np.mean((X[rows] @ p[:4] + p[4] - y[rows]) ** 2)

    p0, h = np.r_[w0, b0], 1e-6
    numerical = [(loss(p0 + h * e) - loss(p0 - h * e)) / (2 * h) for e in np.eye(5)]
    np.testing.assert_allclose((p0 - np.r_[w1, b1]) / lr, numerical, rtol=1e-6, atol=1e-9)


def test_d2l_fit_visits_every_training_pair_once_an_epoch_and_nears_least_squares():
    batches = sine.minibatches(600, 16, np.random.default_rng(0))
    assert [len(b) for b in batches] == [16] * 37 + [8]
    assert sorted(np.concatenate(batches)) == list(range(600))
    X, y = sine.lagged(SERIES)
    exact = np.linalg.lstsq(np.column_stack([X[:600], np.ones(600)]), y[:600], rcond=None)[0]
    starts = sine.held_out_starts(len(SERIES))
    w, b = sine.fit_linear(SERIES)
    fitted = sine.mse_by_horizon(sine.linear_forecasts(w, b, SERIES, starts, 1), SERIES, starts, (1,))[1]
    best = sine.mse_by_horizon(sine.linear_forecasts(exact[:4], exact[4], SERIES, starts, 1), SERIES, starts, (1,))[1]
    assert fitted == pytest.approx(best, rel=0.02)


def test_linear_forecasts_feed_back_their_own_predictions():
    w, b = np.array([0.1, 0.2, 0.3, 0.35]), 0.01
    starts = np.array([4, 100, 900])
    preds = sine.linear_forecasts(w, b, SERIES, starts, 10)
    for j, s in enumerate(starts):
        window = [float(v) for v in SERIES[s - 4 : s]]
        for k in range(10):
            nxt = sum(wi * vi for wi, vi in zip(w, window[-4:])) + b
            assert preds[k, j] == pytest.approx(nxt, rel=1e-12)
            window.append(nxt)


def test_errors_compare_each_forecast_with_the_value_it_forecasts():
    starts = sine.held_out_starts(len(SERIES))
    assert starts[0] == 604 and starts[-1] == 1000 - 64
    oracle = np.stack([SERIES[starts + k - 1] for k in range(1, 65)])
    assert sine.mse_by_horizon(oracle, SERIES, starts) == {1: 0.0, 4: 0.0, 16: 0.0, 64: 0.0}
    late = oracle.copy()
    late[0] = SERIES[starts + 1]  # the 1-step row one step off: not zero
    assert sine.mse_by_horizon(late, SERIES, starts)[1] > 0.01


def test_rnn_forecasts_are_the_rnn_run_on_history_and_its_own_predictions():
    model = sine.fit(SERIES, iterations=3, backend="numpy")
    start = 700
    preds = sine.rnn_forecasts(model, SERIES, np.array([start]), 6)
    sequence = list(SERIES[start - sine.WARMUP : start])
    for k in range(6):
        out = model.predict(np.array(sequence, dtype=np.float32)[None, :, None])  # stateless: from zeros
        assert preds[k, 0] == pytest.approx(float(out[0, -1, 0]), abs=1e-5)
        sequence.append(np.float32(preds[k, 0]))


def test_sine_command_prints_both_models_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "sine.png"
    assert main(["sine", "--backend", "numpy", "--iterations", "30", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|") for line in out.splitlines() if line.strip()[:1].isdigit()]
    table = {int(k): (float(a), float(r)) for k, a, r in rows}
    assert list(table) == [1, 4, 16, 64]
    w, b = sine.fit_linear(SERIES)
    starts = sine.held_out_starts(len(SERIES))
    expected = sine.mse_by_horizon(sine.linear_forecasts(w, b, SERIES, starts, 64), SERIES, starts)
    for k, (linear, _) in table.items():
        assert linear == pytest.approx(expected[k], abs=1e-4)
    assert table[1][0] < 0.045 < table[64][0]  # the noise costs 0.034 here; errors grow with k
    assert png.read_bytes()[:4] == b"\x89PNG"
