"""Truncated-BPTT training: the loop, evaluation, checkpoints, resume, divergence handling.

The loop reads the loss back from the device only every ``eval_interval`` iterations
(one sync for the whole interval), which is also when a NaN or infinite loss is noticed;
the iteration it first appeared at is named, and no checkpoint is written after it.
Ctrl-C (SIGINT) and SIGTERM finish the iteration, save the resumable state and stop.
"""
import math
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import checkpoint, distributed
from .data import RandomBatches, SequentialBatches, WindowBatches
from ..checks import trusted_ids
from ..optim import clip_grads


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM (``signal``): the state at the last finished iteration was saved and
    training can resume."""

    def __init__(self, message, signal=signal.SIGINT):
        super().__init__(message)
        self.signal = signal


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


def evaluate_perplexity(model, ids, batch_size=10, time_size=35, stateful=True, windows=False, comm=None):
    """exp(mean loss) over a split, dropout off.

    stateful: the book's layout (rows read consecutive chunks and carry their state).
    Otherwise every ``time_size`` window starts from a zero state, as d2l evaluates: with
    ``windows``, the windows starting at every position (d2l 1.0's ``TimeMachine``), else
    non-overlapping ones from a random offset. The model's carried training state is put back
    afterwards. ``comm`` (data parallel): each rank evaluates its rows of every batch and the
    row-weighted losses are summed over the ranks.
    """
    comm = comm or distributed.SINGLE
    be = model.backend
    V = model.config["vocab_size"]
    if ids.min() < 0 or ids.max() >= V:
        raise ValueError(f"the ids fall outside the model's vocabulary [0, {V - 1}]")
    if windows:
        batches = WindowBatches(ids, batch_size, time_size, shuffle=False)
    else:
        batches = (SequentialBatches if stateful else RandomBatches)(ids, batch_size, time_size)
    saved = model.get_state()
    model.reset_state()
    total, count = 0, 0
    try:
        with trusted_ids():
            for xs, ts in batches:
                if not stateful:
                    model.reset_state()
                count += len(xs)
                r0, r1 = distributed.rows_of(comm.rank, comm.size, len(xs))
                if r1 > r0:  # a short last batch may leave a rank no rows
                    xs, ts = xs[r0:r1], ts[r0:r1]
                    # weighted by rows: the last batch of windows is short
                    total = total + model.loss_layer.forward(model.predict(be.asarray(xs)), be.asarray(ts)) * len(xs)
    finally:
        model.set_state(saved)
    return perplexity(comm.sum(float(total)) / count)


class Trainer:
    """Fits ``model`` on ``batches`` (SequentialBatches or RandomBatches) for some epochs.

    Per epoch: training perplexity, validation perplexity (if ``valid_ids``), learning-rate
    decay by ``lr_decay`` when validation stops improving, the best model saved to
    ``checkpoint_path`` and the full training state to ``<checkpoint>.last.npz`` (also every
    ``save_every`` iterations), from which ``resume()`` continues exactly.
    """

    def __init__(self, model, optimizer, batches, vocab, valid_ids=None, max_grad=None, eval_interval=20,
                 lr_decay=None, checkpoint_path=None, save_every=None, eval_batch_size=10, progress=True, log=None,
                 run=None, comm=None):
        self.model, self.optimizer, self.batches, self.vocab, self.run = model, optimizer, batches, vocab, run
        # data parallel (distributed.py): this rank's rows of each batch; one bar and one log, rank 0's
        self.comm = comm or distributed.SINGLE
        self.comm.rows(batches.batch_size)  # more ranks than rows: refused now
        progress = progress and self.comm.rank == 0
        log = log or (None if self.comm.rank == 0 else (lambda message: None))
        self.valid_ids, self.max_grad, self.eval_interval = valid_ids, max_grad, max(1, eval_interval)
        self.lr_decay, self.save_every = lr_decay, save_every
        # checked now, not after the first epoch
        self.windows = isinstance(batches, WindowBatches)
        if self.windows:  # every window of the split, as many rows at a time as training uses
            eval_batch_size = batches.batch_size
        self.eval_batch_size = None if valid_ids is None else evaluation_rows(
            valid_ids, batches.time_size, eval_batch_size, batches.stateful, "the validation split")
        self.best_path = Path(checkpoint_path) if checkpoint_path else None
        self.last_path = last_checkpoint_path(self.best_path) if self.best_path else None
        self.progress = Progress(enabled=progress, note=COMPILE_NOTE if model.backend.name == "numba" else None)
        self.log = log or self.progress.write
        self.epoch, self.iteration, self.history, self.interval_ppl = 0, 0, [], []
        self.best_ppl = math.inf
        self.epoch_loss, self.epoch_count = 0.0, 0
        self.epoch_start_batches = batches.state()

    # the loop ----------------------------------------------------------------------
    def fit(self, epochs):
        """Train until ``epochs`` epochs are done; returns the per-epoch history."""
        self._check_corpus()
        if self.comm.rank == 0:  # the cache is shared: one rank compiles ahead for all
            ids = next((getattr(self.batches, a) for a in ("ids", "ts") if hasattr(self.batches, a)), None)
            for cell in {layer.cell for layer in getattr(self.model, "rnn_layers", ())}:
                self.model.backend.compile_ahead(cell, self.model.dtype, getattr(ids, "dtype", None))
        per_epoch = len(self.batches)
        self.progress.start(epochs * per_epoch, min(self.epoch, epochs) * per_epoch + self.iteration,
                            f"epoch {min(self.epoch + 1, epochs)}/{epochs}")
        with self.progress, _stop_on_signals() as stop, trusted_ids():
            while self.epoch < epochs:
                self._run_epoch(epochs, stop)
                self._end_epoch()
                stopping = stop.requested
                if self.comm.size > 1:  # all ranks stop here, or none
                    stopping = distributed.agreed_signal(self.comm.sum(distributed.SIGNAL_FLAGS.get(stopping, 0)))
                if stopping:  # during the epoch's validation: all is saved now
                    raise TrainingInterrupted(self._interrupted_message(), stopping)
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
            loss, agreed, save_asked = self._gradients(xs, ts, stop)
            if self.max_grad:  # after the reduction: the global norm
                clip_grads(model.grads, self.max_grad, be)
            self.optimizer.update(model.params, model.grads, be)
            pending.append(loss)
            self.iteration += 1
            tokens += xs.size
            self.progress.first_step_done()
            last = self.iteration == len(self.batches)
            save_now = save_asked or (bool(self.save_every) and self.iteration % self.save_every == 0 and not last)
            stopping = agreed if self.comm.size > 1 else stop.requested  # ranks: what all saw at the reduction
            if len(pending) == self.eval_interval or last or save_now or stopping:
                self._check_losses(pending)
                pending = []
                rate = tokens / (time.perf_counter() - started)
                self.progress.show(self.epoch + 1, epochs, self.epoch * len(self.batches) + self.iteration,
                                   perplexity(self.epoch_loss / self.epoch_count), rate)
                tokens, started = 0, time.perf_counter()
                if stopping:
                    self._save_last()
                    raise TrainingInterrupted(self._interrupted_message(), stopping)
                if save_now:
                    self._save_last()
                    if save_asked:  # done; a SIGCONT since asks again
                        stop.save = False

    def _gradients(self, xs, ts, stop):
        """Loss and gradients of the batch; data parallel, of this rank's rows, weighted by their
        share and summed over the ranks. Returns the loss, the signal to stop on (0: none) and
        whether to save now, which under MPI all ranks agree on."""
        be, model, comm = self.model.backend, self.model, self.comm
        if comm.size == 1:
            loss = model.forward(be.asarray(xs), be.asarray(ts))
            model.backward()
            return loss, stop.requested, stop.save
        r0, r1 = distributed.rows_of(comm.rank, comm.size, len(xs))
        if r1 > r0:
            model.share_rows(r0, r1, len(xs))
            share = (r1 - r0) / len(xs)
            loss = model.forward(be.asarray(xs[r0:r1]), be.asarray(ts[r0:r1])) * share
            model.backward(share)
        else:  # a short last batch left this rank no rows: it adds nothing
            loss = be.xp.zeros((), dtype=model.dtype)
            for g in model.grads:
                g[...] = 0
        return comm.reduce_iteration(model.grads, loss, stop.requested, be, stop.save)

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
        record = {"epoch": self.epoch + 1, "train_ppl": perplexity(self.epoch_loss / self.epoch_count),
                  "lr": self.optimizer.lr}
        if self.valid_ids is not None:
            ppl = evaluate_perplexity(self.model, self.valid_ids, self.eval_batch_size,
                                      self.batches.time_size, self.batches.stateful, self.windows, self.comm)
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
            "rng": _jsonable(self.model.backend.rng_state()),
        }

    def _save_best(self):
        if self.best_path:
            self._save(self.best_path)

    def _save_last(self):
        if self.last_path:
            self._save(self.last_path)

    def _save(self, path):
        self._check_weights()
        if self.comm.size == 1:
            checkpoint.save(path, self.model, self.vocab, self.optimizer, self.state(), self.run)
            return
        # data parallel: the weights are the same on every rank, the carried states are each
        # rank's rows; rank 0 gathers them so the checkpoint holds the whole batch (any K resumes)
        parts = self.comm.gather(self.model.get_state())
        if self.comm.rank == 0:
            checkpoint.save(path, _WholeBatch(self.model, parts), self.vocab, self.optimizer, self.state(), self.run)
        self.comm.barrier()  # no rank reads the file before it is there

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
        if st["iteration"] > len(self.batches):
            raise checkpoint.CheckpointError(f"this checkpoint stopped at iteration {st['iteration']} of an epoch "
                                             f"of {len(self.batches)}; it was not trained on this data")
        self.model = ckpt.model
        if self.comm.size > 1:  # the checkpoint holds every row's state: keep this rank's
            r0, r1 = self.comm.rows(self.batches.batch_size)
            self.model.set_state([[None if s is None else np.ascontiguousarray(s[r0:r1]) for s in layer]
                                  for layer in self.model.get_state()])
        self.optimizer.load_state_dict(ckpt.optimizer_state, self.model.backend)
        self.epoch, self.iteration, self.history = st["epoch"], st["iteration"], st["history"]
        self.interval_ppl = st["interval_ppl"]
        self.best_ppl = math.inf if st["best_ppl"] is None else st["best_ppl"]
        self.epoch_loss, self.epoch_count = st["epoch_loss"], st["epoch_count"]
        self.epoch_start_batches = st["batches"]
        self.batches.restore(st["batches"])
        if st["rng"] is not None:
            self.model.backend.set_rng_state(st["rng"])

    def _interrupted_message(self):
        where = f"; resume with --resume (state saved in {self.last_path})" if self.last_path else ""
        return f"interrupted at epoch {self.epoch + 1}, iteration {self.iteration}{where}"


class _WholeBatch:
    """The model as checkpoint.save sees it, with the carried states of all ranks' rows."""

    def __init__(self, model, parts):
        self._model, self._parts = model, parts

    def __getattr__(self, name):
        return getattr(self._model, name)

    def get_state(self):
        return [[None if layer[0][k] is None else np.concatenate([rank[k] for rank in layer])
                 for k in range(len(layer[0]))] for layer in zip(*self._parts)]


def _all_ids(batches):
    return batches.ids if isinstance(batches, RandomBatches) else np.concatenate([batches.xs[:1], batches.ts])


def last_checkpoint_path(best_path):
    """``runs/model.npz`` -> ``runs/model.last.npz``: where the resumable state goes."""
    best_path = Path(best_path)
    return best_path.with_name(f"{best_path.stem}.last{best_path.suffix or '.npz'}")


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
    requested = 0  # the signal that asked to stop
    save = False  # a save asked for (mpiexec's warning), not done yet
    launcher_at = None  # time.monotonic() of mpiexec's last warning that it may be ending the job
    terminated = False  # ... and its SIGTERM right after it: then it forwards no more output


@contextmanager
def _stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM), launcher_signals=None):
    """Ctrl-C or SIGTERM (what ``timeout`` and job schedulers send) sets a flag; the loop finishes
    the iteration, saves, and stops cleanly.

    Under Open MPI, Ctrl-C or SIGTERM to mpiexec itself reaches the ranks as SIGCONT, SIGTERM 0.25 s
    later and SIGKILL 0.25 s after that (distributed.launcher_stop_signals): on the SIGCONT they
    save at the next iteration and go on (job control sends SIGCONT too), on the SIGTERM they
    stop at the next and save again; the saves are atomic, so SIGKILL during the second leaves
    the first. mpiexec forwards no output once it sent the SIGTERM, so rank 0 then writes its one
    line to mpiexec's stderr itself."""
    flag = _StopFlag()
    if launcher_signals is None:
        launcher_signals = distributed.launcher_stop_signals()

    def stop(signum, _):
        flag.requested = signum
        flag.terminated = flag.launcher_at is not None and time.monotonic() - flag.launcher_at < LAUNCHER_WARNING_S

    def launcher_ending(signum, _):
        flag.launcher_at = time.monotonic()
        flag.save = True

    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, stop)
        for sig in launcher_signals:
            previous[sig] = signal.signal(sig, launcher_ending)
    except ValueError:  # not the main thread: no handlers, signals behave as usual
        pass
    try:
        yield flag
    except TrainingInterrupted as exc:
        if distributed.current().rank == 0:
            _tell_launcher(flag, f"rnncore train: stopped: {exc}")
        raise
    finally:
        for sig, handler in previous.items():
            if not flag.terminated or sig not in signals:  # else SIGKILL is coming: keep them
                signal.signal(sig, handler)


