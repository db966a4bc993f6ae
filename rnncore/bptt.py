"""BPTT over a whole token stream for a ``RecurrentLM``: truncated (chunks of fixed or random
length), randomized truncation (unbiased, d2l 9.7), and full BPTT with checkpointing.

Every pass returns the mean loss over the stream and gradients of that mean, summed
into fresh arrays, so passes with different truncations compare directly.

``checkpointed_pass`` gives full-BPTT gradients in memory that grows like sqrt(L): the
forward keeps only the recurrent state at the start of every ``segment`` steps; backward
walks the segments in reverse, recomputes each one's forward from its saved state, and
feeds the gradient of its last state into it (``model.backward(state_grads=...)``).
With ``segment`` ~ sqrt(L) that is sqrt(L) saved states plus one segment of activations,
for one extra forward pass (about a third more time).
"""
import contextlib

import numpy as np

from .checks import expect_ids, trusted_ids


def regular_lengths(L, T):
    """Chunks of T steps (the last one shorter)."""
    return [min(T, L - t0) for t0 in range(0, L, T)]


def random_lengths(L, T, seed=0):
    """Chunk lengths drawn uniformly from [ceil(T/2), floor(3T/2)], mean T: the cut points vary,
    so no step is always the first of a chunk. Still truncation: its gradient is biased like
    regular truncation's (``randomized_pass`` is the unbiased scheme)."""
    rng = np.random.default_rng(seed)
    lo, hi = max(1, (T + 1) // 2), max(1, 3 * T // 2)
    lengths, total = [], 0
    while total < L:
        n = min(int(rng.integers(lo, hi + 1)), L - total)
        lengths.append(n)
        total += n
    return lengths


def randomized_scale(L, T, seed=0):
    """The per-step weights xi_t of randomized truncation (d2l 9.7, after Tallec & Ollivier 2017):
    xi_t = 1/pi with probability pi, else 0, so E[xi_t] = 1. A step's gradient then reaches back
    k steps with probability pi^k; pi = 1 - 1/T makes that reach geometric with mean T - 1 links,
    the steps of a chunk of T on average. T = 1 gives pi = 0: every xi is 0 (truncation at each step)."""
    pi = 1.0 - 1.0 / T
    keep = np.random.default_rng(seed).random(L) < pi
    return np.where(keep, 1.0 / pi if pi > 0 else 0.0, 0.0)


def randomized_pass(model, xs, ts, T, seed=0):
    """Randomized truncation: one pass over the whole stream in which the gradient each step sends
    back to the step before it is multiplied by xi_t (``randomized_scale``). Its expectation over
    seeds is full BPTT's gradient (unbiased), at the price of variance that grows with T;
    truncation at T (``truncated_pass``) is biased instead. Memory is full BPTT's over the stream."""
    model.reset_state()
    with _ids_checked_once(model, xs, ts):
        loss = model.forward(xs, ts)
    model.backward(1, scale=randomized_scale(xs.shape[1], T, seed))
    return loss, [g.copy() for g in model.grads]


def truncated_pass(model, xs, ts, lengths):
    """Truncated BPTT: the state flows from chunk to chunk, gradients stop at each chunk start."""
    be, L = model.backend, xs.shape[1]
    grads = [be.xp.zeros_like(g) for g in model.grads]
    model.reset_state()
    loss, t0 = 0.0, 0
    with _ids_checked_once(model, xs, ts):
        for T in lengths:
            weight = T / L  # the chunk's share of the stream's mean loss
            loss = loss + weight * model.forward(xs[:, t0 : t0 + T], ts[:, t0 : t0 + T])
            model.backward(weight)
            _add(be, grads, model.grads)
            t0 += T
    return loss, grads


def checkpointed_pass(model, xs, ts, segment):
    """Full BPTT over the stream, keeping only every ``segment``-th recurrent state."""
    L = xs.shape[1]
    bounds = [(t0, min(t0 + segment, L)) for t0 in range(0, L, segment)]
    model.reset_state()
    with _ids_checked_once(model, xs, ts):
        return _checkpointed(model, xs, ts, bounds)


def _checkpointed(model, xs, ts, bounds):
    be, L = model.backend, xs.shape[1]
    starts, loss = [], 0.0
    for t0, t1 in bounds:
        starts.append(model.snapshot())
        loss = loss + (t1 - t0) / L * model.forward(xs[:, t0:t1], ts[:, t0:t1])
    grads = [be.xp.zeros_like(g) for g in model.grads]
    state_grads = None
    for k in reversed(range(len(bounds))):
        t0, t1 = bounds[k]
        if k < len(bounds) - 1:  # the last segment's activations are still cached
            model.restore(starts[k])
            model.forward(xs[:, t0:t1], ts[:, t0:t1])
        model.backward((t1 - t0) / L, state_grads=state_grads)
        state_grads = [(r.dh, getattr(r, "dc", None)) for r in model.rnn_layers]
        _add(be, grads, model.grads)
    return loss, grads


@contextlib.contextmanager
def _ids_checked_once(model, xs, ts):
    """Check the whole stream's ids once, then run its chunks without checking them again: on a
    GPU each check reads the range back, a device sync per chunk in what is being timed."""
    V = model.config["vocab_size"]
    expect_ids("bptt", "xs", xs, 0, V)
    expect_ids("bptt", "ts", ts, -1, V)
    with trusted_ids():
        yield


def _add(be, total, grads):
    for t, g in zip(total, grads):
        be.axpy_(1.0, g, t)
