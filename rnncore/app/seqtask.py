"""Sequence tasks of varying length with a known answer, learned by a recurrent stack that reads
batches of mixed lengths through ``forward(xs, lengths)``.

- parity: a bit string of 1..20 bits; the class is the number of ones, mod 2 (chance: 50%).
- adding: a sequence of (value, marker) steps, exactly two of them marked; the target is the
  sum of the two marked values (Hochreiter & Schmidhuber's adding problem). The values lie on
  a grid of 10 levels, 0, 1/9, ..., 1, so that each step is a token: 2 * level + marker. The trivial
  baseline predicts the training targets' mean; its mean squared error is the targets'
  variance (about 0.2).

Model: embedding -> ``Stack`` of RNN/LSTM/GRU layers (each a ``Bidirectional`` pair with
``--bidirectional``) -> affine on a readout of each row -> softmax (parity) or squared error
(adding). The readout is what PyTorch's h_n holds: the top forward layer's output at the row's
last valid step and, bidirectionally, the backward layer's output at step 0, where that
direction has read the whole row. The final states suit these tasks, whose answer depends on
every step; a mean over the steps would blur the parity count.

Data: a training set and a test set drawn from ``--seed``, with lengths uniform in
[--min-length, --max-length]; a second test set of longer sequences, up to
--longer-max-length, shows how far the model generalizes beyond the lengths it saw.
Training batches are sorted by length (little padding) and come in a new random order
each epoch.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..backends import get_backend
from ..layers import (
    Bidirectional,
    Stack,
    TimeAffine,
    TimeEmbedding,
    TimeGRU,
    TimeLSTM,
    TimeMSELoss,
    TimeRNN,
    TimeSoftmaxWithLoss,
)
from ..optim import Adam, clip_grads
from ..sequences import batches
from .options import positive

CELLS = {"rnn": TimeRNN, "lstm": TimeLSTM, "gru": TimeGRU}
LEVELS = 10  # adding: the number of value levels


# the tasks ----------------------------------------------------------------------------------
def draw_lengths(count, min_length, max_length, rng):
    return rng.integers(min_length, max_length + 1, size=count)


def parity_data(count, min_length, max_length, rng):
    """(sequences of bits, class labels: the number of ones mod 2)."""
    sequences = [rng.integers(0, 2, size=n) for n in draw_lengths(count, min_length, max_length, rng)]
    return sequences, np.array([s.sum() % 2 for s in sequences], dtype=np.int64)


def adding_data(count, min_length, max_length, rng):
    """(sequences of tokens 2 * level + marker, targets: the sum of the two marked values)."""
    sequences, targets = [], np.empty(count, dtype=np.float32)
    for k, n in enumerate(draw_lengths(count, min_length, max_length, rng)):
        levels = rng.integers(0, LEVELS, size=n)
        marked = rng.choice(n, size=2, replace=False)
        markers = np.zeros(n, dtype=np.int64)
        markers[marked] = 1
        sequences.append(2 * levels + markers)
        targets[k] = levels[marked].sum() / (LEVELS - 1)
    return sequences, targets


class Task:
    """What differs between tasks: the data, the vocabulary, the outputs (two classes: softmax
    loss; one value: squared error) and the shortest sequence that makes sense."""

    def __init__(self, name, make, vocab, outputs, min_length):
        self.name, self.make, self.vocab, self.outputs, self.min_length = name, make, vocab, outputs, min_length

    @property
    def classifies(self):
        return self.outputs > 1


TASKS = {"parity": Task("parity", parity_data, vocab=2, outputs=2, min_length=1),
         "adding": Task("adding", adding_data, vocab=2 * LEVELS, outputs=1, min_length=2)}


# the model ----------------------------------------------------------------------------------
class SequenceModel:
    """Embedding -> Stack -> readout of each row's final states -> affine -> loss."""

    def __init__(self, task, cell="gru", hidden=32, layers=1, bidirectional=False, embed=8, dropout=0.0,
                 backend=None, seed=0):
        be = self.backend = get_backend(backend)
        self.task = task
        rng = np.random.default_rng(seed)

        def draw(*shape):
            return be.asarray((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32))

        def recurrent(D):
            layer = CELLS[cell]
            G = layer.cell.gates * hidden
            biases = [np.zeros(G, np.float32) for _ in layer.cell.param_names[2:]]
            if cell == "lstm":
                biases[0][hidden : 2 * hidden] = 1  # forget gate open at first: gradients reach early steps
            return layer(draw(D, G), draw(hidden, G), *map(be.asarray, biases), backend=be)

        def stage(D):
            return Bidirectional(recurrent(D), recurrent(D)) if bidirectional else recurrent(D)

        width = 2 * hidden if bidirectional else hidden
        self.embed = TimeEmbedding(draw(task.vocab, embed), backend=be)
        self.stack = Stack([stage(embed if k == 0 else width) for k in range(layers)], dropout)
        self.head = TimeAffine(draw(width, task.outputs), be.xp.zeros(task.outputs, np.float32), backend=be)
        self.loss_layer = TimeSoftmaxWithLoss(backend=be) if task.classifies else TimeMSELoss(backend=be)
        self.bidirectional, self.hidden = bidirectional, hidden
        parts = (self.embed, self.stack, self.head)
        self.params = [p for part in parts for p in part.params]
        self.grads = [g for part in parts for g in part.grads]
        self._readout_cache = None

    def scores(self, ids, lengths, train=False):
        """(N, 1, outputs) for host arrays ids (N, T) and lengths (N,)."""
        if np.min(lengths) < 1:  # a row with no step has no final state to read
            raise ValueError("SequenceModel: every sequence needs at least one step")
        be = self.backend
        self.stack.train_flg = train
        lengths = be.asarray(lengths)
        hs = self.stack.forward(self.embed.forward(be.asarray(ids)), lengths)
        return self.head.forward(self.readout(hs, lengths)[:, None, :])

    def readout(self, hs, lengths):
        """(N, width): the forward direction at each row's last valid step; the backward one at 0."""
        xp = self.backend.xp
        rows, last = xp.arange(hs.shape[0]), lengths - 1
        self._readout_cache = (hs.shape, rows, last)
        H = self.hidden
        if not self.bidirectional:
            return hs[rows, last]
        return xp.concatenate([hs[rows, last, :H], hs[:, 0, H:]], axis=1)

    def readout_backward(self, d):
        shape, rows, last = self._readout_cache
        H = self.hidden
        dhs = self.backend.xp.zeros(shape, dtype=d.dtype)
        dhs[rows, last, :H] = d[:, :H]
        if self.bidirectional:
            dhs[:, 0, H:] = d[:, H:]
        return dhs

    def loss_and_grads(self, ids, lengths, targets):
        """Fill ``grads`` for one batch; returns (loss, scores (N, outputs)) as host values."""
        be = self.backend
        scores = self.scores(ids, lengths, train=True)
        loss = self.loss_layer.forward(scores, be.asarray(self._target_array(targets)))
        d = self.head.backward(self.loss_layer.backward())[:, 0, :]
        self.embed.backward(self.stack.backward(self.readout_backward(d)))
        return float(loss), be.to_numpy(scores)[:, 0, :]

    def train_step(self, ids, lengths, targets, optimizer, clip):
        """One update; returns (loss, scores) as host values."""
        loss, scores = self.loss_and_grads(ids, lengths, targets)
        if clip:
            clip_grads(self.grads, clip, self.backend)
        optimizer.update(self.params, self.grads, self.backend)
        return loss, scores

    def _target_array(self, targets):
        return targets[:, None] if self.task.classifies else targets[:, None, None]

    def predict(self, sequences, batch_size=256):
        """Per sequence, in the given order: the class (parity) or the predicted value (adding)."""
        out = np.empty(len(sequences), dtype=np.int64 if self.task.classifies else np.float32)
        for batch in batches(sequences, batch_size, sort=True):
            out[batch.rows] = self.answers(self.backend.to_numpy(self.scores(batch.ids, batch.lengths))[:, 0, :])
        return out

    def answers(self, scores):
        return scores.argmax(axis=1) if self.task.classifies else scores[:, 0]


