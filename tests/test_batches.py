"""rnncore.sequences: padded batches from token sequences of different lengths."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnncore
from rnncore.sequences import batch_rows, batches, lm_batches, pad


def numbered(lengths):
    """Sequences whose tokens are all distinct (1, 2, 3, ...), so each can be traced to one place."""
    ends = np.cumsum(lengths)
    return [np.arange(end - n, end) + 1 for n, end in zip(lengths, ends)]


def random_lengths(count, seed, high=30):
    return np.random.default_rng(seed).integers(0, high, size=count)


def test_pad_puts_each_sequence_at_the_start_of_its_row():
    ids, lengths = pad([[5, 6, 7], [8], []], pad_id=9)
    assert ids.dtype == np.int64 and lengths.dtype == np.int64
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9], [9, 9, 9]]
    assert lengths.tolist() == [3, 1, 0]


def test_pad_to_a_given_length_and_never_to_an_empty_time_axis():
    ids, lengths = pad([np.array([1, 2], dtype=np.uint8)], length=4)
    assert ids.tolist() == [[1, 2, 0, 0]] and lengths.tolist() == [2]
    ids, lengths = pad([[], []])
    assert ids.shape == (2, 1) and lengths.tolist() == [0, 0]
    with pytest.raises(ValueError, match="shorter than the longest sequence"):
        pad([[1, 2, 3]], length=2)


@pytest.mark.parametrize("sequences, error, message", [
    ([], ValueError, "must not be empty"),
    ([[1, 2], [0.5]], TypeError, "sequence 1 must hold integer ids"),
    ([[True, False]], TypeError, "integer ids"),
    (["abc"], TypeError, "sequence 0 is a string"),
    ("abc", TypeError, "must be a list"),
    ([[3, -1]], ValueError, "sequence 0 holds id -1"),
    ([[[1, 2], [3, 4]]], ValueError, "must be 1-D"),
])
def test_bad_sequences_are_refused_clearly(sequences, error, message):
    with pytest.raises(error, match=message):
        pad(sequences)
    with pytest.raises(error, match=message):
        batches(sequences, 2)  # at the call, not at the first batch
    with pytest.raises(error, match=message):
        lm_batches(sequences, 2)


@pytest.mark.parametrize("batch_size", [0, -3, 1.5, True, "4"])
def test_batch_size_must_be_a_positive_integer(batch_size):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        batches([[1, 2]], batch_size)


@pytest.mark.parametrize("pad_id", [-1, 0.5])
def test_pad_id_must_be_a_valid_id(pad_id):
    with pytest.raises(ValueError, match="pad_id must be an integer >= 0"):
        pad([[1]], pad_id=pad_id)


def check_batches(sequences, made, batch_size, pad_id):
    """Every row once, every token once at its place, the rest padding, the lengths right."""
    rows = np.concatenate([b.rows for b in made])
    assert sorted(rows.tolist()) == list(range(len(sequences)))
    seen = []
    for b in made:
        assert len(b.rows) <= batch_size
        assert b.ids.shape == (len(b.rows), max(1, max(len(sequences[r]) for r in b.rows)))
        assert b.lengths.tolist() == [len(sequences[r]) for r in b.rows]
        for n, r in enumerate(b.rows):
            assert b.ids[n, : b.lengths[n]].tolist() == list(sequences[r])
            assert (b.ids[n, b.lengths[n]:] == pad_id).all()
            seen += b.ids[n, : b.lengths[n]].tolist()
    assert sorted(seen) == sorted(t for s in sequences for t in s)


@pytest.mark.parametrize("sort", [True, False])
def test_batches_hold_every_token_exactly_once(sort):
    sequences = numbered(random_lengths(103, seed=1))
    made = list(batches(sequences, 8, sort=sort, seed=3, pad_id=0))
    assert len(made) == 13
    check_batches(sequences, made, 8, pad_id=0)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=40), batch_size=st.integers(1, 9),
       sort=st.booleans(), seed=st.integers(0, 2**32 - 1), pad_id=st.integers(0, 5))
def test_batches_hold_every_token_exactly_once_for_any_lengths(lengths, batch_size, sort, seed, pad_id):
    sequences = numbered(lengths)
    check_batches(sequences, list(batches(sequences, batch_size, sort, seed, pad_id)), batch_size, pad_id)


def test_sorted_batches_run_longest_first_so_valid_rows_are_a_prefix_at_every_step():
    sequences = numbered(random_lengths(200, seed=2))
    for b in batches(sequences, 16, sort=True, seed=0):
        assert (np.diff(b.lengths) <= 0).all()
        valid = np.arange(b.ids.shape[1])[None, :] < b.lengths[:, None]  # (rows, steps)
        for t in range(b.ids.shape[1]):
            assert valid[: valid[:, t].sum(), t].all()


def test_unsorted_batches_keep_the_given_order_whatever_the_seed():
    lengths = random_lengths(50, seed=4)
    for seed in (0, 1):
        assert np.concatenate(batch_rows(lengths, 7, sort=False, seed=seed)).tolist() == list(range(50))


def padding(made):
    return sum(b.ids.size - int(b.lengths.sum()) for b in made)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sorting_by_length_cuts_the_padding(seed):
    sequences = numbered(random_lengths(1000, seed=seed, high=60))
    sorted_pad = padding(batches(sequences, 32, sort=True, seed=seed))
    given_pad = padding(batches(sequences, 32, sort=False))
    # sorted, a batch's rows differ by about 60 / (1000 / 32) steps: a few % of the unsorted padding
    assert sorted_pad < 0.1 * given_pad


def test_sorted_batches_come_in_an_order_set_by_the_seed():
    lengths = random_lengths(300, seed=5)
    first = batch_rows(lengths, 10, seed=11)
    again = batch_rows(lengths, 10, seed=11)
    other = batch_rows(lengths, 10, seed=12)
    assert all((a == b).all() for a, b in zip(first, again))
    assert [a.tolist() for a in first] != [b.tolist() for b in other]
    # batches in a random order, not longest first
    firsts = [lengths[rows[0]] for rows in first]
    assert firsts != sorted(firsts, reverse=True)


def test_language_model_batches_pair_each_token_with_the_next_and_pad_labels_with_minus_one():
    sequences = numbered(random_lengths(60, seed=6, high=12))
    made = list(lm_batches(sequences, 8, sort=True, seed=0, pad_id=0))
    assert sorted(np.concatenate([b.rows for b in made]).tolist()) == list(range(60))
    labels = []
    for b in made:
        assert b.xs.shape == b.ts.shape
        for n, r in enumerate(b.rows):
            s, L = sequences[r], b.lengths[n]
            assert L == max(len(s) - 1, 0)
            assert b.xs[n, :L].tolist() == list(s[:-1]) and b.ts[n, :L].tolist() == list(s[1:])
            assert (b.xs[n, L:] == 0).all() and (b.ts[n, L:] == -1).all()
            labels += b.ts[n, :L].tolist()
    assert sorted(labels) == sorted(t for s in sequences for t in s[1:])


def test_padded_labels_add_nothing_to_the_loss():
    """A batch's loss is the mean over its real labels: TimeSoftmaxWithLoss skips the -1s."""
    be = rnncore.get_backend("numpy")
    batch = next(lm_batches([[1, 2, 3, 4, 5], [2, 3], [4, 1, 2]], 3, sort=True))
    V = 6
    scores = np.random.default_rng(0).standard_normal(batch.ts.shape + (V,))
    loss = rnncore.TimeSoftmaxWithLoss(backend=be).forward(scores, batch.ts)
    valid = batch.ts != -1
    logp = scores - np.log(np.exp(scores).sum(axis=2, keepdims=True))
    expected = -logp[valid, batch.ts[valid]].mean()
    assert valid.sum() == 4 + 1 + 2
    assert float(loss) == pytest.approx(expected, rel=1e-10)
