"""Training: loss falls, resume equals an uninterrupted run, divergence stops cleanly, checkpoints move
between backends, evaluation matches the book's loop, generation obeys its options."""
import io
import math
import os
import signal
import time

import numpy as np
import pytest
from conftest import HAS_NUMBA, backend_by_name

from rnncore.app import checkpoint, data
from rnncore.app.generate import generate, pick
from rnncore.models import RecurrentLM
from rnncore.optim import SGD, Adam
from rnncore.app.train import (COMPILE_NOTE, Progress, Trainer, TrainingDiverged, TrainingInterrupted,
                               evaluate_perplexity, last_checkpoint_path)

CPU = ["numpy", "numba"]


def toy_corpus(n=3000, seed=0):
    """A learnable token stream: mostly a repeating pattern, with some noise."""
    rng = np.random.default_rng(seed)
    pattern = np.array([3, 5, 7, 2, 9, 4, 6, 8, 1, 10])
    ids = np.tile(pattern, n // len(pattern) + 1)[:n]
    noise = rng.random(n) < 0.05
    ids[noise] = rng.integers(0, 12, noise.sum())
    return ids.astype(np.int32)


def make(backend, vocab_size=12, seed=0, **kw):
    return RecurrentLM(vocab_size, 8, 8, cell=kw.pop("cell", "lstm"), backend=backend, seed=seed, **kw)


def trainer_for(model, tmp_path, name="m.npz", batching="sequential", **kw):
    ids = toy_corpus()
    batches = (data.SequentialBatches(ids, 4, 6) if batching == "sequential"
               else data.RandomBatches(ids, 16, 6, seed=2))
    vocab = data.Vocab([str(i) for i in range(11)])
    opt = kw.pop("optimizer", SGD(1.0))
    return Trainer(model, opt, batches, vocab, valid_ids=toy_corpus(600, seed=1), max_grad=5.0,
                   checkpoint_path=tmp_path / name, progress=False, log=lambda m: None, **kw)


@pytest.mark.parametrize("backend", CPU + ["cupy-emu"])
def test_loss_falls(backend, tmp_path):
    be = backend_by_name(backend)
    be.seed(0)
    history = trainer_for(make(be), tmp_path).fit(3)
    assert history[-1]["train_ppl"] < history[0]["train_ppl"] / 2
    assert history[-1]["valid_ppl"] < 4


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("batching", ["sequential", "random"])
@pytest.mark.parametrize("stop_after, save_every", [(None, None), (50, 25)])
def test_resume_equals_an_uninterrupted_run(backend, batching, stop_after, save_every, tmp_path):
    """Train 3 epochs straight; or stop (at an epoch end or mid-epoch) and resume: the same numbers."""
    be = backend_by_name(backend)
    be.seed(0)
    straight = trainer_for(make(be, dropout=0.3, cell="rnn"), tmp_path, "a.npz", batching, optimizer=Adam(0.01))
    straight.fit(3)

    be.seed(0)
    first = trainer_for(make(be, dropout=0.3, cell="rnn"), tmp_path, "b.npz", batching, optimizer=Adam(0.01),
                        save_every=save_every)
    if stop_after is None:
        first.fit(1)
    else:  # a crash mid-epoch: only what save_every wrote survives
        first.iteration_limit = stop_after
        with pytest.raises(_Stop):
            _fit_until(first, stop_after)
    be.seed(12345)  # whatever the process did since, resume restores the generator
    ckpt = checkpoint.load(last_checkpoint_path(tmp_path / "b.npz"), backend=be)
    resumed = trainer_for(make(be, seed=99, dropout=0.3, cell="rnn"), tmp_path, "b.npz", batching,
                          optimizer=Adam(1.0))
    resumed.resume(ckpt)
    resumed.fit(3)
    assert resumed.history == straight.history
    for a, b in zip(straight.model.params, resumed.model.params):
        np.testing.assert_array_equal(be.to_numpy(a), be.to_numpy(b))


class _Stop(Exception):
    pass


def _fit_until(trainer, iterations):
    """Run fit() but die (as a crash would) after ``iterations`` updates."""
    update = trainer.optimizer.update
    count = [0]

    def counting(*args):
        if count[0] == iterations:
            raise _Stop
        count[0] += 1
        update(*args)

    trainer.optimizer.update = counting
    trainer.fit(3)


def _overflow_output_bias(trainer):
    trainer.model.params[-1][3] = np.inf  # scores inf - inf = nan: the next loss is NaN


def _infinite_learning_rate(trainer):
    trainer.optimizer.lr = math.inf  # the first update of epoch 2 makes the weights inf or NaN after a finite loss


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
@pytest.mark.parametrize("spoil, save_every, message", [
    (_overflow_output_bias, None, r"the loss became (nan|inf) at epoch 2, iteration \d+"),
    (_infinite_learning_rate, 1, r"the weights became NaN or infinite by epoch 2, iteration 1"),
], ids=["nan-loss", "overflowing-update"])
def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(spoil, save_every, message, tmp_path):
    """A NaN loss, or an update that overflows the weights after a finite loss (the save right
    after it refuses): training stops and the checkpoint from before stays the one to resume from."""
    be = backend_by_name("numpy")
    trainer = trainer_for(make(be), tmp_path, save_every=save_every)
    trainer.fit(1)
    good = checkpoint.load(last_checkpoint_path(tmp_path / "m.npz"))
    spoil(trainer)
    kept_message = r"; training stopped; the last good checkpoint is .*m\.last\.npz"
    with pytest.raises(TrainingDiverged, match=message + kept_message):
        trainer.fit(2)
    kept = checkpoint.load(last_checkpoint_path(tmp_path / "m.npz"))
    assert kept.trainer_state["epoch"] == 1
    for a, b in zip(good.model.params, kept.model.params):
        np.testing.assert_array_equal(a, b)
        assert np.all(np.isfinite(b))


@pytest.mark.parametrize("source, target", [("numba", "numpy"), ("numpy", "cupy-emu"), ("cupy-emu", "numba")])
def test_a_checkpoint_loads_on_another_backend(source, target, tmp_path):
    src, dst = backend_by_name(source), backend_by_name(target)
    model = make(src, num_layers=2, tie_weights=True, dropout=0.2)
    vocab = data.Vocab([str(i) for i in range(11)])
    xs = np.tile(np.arange(12), (2, 1))[:, :5]
    model.predict(src.asarray(xs))  # leaves a carried state to save
    checkpoint.save(tmp_path / "c.npz", model, vocab)
    loaded = checkpoint.load(tmp_path / "c.npz", backend=dst)
    assert loaded.model.backend is dst and loaded.vocab.idx_to_token == vocab.idx_to_token
    a = src.to_numpy(model.predict(src.asarray(xs)))
    b = dst.to_numpy(loaded.model.predict(dst.asarray(xs)))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert list((tmp_path).iterdir()) == [tmp_path / "c.npz"]  # no temp files left


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04broken"])
def test_a_corrupt_checkpoint_is_named(content, tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match="bad.npz is not a readable rnncore checkpoint"):
        checkpoint.load(path)


def test_a_truncated_checkpoint_is_named(tmp_path):
    model = make("numpy")
    checkpoint.save(tmp_path / "c.npz", model, data.Vocab())
    blob = (tmp_path / "c.npz").read_bytes()
    (tmp_path / "c.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="c.npz is not a readable rnncore checkpoint"):
        checkpoint.load(tmp_path / "c.npz")


def book_eval_perplexity(model, corpus, batch_size=10, time_size=35):
    """The book's eval_perplexity loop, as written there."""
    corpus_size = len(corpus)
    total_loss = 0
    max_iters = (corpus_size - 1) // (batch_size * time_size)
    jump = (corpus_size - 1) // batch_size
    offsets = [jump * i for i in range(batch_size)]
    model.reset_state()
    for iters in range(max_iters):
        xs = np.zeros((batch_size, time_size), dtype=np.int32)
        ts = np.zeros((batch_size, time_size), dtype=np.int32)
        time_offset = iters * time_size
        for t in range(time_size):
            for i, offset in enumerate(offsets):
                xs[i, t] = corpus[(offset + time_offset + t) % corpus_size]
                ts[i, t] = corpus[(offset + time_offset + t + 1) % corpus_size]
        total_loss += float(model.loss_layer.forward(model.predict(xs), ts))
    return math.exp(total_loss / max_iters)


def test_evaluate_perplexity_matches_the_book():
    model = make("numpy", dtype="float64")
    ids = toy_corpus(1000)
    assert evaluate_perplexity(model, ids) == pytest.approx(book_eval_perplexity(model, ids), rel=1e-12)


def test_generation_options():
    model = make("numpy", vocab_size=12)
    vocab = data.Vocab([str(i) for i in range(11)])
    greedy = [generate(model, vocab, "3 5", 8, greedy=True) for _ in range(2)]
    assert greedy[0] == greedy[1] and greedy[0].startswith("3 5 ")
    assert len(greedy[0].split()) == 10
    sampled = {generate(model, vocab, "3", 20, seed=s) for s in range(3)}
    assert len(sampled) > 1
    assert generate(model, vocab, "3", 20, seed=1) == generate(model, vocab, "3", 20, seed=1)
    with pytest.raises(ValueError, match="the prefix has tokens the vocabulary lacks: 'zebra'"):
        generate(model, vocab, "3 zebra", 5)


def test_pick_respects_top_k_and_unk():
    rng = np.random.default_rng(0)
    scores = np.array([10.0, 1.0, 2.0, 3.0, 0.0])
    assert {pick(scores, rng, top_k=2) for _ in range(200)} == {2, 3}  # <unk> (id 0) excluded
    assert pick(scores, rng, exclude_unk=False, greedy=True) == 0
    assert pick(scores, rng, greedy=True) == 3
    cold = [pick(scores, rng, temperature=0.05) for _ in range(50)]
    assert set(cold) == {3}


def test_char_level_generation_joins_without_spaces():
    model = make("numpy", vocab_size=5)
    vocab = data.Vocab(list("ab c"))
    text = generate(model, vocab, "ab", 10, level="char", seed=0)
    assert text.startswith("ab") and len(text) == 12


def test_an_epochs_last_update_overflowing_saves_no_best_checkpoint(tmp_path):
    """Without a validation split the best checkpoint is saved at each epoch's end, after the
    epoch's last update: weights that update made non-finite are not saved."""
    be = backend_by_name("numpy")
    batches = data.SequentialBatches(toy_corpus(), 4, 6)
    trainer = Trainer(make(be), SGD(1.0), batches, data.Vocab([str(i) for i in range(11)]),
                      checkpoint_path=tmp_path / "m.npz", progress=False, log=lambda m: None)
    update = trainer.optimizer.update

    def overflowing(params, grads, backend):
        update(params, grads, backend)
        if trainer.iteration == len(batches) - 1:  # the epoch's last update (the count moves on after it)
            params[0][...] = np.inf

    trainer.optimizer.update = overflowing
    with pytest.raises(TrainingDiverged, match=rf"the weights became NaN or infinite by epoch 1, iteration "
                                                rf"{len(batches)}; training stopped\. Try"):
        trainer.fit(1)
    assert not (tmp_path / "m.npz").exists()


def test_sigterm_saves_and_stops_like_ctrl_c(tmp_path):
    trainer = trainer_for(make(backend_by_name("numpy")), tmp_path)
    update, count = trainer.optimizer.update, [0]

    def update_then_terminate(*args):
        update(*args)
        count[0] += 1
        if count[0] == 30:
            os.kill(os.getpid(), signal.SIGTERM)

    trainer.optimizer.update = update_then_terminate
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match=r"interrupted at epoch 1, iteration 30; resume") as stopped:
        trainer.fit(2)
    assert stopped.value.signal == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is before
    assert checkpoint.load(last_checkpoint_path(tmp_path / "m.npz")).trainer_state["iteration"] == 30


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _drive(stream, note=None, first_step_s=0.0):
    """A progress line over 100 iterations: a first one taking first_step_s, then 99 at once."""
    progress = Progress(stream=stream, note=note)
    progress.start(100, 0, "epoch 1/2")
    time.sleep(first_step_s)
    progress.first_step_done()
    with progress:
        progress.show(1, 2, 50, 12.345, 4567)
        progress.write("epoch 1 | train ppl 12.35")
        progress.show(2, 2, 100, 9.87, 4567)
    return progress


def test_progress_in_a_log_is_plain_lines():
    log = io.StringIO()
    _drive(log)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "epoch 1 | train ppl 12.35" in lines
    assert lines[-1].startswith("epoch 2/2: 100%") and "100/100" in lines[-1] and "ppl 9.87" in lines[-1]
    assert len(lines) <= 4  # periodic, not a line per update


def test_progress_on_a_terminal_redraws_one_line():
    terminal = _Terminal()
    _drive(terminal, note=COMPILE_NOTE)
    shown = terminal.getvalue()
    assert shown.count("\r") > 3 and COMPILE_NOTE in shown
    assert "epoch 1 | train ppl 12.35\n" in shown and shown.endswith("\n")


def test_progress_times_the_rate_after_the_first_iteration():
    """A first iteration that compiles for 0.5 s must not drag the rate (and so the ETA): 99
    iterations in about no time afterwards is a high rate, not ~200 an hour."""
    log = io.StringIO()
    progress = _drive(log, note=COMPILE_NOTE, first_step_s=0.5)
    assert COMPILE_NOTE in log.getvalue().splitlines()[0] and COMPILE_NOTE not in log.getvalue().splitlines()[-1]
    assert progress.bar.format_dict["elapsed"] < 0.25
    assert progress.bar.n - progress.bar.initial == 99


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_the_numba_backend_says_it_compiles(tmp_path):
    assert trainer_for(make(backend_by_name("numba")), tmp_path).progress.note == COMPILE_NOTE
    assert trainer_for(make(backend_by_name("numpy")), tmp_path).progress.note is None
