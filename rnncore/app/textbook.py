"""The textbook baseline (a benchmark peer, not a backend): the per-step layers of *Deep
Learning from Scratch 2*, one small RNN/LSTM/GRU object per time step, each doing its own
small matrix products. It is what rnncore's hoisted GEMMs and fused kernels are measured
against. Same API as rnncore's TimeRNN/TimeLSTM (NumPy arrays, batch-major), and, like
the book, LSTM gates in the order f, g, i, o.

The GRU is the books' (d2l 10.2; DLFS2's appendix, whose z is d2l's 1 - z): the reset gate
multiplies h before the product, n = tanh(a_n + (r * h_prev) @ Wh_n), one bias per gate.
rnncore's GRU is cuDNN's/PyTorch's, n = tanh(a_n + r * (h_prev @ Wh_n + bh_n)): given the
same weights the two compute different functions at the same cost (the books' form does
its step's recurrent product in two parts, since r must be known before the second).
"""
import numpy as np


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


class RNNCell:
    def __init__(self, Wx, Wh, b):
        self.Wx, self.Wh, self.b = Wx, Wh, b

    def forward(self, x, h_prev):
        h = np.tanh(x @ self.Wx + h_prev @ self.Wh + self.b)
        self.cache = (x, h_prev, h)
        return h

    def backward(self, dh):
        x, h_prev, h = self.cache
        dt = dh * (1 - h * h)
        return dt, x.T @ dt, h_prev.T @ dt, dt @ self.Wx.T, dt @ self.Wh.T


class LSTMCell:
    def __init__(self, Wx, Wh, b):
        self.Wx, self.Wh, self.b = Wx, Wh, b

    def forward(self, x, h_prev, c_prev):
        H = h_prev.shape[1]
        A = x @ self.Wx + h_prev @ self.Wh + self.b
        f, g, i, o = _sigmoid(A[:, :H]), np.tanh(A[:, H : 2 * H]), _sigmoid(A[:, 2 * H : 3 * H]), _sigmoid(A[:, 3 * H :])
        c = f * c_prev + g * i
        h = o * np.tanh(c)
        self.cache = (x, h_prev, c_prev, f, g, i, o, c)
        return h, c

    def backward(self, dh, dc):
        x, h_prev, c_prev, f, g, i, o, c = self.cache
        tanh_c = np.tanh(c)
        ds = dc + dh * o * (1 - tanh_c**2)
        dA = np.hstack((ds * c_prev * f * (1 - f), ds * i * (1 - g**2), ds * g * i * (1 - i), dh * tanh_c * o * (1 - o)))
        return dA, x.T @ dA, h_prev.T @ dA, dA @ self.Wx.T, dA @ self.Wh.T, ds * f


class GRUCell:
    """The books' GRU step, gates r, z, n in rnncore's block order: r and z from h_prev @ Wh_rz,
    then n from (r * h_prev) @ Wh_n; h = (1 - z) * n + z * h_prev (d2l's convention)."""

    def __init__(self, Wx, Wh, b):
        self.Wx, self.Wh, self.b = Wx, Wh, b

    def forward(self, x, h_prev):
        H = h_prev.shape[1]
        a = x @ self.Wx + self.b
        rz = _sigmoid(a[:, : 2 * H] + h_prev @ self.Wh[:, : 2 * H])
        r, z = rz[:, :H], rz[:, H:]
        n = np.tanh(a[:, 2 * H :] + (r * h_prev) @ self.Wh[:, 2 * H :])
        self.cache = (x, h_prev, r, z, n)
        return (1 - z) * n + z * h_prev

    def backward(self, dh):
        x, h_prev, r, z, n = self.cache
        Wh_rz, Wh_n = self.Wh[:, : 2 * dh.shape[1]], self.Wh[:, 2 * dh.shape[1] :]
        dan = dh * (1 - z) * (1 - n * n)
        drh = dan @ Wh_n.T  # gradient of r * h_prev
        dA_rz = np.hstack((drh * h_prev * r * (1 - r), dh * (h_prev - n) * z * (1 - z)))
        dA = np.hstack((dA_rz, dan))
        dWh = np.hstack((h_prev.T @ dA_rz, (r * h_prev).T @ dan))
        dh_prev = dh * z + drh * r + dA_rz @ Wh_rz.T
        return dA, x.T @ dA, dWh, dA @ self.Wx.T, dh_prev


