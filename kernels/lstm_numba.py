"""LSTM recurrence for the numba backend: one compiled call per sequence, one parallel region
per step.

Gates are i, f, g, o (cuDNN/PyTorch order), four H-wide blocks of each 4H row. Each thread
owns a range of hidden units j and computes, for a forward step, the four gate columns
q*H + j of h_{t-1} @ Wh (``dot_rows``) and then the cell update of its units; for a
backward step, its columns of dA_{t+1} @ Wh^T (the gradient reaching h_t) and then the
gate gradients of its units. Forward writes the activated gates over ``xw``; backward
writes the pre-activation gradients over them.
"""
import numpy as np
from numba import prange

from .common_numba import add_activate, dot_rows, kernel, parallel_kernel, tanh_


@parallel_kernel
def lstm_forward(xw, h0, c0, WhT, hs, cs, bounds):
    """WhT = Wh^T (C order); bounds: the units of each thread (``unit_chunks``)."""
    T, N, G = xw.shape
    H = G // 4
    rec = np.empty((N, G), dtype=xw.dtype)
    for t in range(T):
        h_prev = hs[t - 1] if t > 0 else h0
        c_prev = cs[t - 1] if t > 0 else c0
        for c in prange(len(bounds) - 1):
            u0, u1 = bounds[c], bounds[c + 1]
            for q in range(4):
                dot_rows(h_prev, WhT, rec, q * H + u0, q * H + u1)
            _cell_forward(xw[t], rec, c_prev, cs[t], hs[t], u0, u1, H)


@kernel
def _cell_forward(a, rec, c_prev, c, h, u0, u1, H):
    """Units u0..u1 of every row. Row by row over 1-D slices, each loop writing one array:
    LLVM then vectorizes (one 2-D loop writing four gate blocks of one buffer it would not)."""
    for n in range(a.shape[0]):
        for q in range(4):
            lo, hi = q * H + u0, q * H + u1
            add_activate(a[n, lo:hi], rec[n, lo:hi], q == 2)
        _cell_update(a[n, u0:u1], a[n, H + u0:H + u1], a[n, 2 * H + u0:2 * H + u1], a[n, 3 * H + u0:3 * H + u1],
                     c_prev[n, u0:u1], c[n, u0:u1], h[n, u0:u1])


@kernel
def _cell_update(i, f, g, o, c_prev, c, h):
    for j in range(i.size):
        c_new = f[j] * c_prev[j] + i[j] * g[j]
        c[j] = c_new
        h[j] = o[j] * tanh_(c_new)


@parallel_kernel
def lstm_backward(dhs, cs, gates, c0, Wh, dh, dc, one, bounds):
    """dh, dc enter as the gradients at h_T, c_T and leave as those at h0, c0."""
    T, N, G = gates.shape
    H = G // 4
    dh_step = np.empty((N, H), dtype=gates.dtype)  # the gradient reaching h_t from step t+1
    for t in range(T - 1, -1, -1):
        c_prev = cs[t - 1] if t > 0 else c0
        for c in prange(len(bounds) - 1):
            u0, u1 = bounds[c], bounds[c + 1]
            if t == T - 1:
                dh_step[:, u0:u1] = dh[:, u0:u1]
            else:
                dot_rows(gates[t + 1], Wh, dh_step, u0, u1)
            _cell_backward(gates[t], dh_step, dhs[t], cs[t], c_prev, dc, u0, u1, H, one)
    for c in prange(len(bounds) - 1):
        dot_rows(gates[0], Wh, dh, bounds[c], bounds[c + 1])


@kernel
def _cell_backward(a, dh, up, c, c_prev, dc, u0, u1, H, one):
    for n in range(a.shape[0]):
        _gates_backward(a[n, u0:u1], a[n, H + u0:H + u1], a[n, 2 * H + u0:2 * H + u1], a[n, 3 * H + u0:3 * H + u1],
                        dh[n, u0:u1], up[n, u0:u1], c[n, u0:u1], c_prev[n, u0:u1], dc[n, u0:u1], one)


@kernel
def _gates_backward(ai, af, ag, ao, dh, up, c, c_prev, dc, one):
    """The four gate gradients of one row's units, written over the activated gates."""
    for j in range(ai.size):
        i, f, g, o = ai[j], af[j], ag[j], ao[j]
        dh_t = dh[j] + up[j]
        tanh_c = tanh_(c[j])
        dc_t = dc[j] + dh_t * o * (one - tanh_c * tanh_c)
        ai[j] = dc_t * g * i * (one - i)
        af[j] = dc_t * c_prev[j] * f * (one - f)
        ag[j] = dc_t * i * (one - g * g)
        ao[j] = dh_t * tanh_c * o * (one - o)
        dc[j] = dc_t * f
