"""Padded batches from token sequences of different lengths (e.g. one per line of a text).

``pad`` turns a list of id sequences into one (N, T) int64 array and its lengths (N,), which
the recurrent layers take as ``forward(ids, lengths)``. ``batches`` cuts a list into such
batches: by default rows of similar length go together (little padding) and the batches come
in a random order for a given seed; within a batch rows run from longest to shortest, so the
rows still valid at step t are always a prefix of the batch. ``lm_batches`` gives inputs and
next-token labels for language modelling, the labels padded with -1, which
``TimeSoftmaxWithLoss`` skips.

Everything here is NumPy on the host; move a batch with ``backend.asarray``.
"""
import numbers
from typing import NamedTuple

import numpy as np

IGNORE_LABEL = -1  # the label TimeSoftmaxWithLoss leaves out of the loss


class Batch(NamedTuple):
    """``rows``: the batch's positions in the sequence list; ``ids`` (B, T) padded with pad_id;
    ``lengths`` (B,)."""

    rows: np.ndarray
    ids: np.ndarray
    lengths: np.ndarray


class LMBatch(NamedTuple):
    """Each sequence s as inputs s[:-1] (padded with pad_id) and labels s[1:] (padded with -1);
    ``lengths`` (B,) counts the inputs, len(s) - 1."""

    rows: np.ndarray
    xs: np.ndarray
    ts: np.ndarray
    lengths: np.ndarray


def as_sequences(sequences):
    """The sequences as a list of 1-D int64 arrays of ids >= 0, or a clear error."""
    if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__iter__"):
        raise TypeError(f"sequences must be a list of id sequences, got {type(sequences).__name__}")
    checked = [_as_ids(k, s) for k, s in enumerate(sequences)]
    if not checked:
        raise ValueError("sequences must not be empty: there is nothing to batch")
    return checked


def _as_ids(k, sequence):
    if isinstance(sequence, (str, bytes)):
        raise TypeError(f"sequence {k} is a string; encode it to integer ids first")
    ids = np.asarray(sequence)
    if ids.size == 0:  # np.asarray([]) is float64: an empty sequence is still fine
        return np.zeros(0, dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"sequence {k} must be 1-D (one id per step), got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"sequence {k} must hold integer ids, got dtype {ids.dtype}")
    if ids.min() < 0:
        raise ValueError(f"sequence {k} holds id {int(ids.min())}; ids must be >= 0")
    return ids.astype(np.int64)


def _non_negative_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _fill(sequences, fill, length):
    """(N, T) int64: row n starts with sequences[n], the rest is ``fill``. T is ``length`` or
    the longest sequence, at least 1 (the layers refuse an empty time axis)."""
    longest = max(len(s) for s in sequences)
    T = max(longest, 1) if length is None else length
    if T < longest:
        raise ValueError(f"length={T} is shorter than the longest sequence ({longest} ids)")
    out = np.full((len(sequences), T), fill, dtype=np.int64)
    for n, s in enumerate(sequences):
        out[n, : len(s)] = s
    return out


def pad(sequences, pad_id=0, length=None):
    """``(ids, lengths)``: ids (N, T) int64 with each sequence at the start of its row and
    ``pad_id`` after it; lengths (N,) int64. T is ``length`` if given (it must hold the longest
    sequence), else the longest sequence's length (at least 1)."""
    sequences = as_sequences(sequences)
    pad_id = _non_negative_int("pad_id", pad_id)
    if length is not None:
        length = _non_negative_int("length", length)
        if length == 0:
            raise ValueError("length must be at least 1: the layers refuse an empty time axis")
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    return _fill(sequences, pad_id, length), lengths


def batch_rows(lengths, batch_size, sort=True, seed=0):
    """The rows of each batch, as a list of index arrays covering every row once.

    ``sort=True``: rows ordered by descending length (ties in a random order) and cut into
    batches, which come in a random order; both from ``seed``. ``sort=False``: the given order,
    cut in turn. The last batch of the order may be short.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    lengths = np.asarray(lengths)
    if not sort:
        order = np.arange(len(lengths))
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(lengths))  # a stable sort of a shuffle breaks ties at random
    order = shuffled[np.argsort(-lengths[shuffled], kind="stable")]
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [chunks[k] for k in rng.permutation(len(chunks))]


def batches(sequences, batch_size, sort=True, seed=0, pad_id=0):
    """An iterator of ``Batch``es over all the sequences (see ``batch_rows``), each padded to its
    longest row. Bad arguments raise here, not at the first batch."""
    sequences = as_sequences(sequences)
    pad_id = _non_negative_int("pad_id", pad_id)
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    return (Batch(rows, _fill([sequences[r] for r in rows], pad_id, None), lengths[rows])
            for rows in batch_rows(lengths, batch_size, sort, seed))


def lm_batches(sequences, batch_size, sort=True, seed=0, pad_id=0):
    """An iterator of ``LMBatch``es for next-token prediction: the inputs padded with ``pad_id``,
    the labels with -1. A sequence of one id has no pair and leaves a row of length 0."""
    sequences = as_sequences(sequences)
    pad_id = _non_negative_int("pad_id", pad_id)
    lengths = np.array([max(len(s) - 1, 0) for s in sequences], dtype=np.int64)

    def make(rows):
        xs = _fill([sequences[r][:-1] for r in rows], pad_id, None)
        ts = _fill([sequences[r][1:] for r in rows], IGNORE_LABEL, xs.shape[1])
        return LMBatch(rows, xs, ts, lengths[rows])

    return (make(rows) for rows in batch_rows(lengths, batch_size, sort, seed))
