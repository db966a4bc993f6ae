"""Sequence regression (d2l 9.1): fit a noisy sine with a TimeRNN and an MSE head.

The series is x_t = sin(0.01 t) + N(0, 0.2^2), t = 1..1000; the first 600 points train.
Then the model forecasts the rest: 1 step ahead from the true history, and k steps ahead
feeding back its own predictions, whose error grows with k as d2l shows. The noise
alone costs 0.04 in mean squared error.
"""
import numpy as np

from ..backends import get_backend
from ..layers import TimeAffine, TimeMSELoss, TimeRNN
from ..optim import Adam
from .options import positive


def noisy_sine(length=1000, noise=0.2, seed=0):
    t = np.arange(1, length + 1)
    return (np.sin(0.01 * t) + np.random.default_rng(seed).normal(0, noise, length)).astype(np.float32)


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


def fit(series, train_points=600, hidden=16, iterations=400, window=32, batch=32, lr=0.01, backend=None, seed=0):
    model = SineForecaster(hidden, backend, seed)
    be, rng, opt = model.backend, np.random.default_rng(seed), Adam(lr)
    for _ in range(iterations):
        starts = rng.integers(0, train_points - window - 1, size=batch)
        rows = starts[:, None] + np.arange(window)
        model.train_step(be.asarray(series[rows][..., None]), be.asarray(series[rows + 1][..., None]), opt)
    return model


def forecast_errors(model, series, train_points=600, horizons=(1, 4, 16, 64), warmup=64):
    """Mean squared error k steps ahead over every start in the held-out part."""
    be = model.backend
    longest = max(horizons)
    starts = np.arange(train_points, len(series) - longest + 1)
    history = series[starts[:, None] - warmup + np.arange(warmup)][..., None]
    model.rnn.stateful = True
    model.rnn.reset_state()
    prediction = model.predict(be.asarray(history))[:, -1:, :]
    errors = {}
    for k in range(1, longest + 1):
        if k in horizons:
            truth = series[starts + k - 1]
            errors[k] = float(np.mean((be.to_numpy(prediction)[:, 0, 0] - truth) ** 2))
        prediction = model.predict(prediction)
    model.rnn.stateful = False
    return errors


def main(backend=None, hidden=16, iterations=400, seed=0, out=print):
    series = noisy_sine(seed=seed)
    model = fit(series, hidden=hidden, iterations=iterations, backend=backend, seed=seed)
    errors = forecast_errors(model, series)
    out(f"noisy sine, {model.backend.name} backend, TimeRNN hidden {hidden}, {iterations} Adam steps")
    out("steps ahead | mean squared error (noise alone: 0.040)")
    for k, err in errors.items():
        out(f"{k:11d} | {err:.4f}")
    return errors


def register(sub, common):
    """The ``rnncore sine`` command."""
    s = sub.add_parser("sine", help="d2l 9.1: fit a noisy sine, print k-step-ahead errors")
    common(s)
    s.add_argument("--hidden", type=positive(int), default=16)
    s.add_argument("--iterations", type=positive(int), default=400)
    s.set_defaults(run=_run)


def _run(args):
    main(args.backend, args.hidden, args.iterations, args.seed)
    return 0
