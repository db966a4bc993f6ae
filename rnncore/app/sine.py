"""Autoregression (d2l 9.1): forecast a noisy sine with d2l's linear model on tau lags and with
a TimeRNN.

The series is x_t = sin(0.01 t) + N(0, 0.2^2), t = 1..1000 (float32, from ``--seed``).

- Linear AR (d2l's model): x_t ~ w . (x_{t-tau}, ..., x_{t-1}) + b, tau = 4, fitted on d2l's
  600 training pairs (labels x_5..x_604) by minibatch SGD on the mean squared error: lr 0.01,
  5 epochs, batches of 16 in a shuffled order, w drawn from N(0, 0.01^2), b = 0. It runs
  in NumPy float64 on the host whatever ``--backend`` says: four weights need no
  accelerator, and so its numbers are the same on every backend and machine.
- TimeRNN (hidden 16) with an affine head, trained with Adam on windows of 32 steps drawn
  from the first 600 points, on the chosen backend in float32.

Both then forecast the held-out part: from each start s, k steps ahead, feeding back their
own predictions after the first (the linear model from the tau true values before s, the
RNN from the 64 before s). The mean squared error is taken over the same targets for both:
x_{s+k-1} for every start s = 605..937 (0-based index 604..936), past every training label.
The noise alone costs 0.04 (0.034 over these targets with seed 0).

Reproducibility: the linear model's numbers are the same on every backend and machine. The
RNN's are the same from run to run on one backend and machine, not across backends: while
it trains, Wh's spectral radius grows from 0.9 to about 2 and the tanh recurrence turns
chaotic over its 32-step windows, so a rounding difference grows until it is another
trained network (a nudge of 1e-12 to one weight, in float64, moves the weights by 0.2 within
400 steps; in float32 a nudge of one ulp moves the 64-step error from 0.31 to 0.38-0.51).
"""
import argparse
from pathlib import Path

import numpy as np

from ..backends import get_backend
from ..layers import TimeAffine, TimeMSELoss, TimeRNN
from ..optim import Adam
from .options import positive

TAU = 4
TRAIN_POINTS = 600
HORIZONS = (1, 4, 16, 64)
LONGEST = max(HORIZONS)
WARMUP = 64  # true values the RNN reads before it forecasts


def noisy_sine(length=1000, noise=0.2, seed=0):
    t = np.arange(1, length + 1)
    return (np.sin(0.01 * t) + np.random.default_rng(seed).normal(0, noise, length)).astype(np.float32)


# d2l's linear model ------------------------------------------------------------------------
def lagged(series, tau=TAU):
    """d2l's features and labels: row j of X is series[j : j + tau], its label series[j + tau]."""
    series = np.asarray(series, dtype=np.float64)
    return np.lib.stride_tricks.sliding_window_view(series[:-1], tau), series[tau:]


def minibatches(n, batch, rng):
    """One epoch of row indices: a shuffled order cut into batches (the last may be short)."""
    order = rng.permutation(n)
    return [order[i : i + batch] for i in range(0, n, batch)]


def sgd_linear(X, y, w, b, lr, batches):
    """Minibatch SGD on mean((X w + b - y)^2) over each batch of rows in turn; returns (w, b)."""
    w = np.array(w, dtype=np.float64)
    for rows in batches:
        residual = X[rows] @ w + b - y[rows]
        slope = 2 * residual / len(rows)  # d loss / d prediction
        w -= lr * (X[rows].T @ slope)
        b -= lr * slope.sum()
    return w, float(b)


def fit_linear(series, tau=TAU, train_points=TRAIN_POINTS, lr=0.01, epochs=5, batch=16, seed=0):
    """d2l 9.1's fit: (w, b) after ``epochs`` of SGD on the first ``train_points`` pairs."""
    X, y = lagged(series, tau)
    rng = np.random.default_rng([1, seed])  # a stream of its own, apart from the noise's
    w = rng.normal(0, 0.01, tau)
    batches = [rows for _ in range(epochs) for rows in minibatches(train_points, batch, rng)]
    return sgd_linear(X[:train_points], y[:train_points], w, 0.0, lr, batches)


def linear_forecasts(w, b, series, starts, longest):
    """(longest, len(starts)): row k-1 forecasts series[starts + k - 1] from the tau true values
    before each start, then the model's own predictions."""
    tau = len(w)
    window = np.asarray(series, dtype=np.float64)[np.asarray(starts)[:, None] - tau + np.arange(tau)]
    preds = np.empty((longest, len(starts)))
    for k in range(longest):
        preds[k] = window @ w + b
        window = np.column_stack([window[:, 1:], preds[k]])
    return preds


# the RNN ------------------------------------------------------------------------------------
class SineForecaster:
    """TimeRNN (1 -> hidden) followed by TimeAffine (hidden -> 1)."""

    def __init__(self, hidden=16, backend=None, seed=0):
        be = self.backend = get_backend(backend)
        rng = np.random.default_rng(seed)

        def draw(*shape):
            return be.asarray((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32))

        self.rnn = TimeRNN(draw(1, hidden), draw(hidden, hidden), be.xp.zeros(hidden, np.float32), backend=be)
        self.head = TimeAffine(draw(hidden, 1), be.xp.zeros(1, np.float32), backend=be)
        self.loss = TimeMSELoss(backend=be)
        self.params = self.rnn.params + self.head.params
        self.grads = self.rnn.grads + self.head.grads

    def predict(self, xs):
        return self.head.forward(self.rnn.forward(xs))

    def train_step(self, xs, ts, optimizer):
        loss = self.loss.forward(self.predict(xs), ts)
        self.rnn.backward(self.head.backward(self.loss.backward()))
        optimizer.update(self.params, self.grads, self.backend)
        return loss


