"""LSTM recurrence for the numba backend: the whole time loop is one compiled call.

Gates are i, f, g, o (cuDNN/PyTorch order) in four H-wide blocks of each 4H row.
Forward writes the activated gates over ``xw`` (the state backward needs); backward
writes the pre-activation gradients over them. ``one`` carries the dtype.
"""
import numpy as np
from numba import njit


@njit(cache=True)
def lstm_forward(xw, h0, c0, Wh, hs, cs, one):
    T, N, G = xw.shape
    H = G // 4
    rec = np.empty((N, G), dtype=xw.dtype)
    h = h0
    c = c0
    for t in range(T):
        np.dot(h, Wh, rec)
        a = xw[t]
        h_out = hs[t]
        c_out = cs[t]
        for n in range(N):
            for j in range(H):
                i = one / (one + np.exp(-(a[n, j] + rec[n, j])))
                f = one / (one + np.exp(-(a[n, H + j] + rec[n, H + j])))
                g = np.tanh(a[n, 2 * H + j] + rec[n, 2 * H + j])
                o = one / (one + np.exp(-(a[n, 3 * H + j] + rec[n, 3 * H + j])))
                a[n, j] = i
                a[n, H + j] = f
                a[n, 2 * H + j] = g
                a[n, 3 * H + j] = o
                c_new = f * c[n, j] + i * g
                c_out[n, j] = c_new
                h_out[n, j] = o * np.tanh(c_new)
        h = h_out
        c = c_out


@njit(cache=True)
def lstm_backward(dhs, cs, gates, c0, WhT, dh, dc, one):
    """dh, dc enter as the gradients at h_T, c_T and leave as those at h0, c0."""
    T, N, G = gates.shape
    H = G // 4
    for t in range(T - 1, -1, -1):
        a = gates[t]
        c = cs[t]
        c_prev = cs[t - 1] if t > 0 else c0
        up = dhs[t]
        for n in range(N):
            for j in range(H):
                i = a[n, j]
                f = a[n, H + j]
                g = a[n, 2 * H + j]
                o = a[n, 3 * H + j]
                dh_t = dh[n, j] + up[n, j]
                tanh_c = np.tanh(c[n, j])
                dc_t = dc[n, j] + dh_t * o * (one - tanh_c * tanh_c)
                a[n, j] = dc_t * g * i * (one - i)
                a[n, H + j] = dc_t * c_prev[n, j] * f * (one - f)
                a[n, 2 * H + j] = dc_t * i * (one - g * g)
                a[n, 3 * H + j] = dh_t * tanh_c * o * (one - o)
                dc[n, j] = dc_t * f
        np.dot(a, WhT, dh)
