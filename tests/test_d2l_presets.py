"""The d2l presets: one-hot input, d2l 1.0's window split, and the n-gram baselines in the summaries."""
import json

import numpy as np
import pytest

from rnncore.app import checkpoint, data
from rnncore.app.cli import PRESETS, build_parser, main, train_settings
from rnncore.app.ngram import NgramModel
from rnncore.models import RecurrentLM


# one-hot input -----------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_one_hot_input_is_an_embedding_of_the_identity(cell):
    """x_t one-hot, so x_t Wx = Wx[id]: the one-hot model equals an embedding model whose
    embedding is the identity, in its scores and in every gradient."""
    V, H = 7, 5
    onehot = RecurrentLM(V, None, H, cell=cell, backend="numpy", dtype="float64", seed=1, embedding=False)
    embed = RecurrentLM(V, V, H, cell=cell, backend="numpy", dtype="float64", seed=2)
    assert len(embed.params) == len(onehot.params) + 1
    embed.params[0][...] = np.eye(V)
    for mine, theirs in zip(embed.params[1:], onehot.params):
        mine[...] = theirs
    rng = np.random.default_rng(0)
    xs, ts = rng.integers(0, V, (3, 6)), rng.integers(0, V, (3, 6))
    np.testing.assert_allclose(onehot.forward(xs, ts), embed.forward(xs, ts), rtol=1e-12)
    onehot.backward()
    embed.backward()
    for a, b in zip(onehot.grads, embed.grads[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    # and the gradient reaching the input is what the identity embedding's weight receives
    assert np.abs(embed.grads[0]).sum() > 0


def test_one_hot_gradient_matches_finite_differences():
    model = RecurrentLM(5, None, 4, cell="lstm", backend="numpy", dtype="float64", seed=3, embedding=False)
    rng = np.random.default_rng(1)
    xs, ts = rng.integers(0, 5, (2, 4)), rng.integers(0, 5, (2, 4))

    def loss():
        model.reset_state()  # the model carries its state from call to call
        return model.forward(xs, ts)

    loss()
    model.backward()
    Wx, dWx = model.params[0], model.grads[0].copy()
    assert Wx.shape == (5, 16)
    for i, j in [(xs[0, 0], 0), (xs[1, 2], 9), (4, 15)]:
        old = Wx[i, j]
        Wx[i, j] = old + 1e-6
        up = loss()
        Wx[i, j] = old - 1e-6
        down = loss()
        Wx[i, j] = old
        assert (up - down) / 2e-6 == pytest.approx(dWx[i, j], rel=1e-5, abs=1e-10)


def test_param_shapes_of_a_one_hot_model():
    for cell in ("rnn", "lstm", "gru"):
        model = RecurrentLM(11, None, 6, cell=cell, num_layers=2, backend="numpy", embedding=False)
        assert model.config["embedding"] is False and model.config["wordvec_size"] == 11
        assert checkpoint.param_shapes(model.config) == [tuple(p.shape) for p in model.params]
    with pytest.raises(ValueError, match="embedding to tie"):
        RecurrentLM(11, 6, 6, tie_weights=True, embedding=False)


# d2l's windows and split ------------------------------------------------------------------
def test_d2l_split_gives_d2l_windows(shared_data):
    """Against d2l 1.0's TimeMachine written out: windows of 33 at every position of the whole
    text, X = window[:-1], Y = window[1:], the first 10000 train, the next 5000 validate."""
    corpus = data.timemachine_corpus(shared_data, progress=False)
    ids = np.concatenate([corpus["train"], corpus["valid"], corpus["test"]])
    array = np.array([ids[i : i + 33] for i in range(20100)])
    X, Y = array[:, :-1], array[:, 1:]
    split = data.d2l_split(corpus, 32)

    train = data.WindowBatches(split["train"], 1024, 32, seed=0)
    assert len(train) == 10  # 9 of 1024 and one of 784
    xs, ts = map(np.concatenate, zip(*train))
    assert len(xs) == 10000
    order = np.lexsort(xs.T[::-1])
    expected = np.lexsort(X[:10000].T[::-1])
    np.testing.assert_array_equal(xs[order], X[:10000][expected])  # the same windows, shuffled
    np.testing.assert_array_equal(ts[order], Y[:10000][expected])

    valid = data.WindowBatches(split["valid"], 1024, 32, shuffle=False)
    vx, vy = map(np.concatenate, zip(*valid))
    np.testing.assert_array_equal(vx, X[10000:15000])
    np.testing.assert_array_equal(vy, Y[10000:15000])
    test = data.WindowBatches(split["test"], 1024, 32, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in test]), X[15000:20000])
    assert len(corpus.vocab) == 28  # d2l's: 26 letters, space, <unk>


