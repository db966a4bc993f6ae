"""n-gram language models (d2l 9.3), to show what a network buys.

``ngram_perplexity``: the add-one baseline ``rnncore eval`` prints, P(w | context) =
(count(context, w) + 1) / (count(context) + V). Counting is vectorized: each n-gram is
one int64 key, counted with ``np.unique`` and looked up with ``searchsorted``.

``NgramModel``: the same counts as an object answering P(word | context), with add-one
smoothing or d2l's epsilon-smoothed form.
"""
import collections
import math

import numpy as np


def _keys(ids, n, V):
    """int64 key of every n-gram in ``ids`` (base-V digits); V**n must fit in int64."""
    ids = np.asarray(ids, dtype=np.int64)
    keys = np.zeros(len(ids) - n + 1, dtype=np.int64)
    for k in range(n):
        keys = keys * V + ids[k : len(ids) - n + 1 + k]
    return keys


def _lookup(table_keys, table_counts, keys):
    pos = np.searchsorted(table_keys, keys)
    pos = np.minimum(pos, len(table_keys) - 1)
    return np.where(table_keys[pos] == keys, table_counts[pos], 0)


def ngram_perplexity(train_ids, eval_ids, n, vocab_size):
    """Perplexity of an add-one n-gram model counted on ``train_ids``, scored on ``eval_ids``."""
    V = int(vocab_size)
    if n < 1 or V ** n >= 2**63:
        raise ValueError(f"n must be at least 1 and vocab_size**n fit in 64 bits (n={n}, V={V})")
    if len(eval_ids) < n:
        raise ValueError(f"the evaluation split has {len(eval_ids)} tokens, fewer than n={n}")
    grams, gram_counts = np.unique(_keys(train_ids, n, V), return_counts=True)
    eval_grams = _keys(eval_ids, n, V)
    numerator = _lookup(grams, gram_counts, eval_grams) + 1.0
    if n == 1:
        denominator = np.full(len(eval_grams), len(train_ids) + V, dtype=np.float64)
    else:
        # contexts counted where a full n-gram follows, so the probabilities sum to one
        contexts, context_counts = np.unique(_keys(train_ids[:-1], n - 1, V), return_counts=True)
        denominator = _lookup(contexts, context_counts, _keys(eval_ids[:-1], n - 1, V)) + float(V)
    return math.exp(-np.mean(np.log(numerator / denominator)))


class NgramModel:
    """Counts of every n-gram up to ``order`` in a token sequence; ``prob(word, context)``.

    The context is cut to its last ``order - 1`` tokens. Its count n(context) is the number of
    times it is followed by a token (so at the end of the text one fewer than its plain count),
    which makes every smoothed distribution over the vocabulary sum to one.

    - ``"laplace"`` (add-one): (n(context, w) + 1) / (n(context) + V), V = ``vocab_size``.
    - ``"epsilon"`` (d2l 9.3, eps = (eps1, eps2, eps3)): P(x) = (n(x) + eps1 / V) / (n + eps1);
      P(x' | x) = (n(x, x') + eps2 P(x')) / (n(x) + eps2);
      P(x'' | x, x') = (n(x, x', x'') + eps3 P(x'')) / (n(x, x') + eps3): the bigram and the
      trigram both fall back on the unigram P, as the book writes them. An order above 3
      uses eps3 again. eps = 0 gives the plain relative frequencies (and a context never seen
      then divides by zero).

    ``vocab_size`` defaults to the number of distinct tokens (d2l's m).
    """

    def __init__(self, tokens, order=3, vocab_size=None):
        tokens = list(tokens)
        if order < 1:
            raise ValueError(f"order must be at least 1, got {order}")
        self.order = order
        self.counts = collections.Counter()  # n-gram tuple (any length up to order) -> count
        for n in range(1, order + 1):
            self.counts.update(zip(*(tokens[k:] for k in range(n))))
        self.total = len(tokens)
        # n(context): times the context is followed by a token
        self.followed = collections.Counter()
        for n in range(1, order):
            self.followed.update(zip(*(tokens[k : len(tokens) - 1] for k in range(n))))
        self.vocab_size = vocab_size or len({t for t in tokens})

    def _context(self, context):
        context = tuple(context)
        return context[len(context) - self.order + 1 :] if self.order > 1 else ()

    def _context_count(self, context):
        return self.followed[context] if context else self.total

    def prob(self, word, context=(), smoothing="laplace", eps=(1.0, 1.0, 1.0)):
        """P(word | context) under ``smoothing`` ("laplace" or "epsilon")."""
        context = self._context(context)
        if smoothing == "laplace":
            return (self.counts[context + (word,)] + 1) / (self._context_count(context) + self.vocab_size)
        if smoothing != "epsilon":
            raise ValueError(f"smoothing must be 'laplace' or 'epsilon', got {smoothing!r}")
        unigram = (self.counts[(word,)] + eps[0] / self.vocab_size) / (self.total + eps[0])
        if not context:
            return unigram
        e = eps[min(len(context), 2)]
        return (self.counts[context + (word,)] + e * unigram) / (self._context_count(context) + e)

    def perplexity(self, tokens, smoothing="laplace", eps=(1.0, 1.0, 1.0)):
        """exp of the mean negative log probability of each token from the ``order - 1`` before it
        (the first ``order - 1`` tokens are context only)."""
        tokens = list(tokens)
        k = self.order - 1
        if len(tokens) <= k:
            raise ValueError(f"need more than {k} tokens to score an order-{self.order} model")
        logs = [math.log(self.prob(tokens[i], tokens[i - k : i], smoothing, eps)) for i in range(k, len(tokens))]
        return math.exp(-sum(logs) / len(logs))
