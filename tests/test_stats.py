"""rnncore stats and the n-gram model (d2l 9.2-9.3), against hand counts, d2l's printed numbers
and brute force."""
import itertools
import json
import re

import numpy as np
import pytest

from rnncore.app.cli import main
from rnncore.app.ngram import NgramModel, ngram_perplexity
from rnncore.app.stats import corpus_stats, corpus_text, tokens_of, zipf_exponent


def test_d2l_preprocessing_keeps_letters_only_lowercased():
    assert tokens_of("The cat's 2 U.S. <unk> N\nend-of-line") == ["the", "cat", "s", "u", "s", "unk", "n", "end",
                                                                   "of", "line"]
    assert tokens_of("Hi, you!", level="char") == list("hi you ")
    assert tokens_of("The <unk> N", preprocess="none") == ["The", "<unk>", "N"]


def test_counts_of_a_hand_made_text():
    report, curves = corpus_stats(tokens_of("The cat, the CAT sat.\nThe end"), top=2)
    # the cat the cat sat the end
    grams = report["ngrams"]
    assert report["tokens"] == 7
    assert grams[1]["top"] == [["the", 3], ["cat", 2]]
    assert curves[1] == [3, 2, 1, 1]
    assert grams[2]["distinct"] == 5 and grams[2]["top"][0] == ["the cat", 2]
    assert grams[3]["distinct"] == 5 and curves[3] == [1] * 5


def test_time_machine_counts_are_d2l_s(shared_data):
    """d2l 9.2 prints these for The Time Machine; the distinct counts come from sets of tuples."""
    text = corpus_text("timemachine", shared_data)
    report, _ = corpus_stats(tokens_of(text), top=3)
    grams = report["ngrams"]
    assert grams[1]["top"] == [["the", 2261], ["i", 1267], ["and", 1245]]
    assert grams[2]["top"] == [["of the", 309], ["in the", 169], ["i had", 130]]
    assert grams[3]["top"] == [["the time traveller", 59], ["the time machine", 30], ["the medical man", 24]]
    words = [w.lower() for w in re.findall("[A-Za-z]+", text)]
    assert report["tokens"] == len(words)
    for n in (1, 2, 3):
        assert grams[n]["distinct"] == len({tuple(words[i : i + n]) for i in range(len(words) - n + 1)})
    chars = corpus_stats(tokens_of(text, level="char"), orders=(1,))[0]
    assert chars["tokens"] == 173428 and chars["ngrams"][1]["distinct"] == 27  # d2l: 28 with <unk>


def test_zipf_exponent_is_the_least_squares_slope():
    ranks = np.arange(1, 501)
    alpha, fitted = zipf_exponent(1e6 / ranks**1.3, (1, 500))
    assert alpha == pytest.approx(1.3) and fitted == (1, 500)
    freqs = np.random.default_rng(0).integers(1, 1000, 300)[::-1].cumsum()[::-1]  # decreasing, not a power law
    alpha, (first, last) = zipf_exponent(freqs, (10, 1000))
    assert (first, last) == (10, 300)
    x, y = np.log(np.arange(10, 301)), np.log(freqs[9:300])
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert alpha == pytest.approx(-slope)
    assert zipf_exponent([5, 3], (10, 1000))[0] is None


def test_stats_command_prints_and_writes_json_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("The cat, the CAT sat.\nThe end")
    out_json, out_png = tmp_path / "s.json", tmp_path / "s.png"
    code = main(["stats", "--corpus", str(corpus), "--top", "1", "--zipf-ranks", "1:4", "--json", str(out_json),
                 "--plot", str(out_png)])
    out = capsys.readouterr().out
    assert code == 0
    assert "7 tokens" in out and "'the' 3" in out
    report = json.loads(out_json.read_text())
    assert report["ngrams"]["2"]["distinct"] == 5 and report["ngrams"]["1"]["zipf_ranks"] == [1, 4]
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    assert main(["stats", "--corpus", str(tmp_path / "missing.txt")]) == 2


# the n-gram model ---------------------------------------------------------------------------
TOKENS = ["a", "b", "a", "c", "b", "a", "a", "b", "c", "a", "b", "b"]


def count(seq, gram):
    """Occurrences of ``gram`` in ``seq``, by scanning."""
    n = len(gram)
    return sum(tuple(seq[i : i + n]) == tuple(gram) for i in range(len(seq) - n + 1))


@pytest.mark.parametrize("context", [(), ("a",), ("b", "a"), ("c", "c"), ("z",)])
def test_laplace_probabilities_by_brute_force(context):
    model = NgramModel(TOKENS, order=3)
    V = 3
    for word in "abc":
        context_count = count(TOKENS[:-1], context) if context else len(TOKENS)
        expected = (count(TOKENS, (*context, word)) + 1) / (context_count + V)
        assert model.prob(word, context) == pytest.approx(expected)


def test_epsilon_probabilities_follow_d2l_formulas():
    model = NgramModel(TOKENS, order=3)
    e1, e2, e3 = 0.5, 2.0, 3.0
    n, m = len(TOKENS), 3
    p_b = (count(TOKENS, "b") + e1 / m) / (n + e1)
    assert model.prob("b", (), "epsilon", (e1, e2, e3)) == pytest.approx(p_b)
    # P(b | a) = (n(a, b) + eps2 P(b)) / (n(a) + eps2); n(a) as a context: followed by a token
    assert model.prob("b", ["a"], "epsilon", (e1, e2, e3)) == pytest.approx((3 + e2 * p_b) / (5 + e2))
    # P(b | c, a) = (n(c, a, b) + eps3 P(b)) / (n(c, a) + eps3), the context cut to its last two
    assert model.prob("b", ["b", "c", "a"], "epsilon", (e1, e2, e3)) == pytest.approx((1 + e3 * p_b) / (1 + e3))
    assert model.prob("b", ["a"], "epsilon", (0, 0, 0)) == pytest.approx(3 / 5)  # eps 0: relative frequency


@pytest.mark.parametrize("smoothing", ["laplace", "epsilon"])
def test_probabilities_sum_to_one_over_the_vocabulary(smoothing):
    model = NgramModel(TOKENS, order=3)
    for context in itertools.chain([()], itertools.product("abc", repeat=1), itertools.product("abc", repeat=2)):
        total = sum(model.prob(w, context, smoothing, (0.3, 0.7, 1.5)) for w in "abc")
        assert total == pytest.approx(1.0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_model_perplexity_equals_the_vectorized_baseline(n):
    rng = np.random.default_rng(n)
    train, valid = rng.integers(0, 7, 400), rng.integers(0, 7, 60)
    model = NgramModel(train.tolist(), order=n, vocab_size=7)
    expected = ngram_perplexity(train, valid, n, 7)
    assert model.perplexity(valid.tolist()) == pytest.approx(expected)
