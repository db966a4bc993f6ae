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


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def rnn_forward(self, xw, h0, Wh):
        h = h0
        for t in range(xw.shape[0]):
            xw[t] += h @ Wh
            h = np.tanh(xw[t], out=xw[t])
        return xw

    def rnn_backward(self, dhs, hs, h0, Wh, dh_T=None):
        dxw = np.empty_like(dhs)
        dh = self.initial_grad(dh_T, h0)
        WhT = np.ascontiguousarray(Wh.T)  # BLAS runs a 20-row product with a transposed operand 30% slower
        for t in reversed(range(dhs.shape[0])):
            dh = dh + dhs[t]
            np.multiply(dh, 1 - hs[t] * hs[t], out=dxw[t])
            dh = dxw[t] @ WhT
        return dxw, dh

    def lstm_forward(self, xw, h0, c0, Wh):
        T, N, G = xw.shape
        H = G // 4
        hs = np.empty((T, N, H), dtype=xw.dtype)
        cs = np.empty_like(hs)
        h, c = h0, c0
        for t in range(T):
            a = xw[t]
            a += h @ Wh
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
        WhT = np.ascontiguousarray(Wh.T)  # BLAS runs a 20-row product with a transposed operand 30% slower
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
            dh = a @ WhT
        return dh, dc

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
