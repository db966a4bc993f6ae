"""The NumPy backend: the clear, vectorized reference every other backend is tested against.

Each step of a recurrence is a few whole-batch NumPy calls; the loop over time is Python.
"""
import numpy as np

from .base import Backend


def sigmoid(x):
    """Logistic function into a new contiguous array, one temporary in all; exp overflows to
    inf for large -x, which correctly gives 0."""
    s = np.negative(x)
    with np.errstate(over="ignore"):
        np.exp(s, out=s)
    s += 1
    return np.reciprocal(s, out=s)


def rows_times(x, WT):
    """x @ W for the few rows of x (one batch), given WT = W.T C-contiguous; a transposed view.

    Computed as (WT @ x.T).T so that W's many columns are the product's rows: NumPy's OpenBLAS
    shares a product's rows among its threads, and the 20-row form x @ W ran 25-30% slower (2
    threads, N = 20: 1.14 against 0.81-0.95 ms at H = 650, 4H gates; 38 against 23 us at H = 100)."""
    return np.matmul(WT, x.T).T


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def rnn_forward(self, xw, h0, Wh):
        h = h0
        WhT = np.ascontiguousarray(Wh.T)
        for t in range(xw.shape[0]):
            xw[t] += rows_times(h, WhT)
            h = np.tanh(xw[t], out=xw[t])
        return xw

    def rnn_backward(self, dhs, hs, h0, Wh, dh_T=None):
        dxw = np.empty(dhs.shape, dtype=dhs.dtype)  # C order: empty_like would copy a view's layout
        dh = self.initial_grad(dh_T, h0)
        Wh = np.ascontiguousarray(Wh)
        for t in reversed(range(dhs.shape[0])):
            dh = dh + dhs[t]
            np.multiply(dh, 1 - hs[t] * hs[t], out=dxw[t])
            dh = rows_times(dxw[t], Wh)  # dxw[t] @ Wh.T
        return dxw, np.ascontiguousarray(dh)

    def lstm_forward(self, xw, h0, c0, Wh):
        T, N, G = xw.shape
        H = G // 4
        hs = np.empty((T, N, H), dtype=xw.dtype)
        cs = np.empty_like(hs)
        h, c = h0, c0
        WhT = np.ascontiguousarray(Wh.T)
        for t in range(T):
            a = xw[t]
            a += rows_times(h, WhT)
            # Out of place on purpose: NumPy 2.4's in-place unary ufuncs on strided float32
            # views can read the wrong elements (np.negative(v, out=v) with v = a[:, 3:]).
            a[:, : 2 * H] = sigmoid(a[:, : 2 * H])  # i, f
            a[:, 2 * H : 3 * H] = np.tanh(a[:, 2 * H : 3 * H])  # g
            a[:, 3 * H :] = sigmoid(a[:, 3 * H :])  # o
            i, f, g, o = np.split(a, 4, axis=1)
            c = np.add(f * c, i * g, out=cs[t])
            h = np.multiply(o, np.tanh(c), out=hs[t])
        return hs, cs

    def lstm_backward(self, dhs, hs, cs, gates, h0, c0, Wh, dh_T=None, dc_T=None):
        dh = self.initial_grad(dh_T, h0)
        dc = self.initial_grad(dc_T, c0)
        Wh = np.ascontiguousarray(Wh)
        for t in reversed(range(dhs.shape[0])):
            a = gates[t]
            i, f, g, o = (x.copy() for x in np.split(a, 4, axis=1))
            c_prev = cs[t - 1] if t > 0 else c0
            dh = dh + dhs[t]
            tanh_c = np.tanh(cs[t])
            dc = dc + dh * o * (1 - tanh_c * tanh_c)
            di, df, dg, do = np.split(a, 4, axis=1)  # views: written in place
            di[...] = dc * g * i * (1 - i)
            df[...] = dc * c_prev * f * (1 - f)
            dg[...] = dc * i * (1 - g * g)
            do[...] = dh * tanh_c * o * (1 - o)
            dc = dc * f
            dh = rows_times(a, Wh)  # a @ Wh.T
        return np.ascontiguousarray(dh), dc

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
