"""tanh-RNN recurrence for the numba backend: the whole time loop is one compiled call.

The recurrent product uses BLAS (np.dot on contiguous 2-D arrays); the tanh and its
derivative are fused into one pass over each step's (N, H) block. ``one`` carries the
dtype so float32 math stays float32 (a bare 1.0 literal would promote to float64).
"""
import numpy as np
from numba import njit


@njit(cache=True)
def rnn_forward(xw, h0, Wh, one):
    """h_t = tanh(xw_t + h_{t-1} @ Wh), written over xw, which is returned as hs."""
    T, N, H = xw.shape
    rec = np.empty((N, H), dtype=xw.dtype)
    h = h0
    for t in range(T):
        np.dot(h, Wh, rec)
        out = xw[t]
        for n in range(N):
            for j in range(H):
                out[n, j] = np.tanh(out[n, j] + rec[n, j])
        h = out
    return xw


@njit(cache=True)
def rnn_backward(dhs, hs, WhT, dh, dxw, one):
    """Fills dxw with d(pre-activation); dh enters as the gradient at h_T and leaves as dh0."""
    T, N, H = dhs.shape
    for t in range(T - 1, -1, -1):
        d = dxw[t]
        h = hs[t]
        g = dhs[t]
        for n in range(N):
            for j in range(H):
                d[n, j] = (dh[n, j] + g[n, j]) * (one - h[n, j] * h[n, j])
        np.dot(d, WhT, dh)
    return dh