# training and evaluation ----------------------------------------------------------------------
def quality(task, predictions, targets):
    """{"accuracy": ...} or {"mse": ...} of the predictions."""
    if task.classifies:
        return {"accuracy": float(np.mean(predictions == targets))}
    return {"mse": float(np.mean((predictions - targets) ** 2))}


def baseline(task, train_targets, targets):
    """The trivial model's score: the most common training class, or the training targets' mean."""
    if task.classifies:
        return quality(task, np.full(len(targets), np.bincount(train_targets).argmax()), targets)
    return quality(task, np.full(len(targets), train_targets.mean(), dtype=np.float32), targets)


def train(model, sequences, targets, epochs, batch_size, lr, clip=1.0, seed=0, progress=True, out=print):
    """Adam over length-sorted batches; returns one {"epoch", "loss", ...} dict per epoch."""
    optimizer, history, task = Adam(lr), [], model.task
    for epoch in range(1, epochs + 1):
        order = list(batches(sequences, batch_size, sort=True, seed=[seed, epoch]))
        losses, answers = [], np.empty(len(sequences), dtype=np.float64)
        bar = tqdm(order, desc=f"epoch {epoch}/{epochs}", leave=False, disable=None if progress else True)
        for batch in bar:
            loss, scores = model.train_step(batch.ids, batch.lengths, targets[batch.rows], optimizer, clip)
            losses.append(loss)
            answers[batch.rows] = model.answers(scores)
            bar.set_postfix(loss=f"{loss:.4f}")
        row = {"epoch": epoch, "loss": float(np.mean(losses)), **quality(task, answers, targets)}
        history.append(row)
        out(f"epoch {epoch:3d}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
            + " (training batches)")
    return history


def check_settings(task, min_length, max_length, longer_max_length, clip):
    if min_length < task.min_length:
        raise ValueError(f"{task.name} needs sequences of at least {task.min_length} steps, got --min-length "
                         f"{min_length}")
    if not min_length <= max_length < longer_max_length:
        raise ValueError(f"need --min-length ({min_length}) <= --max-length ({max_length}) < --longer-max-length "
                         f"({longer_max_length})")
    if not clip >= 0:
        raise ValueError(f"--clip must be >= 0 (0: no clipping), got {clip}")


