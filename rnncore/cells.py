"""What a recurrent cell is: its gate blocks, the states it carries, what its backward reads.

A cell is data. The recurrence drivers (one per target: ``recurrence_forward`` and
``recurrence_backward`` of each backend) take a ``Cell`` and run its step math; the layers
(``rnncore.layers.TimeRNN`` / ``TimeLSTM`` / ``TimeGRU``) are declarations over it. The
NumPy step math below is the reference every backend is tested against; the Numba and
CUDA versions of the same math live beside their drivers in ``kernels/``.

Shapes: a step works on a batch of N rows; ``a`` (N, G) holds ``x_t Wx + b`` on entry,
``rec`` (N, G) holds ``h_{t-1} Wh`` (+ ``bh`` for cells with a recurrent bias), G = gates * H.

- ``rnn``: h = tanh(a + rec). Saves nothing beyond hs (the activated gate *is* h).
- ``lstm``: gates i, f, g, o (cuDNN/PyTorch order); i, f, o = sigmoid, g = tanh;
  c = f * c_prev + i * g; h = o * tanh(c). Carries (h, c); saves the cells ``cs``.
- ``gru``: gates r, z, n (cuDNN/PyTorch form); r = sigmoid(a_r + rec_r),
  z = sigmoid(a_z + rec_z), n = tanh(a_n + r * rec_n), h = (1 - z) * n + z * h_prev, with
  rec = h_prev Wh + bh: ``bh``'s n block stays inside r * (...), so the two biases are
  separate parameters. Saves ``hn`` = rec_n (what d r needs). The books (d2l 10.2, DLFS2's
  appendix) apply r before the product, tanh(a_n + (r * h_prev) Wh_n); rnncore follows
  cuDNN/PyTorch, so ``torch.nn.GRU`` weights load as they are.
"""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Cell:
    """name: "rnn", "lstm" or "gru"; gates: G = gates * H; states: carried state names (h first);
    saved: names of the (T, N, H) arrays forward keeps for backward besides hs and the gates;
    recurrent_bias: whether the cell has its own bias ``bh`` on h_{t-1} Wh (the GRU) besides
    the input bias; gates_are_h: the activated gates are h itself (forward writes h over xw,
    so backward gets hs as the gates and must not write them)."""

    name: str
    gates: int
    states: tuple
    saved: tuple = ()
    recurrent_bias: bool = False
    gates_are_h: bool = False

    @property
    def param_names(self):
        return ("Wx", "Wh", "bx", "bh") if self.recurrent_bias else ("Wx", "Wh", "b")

    def sequences(self, hs, saved):
        """Each carried state at every step, (T, N, H) each: hs, and the LSTM's cs."""
        return [hs] + [saved[self.saved.index(name)] for name in self.states[1:]]

    def last_states(self, hs, saved):
        """The states after the last step: h, and the LSTM's c."""
        return [seq[-1] for seq in self.sequences(hs, saved)]


RNN = Cell("rnn", gates=1, states=("h",), gates_are_h=True)
LSTM = Cell("lstm", gates=4, states=("h", "c"), saved=("c",))
GRU = Cell("gru", gates=3, states=("h",), saved=("hn",), recurrent_bias=True)
CELLS = {cell.name: cell for cell in (RNN, LSTM, GRU)}


# NumPy step math: the reference ------------------------------------------------------------
def sigmoid(x, out=None):
    """Logistic function into ``out`` (C-contiguous) or a new array, one temporary in all; exp
    overflows to inf for large -x, which correctly gives 0: callers run their loop of steps under
    ``np.errstate(over="ignore")`` (entering it here, twice a step, was 15% of a small step)."""
    s = np.negative(x)
    np.exp(s, out=s)
    s += 1
    return np.reciprocal(s, out=s if out is None else out)