def test_d2l_split_needs_enough_text():
    corpus = data.split_text("abc " * 100, "char")
    with pytest.raises(data.DataError, match="d2l's split needs 20032 tokens"):
        data.d2l_split(corpus, 32)


def test_the_d2l_presets_are_d2l_settings():
    for name, lr, epochs in (("d2l-rnn", 1.0, 100), ("d2l-lstm", 4.0, 50), ("d2l-gru", 4.0, 50)):
        cfg = train_settings(build_parser().parse_args(["train", "--preset", name]))
        assert cfg["one_hot"] and cfg["batching"] == "d2l-windows" and cfg["hidden"] == 32
        assert (cfg["batch_size"], cfg["time_size"], cfg["epochs"], cfg["lr"], cfg["max_grad"]) == (1024, 32, epochs, lr, 1)
    assert train_settings(build_parser().parse_args(["train", "--preset", "d2l-gru"]))["cell"] == "gru"
    assert set(PRESETS["timemachine-lstm"]) >= {"corpus", "hidden", "epochs"}


# tiny runs, with the baselines in the summaries ------------------------------------------------
def _text(path, chars=3000, seed=0):
    rng = np.random.default_rng(seed)
    words = ["the", "time", "machine", "traveller", "said", "and", "of"]
    path.write_text(" ".join(rng.choice(words, size=chars // 5)), encoding="utf-8")
    return path


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _baseline(train, evaluate, n, V):
    """Add-one n-gram perplexity, counted by NgramModel (Counter of tuples), not ngram_perplexity."""
    return NgramModel(train.tolist(), order=n, vocab_size=V).perplexity(evaluate.tolist())


def test_a_tiny_d2l_windows_run_prints_baselines_and_evaluates_the_same(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(data.D2L_WINDOWS, "num_train", 400)
    monkeypatch.setitem(data.D2L_WINDOWS, "num_val", 150)
    text, ckpt, metrics = _text(tmp_path / "t.txt"), tmp_path / "m.npz", tmp_path / "m.json"
    code, _, err = _run(["train", "--corpus", text, "--level", "char", "--one-hot", "--hidden", "8",
                         "--batching", "d2l-windows", "--batch-size", "64", "--time-size", "6", "--lr", "1",
                         "--epochs", "2", "--backend", "numpy", "--quiet", "--checkpoint", ckpt, "--metrics", metrics],
                        capsys)
    assert code == 0, err
    assert "(406 tokens" in err  # the training split: 400 windows of 6 + 1
    corpus = data.d2l_split(data.load_corpus(str(text), level="char"), 6)
    V = len(corpus.vocab)
    bigram = _baseline(corpus["train"], corpus["valid"], 2, V)
    assert "add-one n-gram baselines on valid: " in err and f"2-gram {bigram:.2f}" in err
    assert f"3-gram {_baseline(corpus['train'], corpus['test'], 3, V):.2f}" in err
    best = min(r["valid_ppl"] for r in json.loads(metrics.read_text())["epochs"])
    assert f"best valid perplexity {best:.2f}" in err
    # the checkpoint rebuilds the one-hot model, and eval scores the same 150 windows
    code, out, err = _run(["eval", "--checkpoint", ckpt, "--split", "valid", "--backend", "numpy"], capsys)
    assert code == 0, err
    assert f"valid perplexity {best:.2f} (156 tokens)" in out
    assert f"2-gram baseline (add-one smoothing): valid perplexity {bigram:.2f}" in out


def test_a_sequential_run_summary_prints_baselines(tmp_path, capsys):
    text, ckpt = _text(tmp_path / "t.txt"), tmp_path / "m.npz"
    code, _, err = _run(["train", "--corpus", text, "--level", "char", "--wordvec", "4", "--hidden", "8",
                         "--batch-size", "4", "--time-size", "8", "--epochs", "1", "--lr", "1", "--backend", "numpy",
                         "--quiet", "--checkpoint", ckpt], capsys)
    assert code == 0, err
    corpus = data.load_corpus(str(text), level="char")
    unigram = _baseline(corpus["train"], corpus["test"], 1, len(corpus.vocab))
    assert "test perplexity" in err and f"add-one n-gram baselines on test: 1-gram {unigram:.2f}" in err
