"""The NumPy backend: the clear, vectorized reference every other backend is tested against.

Each step of a recurrence is a few whole-batch NumPy calls; the loop over time is Python.
"""
import numpy as np

from .. import cells
from .base import Backend


def rows_times(N, B):
    """A function x -> x @ B for the N rows of a batch, B (K, M) in any layout.

    Large products as (BT @ x.T).T, BT = B.T C-contiguous (copied once, where B is not B.T's
    transpose already), so that B's many columns are the product's rows: NumPy's OpenBLAS
    shares a product's rows among its threads, and the 20-row form x @ B ran 25-30% slower (2
    threads, N = 20: 1.14 against 0.81-0.95 ms at H = 650, 4H gates). Below 2^19 multiply-adds
    x @ B is faster (the quick benchmark's N = 8, H = 64: 3.4 against 8.6 us a step), and the
    transposing copy would cost more than a short sequence's steps (16 us at H = 64)."""
    if N * B.size < SMALL_PRODUCT:
        return lambda x: x @ B
    BT = np.ascontiguousarray(B.T)
    return lambda x: np.matmul(BT, x.T).T


SMALL_PRODUCT = 1 << 19


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    @np.errstate(over="ignore")  # the sigmoids' exp(-x) of a large -x: inf, which gives 0 as it should
    def recurrence_forward(self, cell, xw, states0, Wh, bh=None, lengths=None):
        T, N, G = xw.shape
        H = G // cell.gates
        hs = xw if cell.gates_are_h else np.empty((T, N, H), dtype=xw.dtype)
        saved = tuple(np.empty((T, N, H), dtype=xw.dtype) for _ in cell.saved)
        times_Wh = rows_times(N, Wh)
        states = list(states0)
        for t in range(T):
            rec = times_Wh(states[0])
            if bh is not None:
                rec = rec + bh
            new = cells.forward_step(cell, xw[t], rec, states, t, hs, saved)
            if lengths is None:
                states = new
            else:  # a row past its length keeps its state and outputs zeros
                live = (t < lengths)[:, None]
                states = [np.where(live, n, s) for n, s in zip(new, states)]
                hs[t][~live[:, 0]] = 0
        return hs, xw, saved

    def recurrence_backward(self, cell, dhs, hs, gates, saved, states0, Wh, dstates_T=None, scale=None, lengths=None):
        dstates_T = dstates_T or [None] * len(cell.states)
        dh, *others = (self.initial_grad(g, s) for g, s in zip(dstates_T, states0))
        # C order: empty_like would copy a view's layout
        dxw = np.empty(gates.shape, dtype=gates.dtype) if cell.gates_are_h or cell.recurrent_bias else gates
        times_WhT = rows_times(dhs.shape[1], Wh.T)
        for t in reversed(range(dhs.shape[0])):
            live = None if lengths is None else (t < lengths)[:, None]
            d_total = dh + (dhs[t] if live is None else np.where(live, dhs[t], 0))
            prev = _states_before(cell, t, hs, saved, states0)
            dhw_t, (bypass, *new) = cells.backward_step(cell, gates[t], dxw[t], d_total, others, prev, t, hs, saved)
            if live is not None:  # nothing flows through a row's steps past its length
                dxw[t][~live[:, 0]] = 0
                dhw_t[~live[:, 0]] = 0
            dh_new = times_WhT(dhw_t)
            if bypass is not None:
                dh_new = dh_new + bypass
            if scale is not None:
                dh_new, new = dh_new * dh_new.dtype.type(scale[t]), [o * o.dtype.type(scale[t]) for o in new]
            if live is None:
                dh, others = dh_new, new
            else:  # a padded step passes the gradient on unchanged: its state is the one before
                dh, others = np.where(live, dh_new, dh), [np.where(live, n, o) for n, o in zip(new, others)]
        return dxw, dxw if cell.gates_are_h else gates, [np.ascontiguousarray(dh), *others]

    def embedding_scatter_add(self, dW, ids, dout):
        np.add.at(dW, ids, dout)

    def softmax_cross_entropy(self, scores, labels):
        valid = labels != -1
        count = max(int(valid.sum()), 1)
        shifted = scores - scores.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        total = probs.sum(axis=1, keepdims=True)
        rows = np.arange(len(labels))
        safe_labels = np.where(valid, labels, 0)
        log_likelihood = shifted[rows, safe_labels] - np.log(total[:, 0])
        loss = np.asarray(-(log_likelihood * valid).sum() / count, dtype=scores.dtype)
        probs /= total
        probs[rows, safe_labels] -= 1
        probs *= (valid / count).astype(probs.dtype)[:, None]
        return loss, probs


def _states_before(cell, t, hs, saved, states0):
    """The carried states entering step t."""
    return list(states0) if t == 0 else [seq[t - 1] for seq in cell.sequences(hs, saved)]