def blocks(a, k):
    """The k H-wide gate blocks of a (N, k*H) row block, as views (by slicing: np.split took
    ~100 us a call, most of a small step's time)."""
    H = a.shape[1] // k
    return [a[:, j * H : (j + 1) * H] for j in range(k)]


def forward_step(cell, a, rec, prev, t, hs, saved):
    """Step t: activates the gates of ``a`` in place, writes hs[t] (and saved[...][t]);
    ``prev``: the states before the step. Returns the states after it."""
    if cell is RNN:
        np.add(a, rec, out=a)
        return [np.tanh(a, out=a)]  # hs is the gates buffer itself
    if cell is LSTM:
        H = a.shape[1] // 4
        a += rec
        # The sigmoid over all four blocks into a (a step's rows, contiguous), then g's tanh over
        # its block: 6 calls where one per block took 12. Never in place on a block (a strided
        # view): NumPy 2.4's in-place unary ufuncs there can read the wrong elements
        # (np.negative(v, out=v) with v = a[:, 3:]).
        g = np.tanh(a[:, 2 * H : 3 * H])
        sigmoid(a, out=a)
        a[:, 2 * H : 3 * H] = g
        i, f, g, o = blocks(a, 4)
        c = np.add(f * prev[1], i * g, out=saved[0][t])
        return [np.multiply(o, np.tanh(c), out=hs[t]), c]
    H = a.shape[1] // 3
    h_prev = prev[0]
    a[:, : 2 * H] = sigmoid(a[:, : 2 * H] + rec[:, : 2 * H])  # r, z
    r, z, n = blocks(a, 3)
    saved[0][t] = rec[:, 2 * H :]
    n[...] = np.tanh(n + r * saved[0][t])
    hs[t] = n + z * (h_prev - n)  # (1 - z) * n + z * h_prev
    return [hs[t]]


def backward_step(cell, a, dxw_t, d_total, dprev, prev, t, hs, saved):
    """Gradients of step t. ``d_total``: the whole gradient reaching h_t; ``dprev``: the
    gradients of the other carried states reaching step t (the LSTM's dc). Writes the gradient of
    the recurrent pre-activations (h_{t-1} Wh + bh) over ``a`` (unless the gates are h) and that
    of the input pre-activations into ``dxw_t`` (the same array for the RNN and LSTM). Returns
    (dhw_t, [the part of the gradient reaching h_{t-1} that bypasses Wh, or None, then the
    gradients of the other states at t-1])."""
    if cell is RNN:
        h = hs[t]
        np.multiply(d_total, 1 - h * h, out=dxw_t)
        return dxw_t, [None]
    if cell is LSTM:
        i, f, g, o = blocks(a, 4)  # views, each written with its gradient after every read
        si, sf, _, so = blocks(a * (1 - a), 4)  # the sigmoids' derivatives, all blocks in two calls
        tanh_c = np.tanh(saved[0][t])
        dc = d_total * o
        dc *= 1 - tanh_c * tanh_c
        dc += dprev[0]
        do = d_total * tanh_c
        do *= so
        df = dc * prev[1]
        df *= sf
        di = dc * g
        di *= si
        dg = dc * i
        dg *= 1 - g * g
        dc_prev = dc * f
        i[...], f[...], g[...], o[...] = di, df, dg, do
        return a, [None, dc_prev]
    H = a.shape[1] // 3
    r, z, n = (x.copy() for x in blocks(a, 3))
    h_prev = prev[0]
    dn = d_total * (1 - z) * (1 - n * n)  # d(a_n + r * hn)
    dr, dz, dhn = blocks(a, 3)  # written in place: the recurrent pre-activations' gradient
    dxw_t[:, 2 * H :] = dn
    dr[...] = dn * saved[0][t] * r * (1 - r)
    dz[...] = d_total * (h_prev - n) * z * (1 - z)
    dhn[...] = dn * r
    dxw_t[:, : 2 * H] = a[:, : 2 * H]
    return a, [d_total * z]
