"""tanh-RNN recurrence for the numba backend: one compiled call per sequence, one parallel
region per step.

Each thread owns a range of hidden units (``bounds``, computed once by the caller: a
parallel call made from inside a parallel region runs nested and costs a step's time). In a forward step it computes its columns of
h_{t-1} @ Wh (``dot_rows``, the small-GEMM tile) and their tanh; in a backward step its
columns of dxw_{t+1} @ Wh^T and the tanh derivative. A step reads the whole previous state,
which every thread finished before the region ended, so no other synchronization is needed.
"""
import numpy as np
from numba import prange

from .common_numba import add_activate, dot_rows, kernel, parallel_kernel


@parallel_kernel
def rnn_forward(xw, h0, WhT, bounds):
    """h_t = tanh(xw_t + h_{t-1} @ Wh), written over xw, which is returned as hs.
    WhT = Wh^T (C order); bounds: the units of each thread (``unit_chunks``)."""
    T, N, H = xw.shape
    rec = np.empty((N, H), dtype=xw.dtype)
    for t in range(T):
        h_prev = xw[t - 1] if t > 0 else h0
        for c in prange(len(bounds) - 1):
            u0, u1 = bounds[c], bounds[c + 1]
            dot_rows(h_prev, WhT, rec, u0, u1)
            _tanh_step(xw[t], rec, u0, u1)
    return xw


@kernel
def _tanh_step(a, rec, u0, u1):
    for n in range(a.shape[0]):  # row by row over 1-D slices: loops LLVM vectorizes
        add_activate(a[n, u0:u1], rec[n, u0:u1], True)


@parallel_kernel
def rnn_backward(dhs, hs, Wh, dh, dxw, one, bounds):
    """Fills dxw with d(pre-activation); dh enters as the gradient at h_T and leaves as dh0."""
    T, N, H = dhs.shape
    dh_step = np.empty((N, H), dtype=dhs.dtype)  # the gradient reaching h_t from step t+1
    for t in range(T - 1, -1, -1):
        for c in prange(len(bounds) - 1):
            u0, u1 = bounds[c], bounds[c + 1]
            if t == T - 1:
                dh_step[:, u0:u1] = dh[:, u0:u1]
            else:
                dot_rows(dxw[t + 1], Wh, dh_step, u0, u1)
            _tanh_step_backward(dxw[t], dh_step, dhs[t], hs[t], u0, u1, one)
    for c in prange(len(bounds) - 1):
        dot_rows(dxw[0], Wh, dh, bounds[c], bounds[c + 1])


@kernel
def _tanh_step_backward(d, dh, up, h, u0, u1, one):
    for n in range(d.shape[0]):
        _tanh_derivative(d[n, u0:u1], dh[n, u0:u1], up[n, u0:u1], h[n, u0:u1], one)


@kernel
def _tanh_derivative(d, dh, up, h, one):
    for j in range(d.size):
        d[j] = (dh[j] + up[j]) * (one - h[j] * h[j])