def main(task="parity", cell="gru", hidden=32, layers=1, bidirectional=False, embed=8, dropout=0.0, epochs=5,
         batch_size=32, lr=0.01, clip=1.0, train_size=10000, test_size=2000, min_length=None, max_length=20,
         longer_max_length=40, backend=None, seed=0, progress=True, out=print):
    """Train and test; returns the settings and results as a dict (what ``--json`` writes)."""
    task = TASKS[task]
    min_length = task.min_length if min_length is None else min_length
    check_settings(task, min_length, max_length, longer_max_length, clip)
    rng = np.random.default_rng([2, seed])  # the data's stream, apart from the weights'
    train_data = task.make(train_size, min_length, max_length, rng)
    tests = {"test": (min_length, max_length), "longer": (max_length + 1, longer_max_length)}
    test_data = {name: task.make(test_size, lo, hi, rng) for name, (lo, hi) in tests.items()}
    model = SequenceModel(task, cell, hidden, layers, bidirectional, embed, dropout, backend, seed)
    settings = {"task": task.name, "cell": cell, "hidden": hidden, "layers": layers, "bidirectional": bidirectional,
                "embed": embed, "dropout": dropout, "epochs": epochs, "batch_size": batch_size, "lr": lr, "clip": clip,
                "train_size": train_size, "lengths": [min_length, max_length], "backend": model.backend.name,
                "seed": seed}
    shape = f"{layers} {'bidirectional ' if bidirectional else ''}{cell.upper()} layer(s) of {hidden}"
    out(f"{task.name}: {train_size} training sequences of {min_length}..{max_length} steps; {shape}, "
        f"Adam lr {lr}, batch {batch_size}, {epochs} epochs ({model.backend.name} backend, seed {seed})")
    start = time.perf_counter()
    history = train(model, *train_data, epochs, batch_size, lr, clip, seed, progress, out)
    seconds = time.perf_counter() - start
    results = {"settings": settings, "epochs": history, "train_seconds": seconds}
    for name, (lo, hi) in tests.items():
        sequences, targets = test_data[name]
        scored = quality(task, model.predict(sequences), targets)
        trivial = baseline(task, train_data[1], targets)
        results[name] = {"lengths": [lo, hi], "size": len(targets), **scored, "baseline": trivial}
        (metric, value), (_, base) = next(iter(scored.items())), next(iter(trivial.items()))
        out(f"{name} ({len(targets)} sequences of {lo}..{hi} steps): {metric} {value:.4f} "
            f"(trivial baseline {base:.4f})")
    out(f"training took {seconds:.1f} s")
    return results


def register(sub, common):
    """The ``rnncore seqtask`` command."""
    s = sub.add_parser("seqtask", help="learn parity or the adding problem from sequences of mixed lengths",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(s)
    s.add_argument("--task", choices=sorted(TASKS), default="parity", help="the task (default parity)")
    s.add_argument("--cell", choices=sorted(CELLS), default="gru", help="the recurrent cell (default gru)")
    s.add_argument("--bidirectional", action="store_true", help="each layer reads both ways")
    s.add_argument("--layers", type=positive(int), default=1, help="stacked recurrent layers (default 1)")
    s.add_argument("--hidden", type=positive(int), default=32, help="hidden size per direction (default 32)")
    s.add_argument("--embed", type=positive(int), default=8, help="token embedding size (default 8)")
    s.add_argument("--dropout", type=float, default=0.0, help="dropout between stacked layers (default 0)")
    s.add_argument("--epochs", type=positive(int), default=5, help="passes over the training set (default 5)")
    s.add_argument("--batch-size", type=positive(int), default=32, help="sequences per batch (default 32)")
    s.add_argument("--lr", type=positive(float), default=0.01, help="Adam's learning rate (default 0.01)")
    s.add_argument("--clip", type=float, default=1.0, help="clip the gradients' global norm here; 0: off "
                   "(default 1)")
    s.add_argument("--train-size", type=positive(int), default=10000, help="training sequences (default 10000)")
    s.add_argument("--test-size", type=positive(int), default=2000, help="sequences per test set (default 2000)")
    s.add_argument("--min-length", type=positive(int), help="shortest sequence (default: parity 1, adding 2)")
    s.add_argument("--max-length", type=positive(int), default=20, help="longest training sequence (default 20)")
    s.add_argument("--longer-max-length", type=positive(int), default=40,
                   help="the longer test set's lengths run from --max-length + 1 to this (default 40)")
    s.add_argument("--json", help="write the settings, each epoch's loss and the test results here")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(run=_run)


def _run(args):
    settings = {k: getattr(args, k) for k in ("task", "cell", "hidden", "layers", "bidirectional", "embed", "dropout",
                                             "epochs", "batch_size", "lr", "clip", "train_size", "test_size",
                                             "min_length", "max_length", "longer_max_length", "backend", "seed")}
    results = main(**settings, progress=not args.no_progress)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0
