"""The n-gram baseline with Laplace (add-one) smoothing (d2l 9.3), to show what a network buys.

P(w | context) = (count(context, w) + 1) / (count(context) + V). Counting is vectorized:
each n-gram is one int64 key, counted with ``np.unique`` and looked up with ``searchsorted``.
"""
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