LAUNCHER_WARNING_S = 0.4  # a SIGTERM this soon after a SIGCONT is mpiexec's (it waits 0.25 s)


def _tell_launcher(flag, line):
    """Write ``line`` past mpiexec if it is ending the job (its SIGTERM came right after its
    SIGCONT); else the line goes out as usual."""
    if flag.terminated:
        distributed.tell_launcher(line)


COMPILE_NOTE = "compiling Numba kernels (first run only)"
LOG_EVERY_S = 30  # in a log (not a terminal), one progress line this often


class Progress:
    """Training's progress line, drawn by tqdm over all the run's iterations: on a terminal a bar
    redrawn in place; in a log, plain lines, one every LOG_EVERY_S seconds, not carriage-return
    redraws. The rate and ETA are timed from the end of the first iteration on, so kernels
    compiled in it (Numba's, on a first run) do not count; until then ``note`` shows."""

    def __init__(self, enabled=True, stream=None, note=None):
        self.enabled, self.stream, self.note = enabled, stream or sys.stderr, note
        self.bar = None

    def start(self, total, done, desc):
        """A run of ``total`` iterations, ``done`` of them behind it (a resumed run's)."""
        self.total, self.done, self.desc, self.timing = total, done, desc, False
        self.bar = self._bar(done, leave=False, postfix=self.note) if self.note else None

    def first_step_done(self):
        """The first iteration is done: (re)start the bar, timing from now on."""
        if not self.timing:
            if self.bar is not None:
                self.bar.close()
            self.bar = self._bar(self.done + 1, leave=True)
            self.timing = True

    def show(self, epoch, epochs, done, ppl, tokens_per_s):
        self.bar.set_description_str(f"epoch {epoch}/{epochs}", refresh=False)
        self.bar.set_postfix_str(f"ppl {ppl:.2f}, {tokens_per_s / 1e3:.1f}k tok/s", refresh=False)
        self.bar.update(done - self.bar.n)

    def write(self, message):
        """A line of its own (an epoch's record); on a terminal the bar is drawn again below it."""
        if self.bar is not None and not self.bar.disable and self.stream.isatty():
            self.bar.write(message, file=self.bar.fp)
        else:
            print(message, file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def _bar(self, done, leave, postfix=None):
        tty = self.stream.isatty()
        return tqdm(total=self.total, initial=done, desc=self.desc, postfix=postfix, leave=leave, unit="it",
                    file=self.stream if tty else _Lines(self.stream), disable=not self.enabled,
                    mininterval=0.1 if tty else LOG_EVERY_S, smoothing=0, dynamic_ncols=tty)


class _Lines:
    """A stream for tqdm in a log: each redraw (carriage return, line) becomes a line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        line = text.replace("\r", "").rstrip()
        if line:
            print(line, file=self.stream)

    def flush(self):
        self.stream.flush()
