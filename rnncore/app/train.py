"""Truncated-BPTT training: the loop, evaluation, checkpoints, resume, divergence handling.

The loop reads the loss back from the device only every ``eval_interval`` iterations
(one sync for the whole interval), which is also when a NaN or infinite loss is noticed;
the iteration it first appeared at is named, and no checkpoint is written after it.
"""
import math
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import checkpoint
from .data import RandomBatches, SequentialBatches
from ..checks import trusted_ids
from ..optim import clip_grads


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: the state at the last finished iteration was saved and training can resume."""


def perplexity(mean_loss):
    """exp(mean loss); inf rather than an OverflowError for a model that has blown up, NaN for NaN."""
    if math.isnan(mean_loss):
        return math.nan
    return math.exp(mean_loss) if mean_loss < 700 else math.inf


def evaluation_rows(ids, time_size, preferred=10, stateful=True, split="a split"):
    """The book evaluates 10 rows at a time; fewer where the split is short. Windows from a
    zero state (not ``stateful``) start at a random offset below time_size, so they need
    time_size more tokens (as RandomBatches does)."""
    needed = time_size + 1 if stateful else 2 * time_size + 1
    if len(ids) < needed:
        raise ValueError(f"{split} of {len(ids)} tokens is too short to evaluate with time size {time_size} "
                         f"(it needs at least {needed})")
    return min(preferred, (len(ids) - 1) // time_size)


def evaluate_perplexity(model, ids, batch_size=10, time_size=35, stateful=True):
    """exp(mean loss) over a split, dropout off.

    stateful: the book's layout (rows read consecutive chunks and carry their state).
    Otherwise every ``time_size`` window starts from a zero state, as d2l evaluates.
    The model's carried training state is put back afterwards.
    """
    be = model.backend
    V = model.config["vocab_size"]
    if ids.min() < 0 or ids.max() >= V:
        raise ValueError(f"the ids fall outside the model's vocabulary [0, {V - 1}]")
    batches = (SequentialBatches if stateful else RandomBatches)(ids, batch_size, time_size)
    saved = model.get_state()
    model.reset_state()
    total, count = 0, 0
    try:
        with trusted_ids():
            for xs, ts in batches:
                if not stateful:
                    model.reset_state()
                total = total + model.loss_layer.forward(model.predict(be.asarray(xs)), be.asarray(ts))
                count += 1
    finally:
        model.set_state(saved)
    return perplexity(float(total) / count)


class Trainer:
    """Fits ``model`` on ``batches`` (SequentialBatches or RandomBatches) for some epochs.

    Per epoch: training perplexity, validation perplexity (if ``valid_ids``), learning-rate
    decay by ``lr_decay`` when validation stops improving, the best model saved to
    ``checkpoint_path`` and the full training state to ``<checkpoint>.last.npz`` (also every
    ``save_every`` iterations), from which ``resume()`` continues exactly.
    """

    def __init__(self, model, optimizer, batches, vocab, valid_ids=None, max_grad=None, eval_interval=20,
                 lr_decay=None, checkpoint_path=None, save_every=None, eval_batch_size=10, progress=True, log=None,
                 run=None):
        self.model, self.optimizer, self.batches, self.vocab, self.run = model, optimizer, batches, vocab, run
        self.valid_ids, self.max_grad, self.eval_interval = valid_ids, max_grad, max(1, eval_interval)
        self.lr_decay, self.save_every = lr_decay, save_every
        # checked now, not after the first epoch
        self.eval_batch_size = None if valid_ids is None else evaluation_rows(
            valid_ids, batches.time_size, eval_batch_size, batches.stateful, "the validation split")
        self.best_path = Path(checkpoint_path) if checkpoint_path else None
        self.last_path = last_checkpoint_path(self.best_path) if self.best_path else None
        self.progress = Progress(enabled=progress)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.epoch, self.iteration, self.history, self.interval_ppl = 0, 0, [], []
        self.best_ppl = math.inf
        self.epoch_loss, self.epoch_count = 0.0, 0
        self.epoch_start_batches = batches.state()

    # the loop ----------------------------------------------------------------------
    def fit(self, epochs):
        """Train until ``epochs`` epochs are done; returns the per-epoch history."""
        self._check_corpus()
        with _stop_on_ctrl_c() as stop, trusted_ids():
            while self.epoch < epochs:
                self._run_epoch(epochs, stop)
                self._end_epoch()
        return self.history

    def _run_epoch(self, epochs, stop):
        be, model = self.model.backend, self.model
        batches = iter(self.batches)
        for _ in range(self.iteration):  # resuming mid-epoch: replay the batch order up to here
            next(batches)
        pending, tokens, started = [], 0, time.perf_counter()
        for xs, ts in batches:
            if not self.batches.stateful:
                model.reset_state()
            loss = model.forward(be.asarray(xs), be.asarray(ts))
            model.backward()
            if self.max_grad:
                clip_grads(model.grads, self.max_grad, be)
            self.optimizer.update(model.params, model.grads, be)
            pending.append(loss)
            self.iteration += 1
            tokens += xs.size
            last = self.iteration == len(self.batches)
            save_now = bool(self.save_every) and self.iteration % self.save_every == 0 and not last
            if len(pending) == self.eval_interval or last or save_now or stop.requested:
                self._check_losses(pending)
                pending = []
                rate = tokens / (time.perf_counter() - started)
                self.progress.show(self.epoch + 1, epochs, self.iteration, len(self.batches),
                                   perplexity(self.epoch_loss / self.epoch_count), rate)
                tokens, started = 0, time.perf_counter()
                if stop.requested:
                    self._save_last()
                    raise TrainingInterrupted(self._interrupted_message())
                if save_now:
                    self._save_last()

    def _check_corpus(self):
        """Ids checked once on the host, so device layers need not read them back each step."""
        V = self.model.config["vocab_size"]
        for name, ids in (("training", _all_ids(self.batches)), ("validation", self.valid_ids)):
            if ids is not None and len(ids) and (ids.min() < 0 or ids.max() >= V):
                raise ValueError(f"the {name} ids fall outside the model's vocabulary [0, {V - 1}]")

    def _check_losses(self, pending):
        """One device read for the whole interval; stop at the first non-finite loss."""
        values = self.model.backend.to_numpy(self.model.backend.xp.stack(pending)).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            at = self.iteration - len(values) + bad[0] + 1
            raise TrainingDiverged(
                f"the loss became {values[bad[0]]} at epoch {self.epoch + 1}, iteration {at}; "
                f"training stopped{self._kept()}. "
                "Try a lower --lr or a --max-grad clip"
            )
        self.epoch_loss += float(values.sum())
        self.epoch_count += len(values)
        self.interval_ppl.append(perplexity(values.mean()))

    def _end_epoch(self):
        self.progress.done()
        record = {"epoch": self.epoch + 1, "train_ppl": perplexity(self.epoch_loss / self.epoch_count),
                  "lr": self.optimizer.lr}
        if self.valid_ids is not None:
            ppl = evaluate_perplexity(self.model, self.valid_ids, self.eval_batch_size,
                                      self.batches.time_size, self.batches.stateful)
            record["valid_ppl"] = ppl
            if not math.isfinite(ppl):
                raise TrainingDiverged(f"the validation perplexity became {ppl} after epoch {self.epoch + 1}; "
                                       "training stopped. Try a lower --lr or a --max-grad clip")
            if ppl < self.best_ppl:
                self.best_ppl = ppl
                self._save_best()
            elif self.lr_decay:
                self.optimizer.lr /= self.lr_decay
        elif self.best_path:
            self._save_best()
        self.history.append(record)
        self.log(_format_record(record))
        self.epoch, self.iteration = self.epoch + 1, 0
        self.epoch_loss, self.epoch_count = 0.0, 0
        self.epoch_start_batches = self.batches.state()
        self._save_last()

    # checkpoints --------------------------------------------------------------------
    def state(self):
        return {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "history": self.history,
            "interval_ppl": self.interval_ppl,
            "best_ppl": None if math.isinf(self.best_ppl) else self.best_ppl,
            "epoch_loss": self.epoch_loss,
            "epoch_count": self.epoch_count,
            "batches": _jsonable(self.epoch_start_batches),
            "rng": _rng_state(self.model.backend),
        }

    def _save_best(self):
        if self.best_path:
            self._check_weights()
            checkpoint.save(self.best_path, self.model, self.vocab, self.optimizer, self.state(), self.run)

    def _save_last(self):
        if self.last_path:
            self._check_weights()
            checkpoint.save(self.last_path, self.model, self.vocab, self.optimizer, self.state(), self.run)

    def _check_weights(self):
        """Save finite weights only: the losses checked so far were computed before the last
        update, which may itself have overflowed (a huge learning rate)."""
        be = self.model.backend
        if all(bool(be.xp.isfinite(p).all()) for p in self.model.params):
            return
        epoch = self.epoch + 1 if self.iteration else self.epoch  # at an epoch's end the counters have moved on
        raise TrainingDiverged(
            f"the weights became NaN or infinite by epoch {epoch}, iteration {self.iteration or len(self.batches)}; "
            f"training stopped{self._kept()}. Try a lower --lr or a --max-grad clip")

    def _kept(self):
        return f"; the last good checkpoint is {self.last_path}" if self.last_path and self.last_path.exists() else ""

    def resume(self, ckpt):
        """Continue from a loaded ``.last`` checkpoint: weights, optimizer, batch order, RNG, history."""
        st = ckpt.trainer_state
        if st is None or ckpt.optimizer_state is None:
            raise checkpoint.CheckpointError("this checkpoint holds no training state to resume from")
        if ckpt.optimizer_state.get("type") != type(self.optimizer).__name__:
            raise checkpoint.CheckpointError(f"this checkpoint was trained with {ckpt.optimizer_state.get('type')}, "
                                             f"not {type(self.optimizer).__name__}")
        self.model = ckpt.model
        self.optimizer.load_state_dict(ckpt.optimizer_state, self.model.backend)
        self.epoch, self.iteration, self.history = st["epoch"], st["iteration"], st["history"]
        self.interval_ppl = st["interval_ppl"]
        self.best_ppl = math.inf if st["best_ppl"] is None else st["best_ppl"]
        self.epoch_loss, self.epoch_count = st["epoch_loss"], st["epoch_count"]
        self.epoch_start_batches = st["batches"]
        self.batches.restore(st["batches"])
        if st["rng"] is not None and hasattr(self.model.backend.rng, "bit_generator"):
            self.model.backend.rng.bit_generator.state = st["rng"]

    def _interrupted_message(self):
        where = f"; resume with --resume (state saved in {self.last_path})" if self.last_path else ""
        return f"interrupted at epoch {self.epoch + 1}, iteration {self.iteration}{where}"


def _all_ids(batches):
    return batches.ids if isinstance(batches, RandomBatches) else np.concatenate([batches.xs[:1], batches.ts])


def last_checkpoint_path(best_path):
    """``runs/model.npz`` -> ``runs/model.last.npz``: where the resumable state goes."""
    best_path = Path(best_path)
    return best_path.with_name(f"{best_path.stem}.last{best_path.suffix or '.npz'}")


def _rng_state(backend):
    bitgen = getattr(backend.rng, "bit_generator", None)
    return _jsonable(bitgen.state) if bitgen is not None and isinstance(bitgen.state, dict) else None


def _jsonable(obj):
    """NumPy scalars inside generator states -> plain Python numbers."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj.item() if isinstance(obj, np.generic) else obj