class _TimeLayer:
    def __init__(self, Wx, Wh, b, stateful=False):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(p) for p in self.params]
        self.stateful = stateful
        self.reset_state()

    def reset_state(self):
        self.h = self.c = self.dh = self.dc = None

    def _initial(self, state, N):
        H = self.params[1].shape[0]
        return state if (self.stateful and state is not None) else np.zeros((N, H), dtype=self.params[0].dtype)


class TimeRNN(_TimeLayer):
    cell = RNNCell

    def forward(self, xs):
        N, T, _ = xs.shape
        h = self._initial(self.h, N)
        self.cells, hs = [], np.empty((N, T, h.shape[1]), dtype=xs.dtype)
        for t in range(T):
            cell = self.cell(*self.params)
            h = hs[:, t] = cell.forward(xs[:, t], h)
            self.cells.append(cell)
        self.h = h
        return hs

    def backward(self, dhs, dh_next=None):
        N, T, _ = dhs.shape
        dxs = np.empty((N, T, self.params[0].shape[0]), dtype=dhs.dtype)
        grads = [np.zeros_like(p) for p in self.params]
        dh = np.zeros_like(dhs[:, 0]) if dh_next is None else dh_next
        for t in reversed(range(T)):
            db, dWx, dWh, dxs[:, t], dh = self.cells[t].backward(dhs[:, t] + dh)
            for total, g in zip(grads, (dWx, dWh, db.sum(axis=0))):
                total += g
        for slot, g in zip(self.grads, grads):
            slot[...] = g
        self.dh = dh
        return dxs


class TimeLSTM(_TimeLayer):
    state_names = ("h", "c")

    def forward(self, xs):
        N, T, _ = xs.shape
        h, c = self._initial(self.h, N), self._initial(self.c, N)
        self.cells, hs = [], np.empty((N, T, h.shape[1]), dtype=xs.dtype)
        for t in range(T):
            cell = LSTMCell(*self.params)
            h, c = cell.forward(xs[:, t], h, c)
            hs[:, t] = h
            self.cells.append(cell)
        self.h, self.c = h, c
        return hs

    def backward(self, dhs, dh_next=None, dc_next=None):
        N, T, _ = dhs.shape
        dxs = np.empty((N, T, self.params[0].shape[0]), dtype=dhs.dtype)
        grads = [np.zeros_like(p) for p in self.params]
        dh = np.zeros_like(dhs[:, 0]) if dh_next is None else dh_next
        dc = np.zeros_like(dh) if dc_next is None else dc_next
        for t in reversed(range(T)):
            dA, dWx, dWh, dxs[:, t], dh, dc = self.cells[t].backward(dhs[:, t] + dh, dc)
            for total, g in zip(grads, (dWx, dWh, dA.sum(axis=0))):
                total += g
        for slot, g in zip(self.grads, grads):
            slot[...] = g
        self.dh, self.dc = dh, dc
        return dxs


class TimeGRU(TimeRNN):
    """The books' GRU over a sequence (see GRUCell); carries h as TimeRNN does."""

    cell = GRUCell


def from_rnncore_params(kind, Wx, Wh, b, bh=None):
    """rnncore's parameters as the textbook layer takes them: the LSTM's gate order i, f, g, o
    -> the book's f, g, i, o (same weights, reordered); the GRU's two biases summed into the
    books' one per gate (the n block's bh thus moves outside r: see the module docstring)."""
    if kind == "rnn":
        return [Wx.copy(), Wh.copy(), b.copy()]
    if kind == "gru":
        return [Wx.copy(), Wh.copy(), b + bh]
    H = Wh.shape[0]
    order = np.concatenate([np.arange(H, 2 * H), np.arange(2 * H, 3 * H), np.arange(H), np.arange(3 * H, 4 * H)])
    return [Wx[:, order].copy(), Wh[:, order].copy(), b[order].copy()]