def fit(series, train_points=TRAIN_POINTS, hidden=16, iterations=400, window=32, batch=32, lr=0.01, backend=None,
        seed=0):
    model = SineForecaster(hidden, backend, seed)
    be, rng, opt = model.backend, np.random.default_rng(seed), Adam(lr)
    for _ in range(iterations):
        starts = rng.integers(0, train_points - window - 1, size=batch)
        rows = starts[:, None] + np.arange(window)
        model.train_step(be.asarray(series[rows][..., None]), be.asarray(series[rows + 1][..., None]), opt)
    return model


def rnn_forecasts(model, series, starts, longest, warmup=WARMUP):
    """Like ``linear_forecasts``: the RNN reads the ``warmup`` true values before each start."""
    be = model.backend
    history = series[np.asarray(starts)[:, None] - warmup + np.arange(warmup)][..., None]
    model.rnn.stateful = True
    model.rnn.reset_state()
    prediction = model.predict(be.asarray(history))[:, -1:, :]
    preds = np.empty((longest, len(starts)))
    for k in range(longest):
        preds[k] = be.to_numpy(prediction)[:, 0, 0]
        prediction = model.predict(prediction)
    model.rnn.stateful = False
    return preds


# both ---------------------------------------------------------------------------------------
def mse_by_horizon(preds, series, starts, horizons=HORIZONS):
    """{k: mean squared error of the k-step-ahead forecasts ``preds[k - 1]``}."""
    return {k: float(np.mean((preds[k - 1] - series[np.asarray(starts) + k - 1]) ** 2)) for k in horizons}


def held_out_starts(length, tau=TAU, train_points=TRAIN_POINTS, longest=LONGEST):
    """Forecast starts past every training label (d2l's last label is index train_points + tau - 1)."""
    return np.arange(train_points + tau, length - longest + 1)


def main(backend=None, hidden=16, iterations=400, seed=0, plot=None, out=print):
    series = noisy_sine(seed=seed)
    w, b = fit_linear(series, seed=seed)
    model = fit(series, hidden=hidden, iterations=iterations, backend=backend, seed=seed)
    starts = np.arange(WARMUP, len(series) - LONGEST + 1)  # every start both models can forecast from
    preds = {"linear": linear_forecasts(w, b, series, starts, LONGEST),
             "rnn": rnn_forecasts(model, series, starts, LONGEST)}
    test = held_out_starts(len(series))
    held = np.isin(starts, test)
    errors = {name: mse_by_horizon(p[:, held], series, test) for name, p in preds.items()}
    noise = series[test] - np.sin(0.01 * (test + 1))
    out(f"noisy sine, seed {seed}: linear AR on {TAU} lags (NumPy float64, SGD lr 0.01, 5 epochs, batch 16: "
        f"w = {np.array2string(w, precision=3)}, b = {b:.3f}); TimeRNN hidden {hidden}, {iterations} Adam steps "
        f"({model.backend.name} backend)")
    out(f"mean squared error k steps ahead, {len(test)} held-out starts (noise alone: {np.mean(noise ** 2):.4f})")
    out("steps ahead | linear AR | TimeRNN")
    for k in HORIZONS:
        out(f"{k:11d} | {errors['linear'][k]:.4f} | {errors['rnn'][k]:.4f}")
    if plot:
        plot_forecasts(series, starts, preds, plot)
    return errors


def plot_forecasts(series, starts, preds, path):
    """d2l 9.1's figures for both models: the data with one-step forecasts, then the k-step curves
    (each forecast drawn at the time it forecasts)."""
    from .stats import pyplot

    plt = pyplot()
    t = np.arange(1, len(series) + 1)
    named = [("linear AR", preds["linear"]), ("TimeRNN", preds["rnn"])]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    axes[0].plot(t, series, lw=0.6, color="0.6", label="data")
    for name, p in named:
        axes[0].plot(t[starts], p[0], lw=1, label=f"{name}, 1-step")
    for ax, (name, p) in zip(axes[1:], named):
        ax.plot(t, series, lw=0.6, color="0.8", label="data")
        for k in HORIZONS:
            ax.plot(t[starts + k - 1], p[k - 1], lw=1, label=f"{name}, {k}-step")
    for ax in axes:
        ax.axvline(TRAIN_POINTS + TAU + 0.5, color="k", lw=0.5, ls=":")
        ax.set(ylabel="x")
        ax.legend(fontsize=7, loc="lower left")
    axes[-1].set(xlabel="time")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def register(sub, common):
    """The ``rnncore sine`` command."""
    s = sub.add_parser("sine", help="d2l 9.1: a linear AR model and a TimeRNN forecast a noisy sine",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(s)
    s.add_argument("--hidden", type=positive(int), default=16, help="the RNN's hidden size (default 16)")
    s.add_argument("--iterations", type=positive(int), default=400, help="the RNN's Adam steps (default 400)")
    s.add_argument("--plot", help="write d2l's figures (one-step and k-step forecasts) as a PNG here")
    s.set_defaults(run=_run)


def _run(args):
    main(args.backend, args.hidden, args.iterations, args.seed, args.plot)
    return 0