def _format_record(r):
    valid = f" | valid ppl {r['valid_ppl']:.2f}" if "valid_ppl" in r else ""
    return f"epoch {r['epoch']} | train ppl {r['train_ppl']:.2f}{valid} | lr {r['lr']:g}"


class _StopFlag:
    requested = False


@contextmanager
def _stop_on_ctrl_c():
    """Ctrl-C sets a flag; the loop finishes the iteration, saves, and stops cleanly."""
    flag = _StopFlag()
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: setattr(flag, "requested", True))
    except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
        previous = None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


class Progress:
    """One status line: a bar on a terminal (redrawn in place), plain lines in logs."""

    def __init__(self, enabled=True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.started = time.perf_counter()

    def show(self, epoch, epochs, it, per_epoch, ppl, tokens_per_s):
        if not self.enabled:
            return
        done = (epoch - 1) * per_epoch + it
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(done, 1) * (epochs * per_epoch - done)
        bar = "#" * int(20 * it / per_epoch)
        line = (f"epoch {epoch}/{epochs} [{bar:<20}] {it}/{per_epoch} | ppl {ppl:8.2f} | "
                f"{tokens_per_s / 1e3:7.1f}k tok/s | ETA {_clock(eta)}")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=self.stream, flush=True)

    def done(self):
        if self.enabled and self.tty:
            print(file=self.stream)


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
