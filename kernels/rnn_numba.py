"""tanh-RNN recurrence for the numba backend: one compiled call per sequence; one parallel
region per step when the threads split the hidden units, one for the whole sequence when they
split the batch rows (a thread then never reads another's rows).

The threads split a step by hidden units or by batch rows (``share``; the split is chosen
once by the caller: a parallel call made from inside a parallel region runs nested and costs
a step's time). The columns of Wh (forward) or Wh^T (backward) each unit group needs are
packed into panels once. In a forward step a thread computes its part of h_{t-1} @ Wh with
the register tile and the tanh; in a backward step its part of dxw_{t+1} @ Wh^T and the tanh
derivative. A step reads the whole previous state, which every thread finished before the
region ended, so no other synchronization is needed.
"""
import numpy as np
from numba import prange

from .common_numba import (
    add_activate,
    gradient_at_start,
    gradient_reaching_h,
    kernel,
    pack_panels,
    panel_product,
    parallel_kernel,
    share,
    step_row,
    unit_panels,
)


@parallel_kernel
def rnn_forward(xw, h0, Wh, rows, units):
    """h_t = tanh(xw_t + h_{t-1} @ Wh), written over xw, which is returned as hs.
    rows, units: how the threads split a step (``share``)."""
    T, N, H = xw.shape
    panels, cols, first, C = unit_panels(Wh, H, 1, units)
    rec = np.empty((N, first[-1] * C), dtype=xw.dtype)
    for p in prange(first[-1]):  # panel by panel: all threads pack, however they split the steps
        pack_panels(Wh, cols, panels, p, p + 1)
    shares = (len(rows) - 1) * (len(units) - 1)
    if len(units) == 2:  # split by rows: each thread runs all steps of its own rows, no region per step
        for c in prange(shares):
            for t in range(T):
                _forward_step(c, t, xw, h0, panels, rec, first, rows, units)
    else:
        for t in range(T):
            for c in prange(shares):
                _forward_step(c, t, xw, h0, panels, rec, first, rows, units)
    return xw


@kernel(inline="always")
def _forward_step(c, t, xw, h0, panels, rec, first, rows, units):
    r0, r1, g = share(c, rows, units)
    h_prev = xw[t - 1] if t > 0 else h0
    panel_product(h_prev, panels, rec, first[g], first[g + 1], r0, r1, units[g + 1] - units[g], t % 2 == 1)
    _tanh_step(xw[t], rec, first[g] * panels.shape[2], r0, r1, units[g], units[g + 1])


@kernel
def _tanh_step(a, rec, at, r0, r1, u0, u1):
    """rec holds units u0..u1 in columns at ..; row by row over contiguous 1-D slices, which LLVM
    vectorizes (a column slice of a 2-D array has an unknown layout, which stops it)."""
    for n in range(r0, r1):
        add_activate(a[n, u0:u1], rec[n, at : at + u1 - u0], True)


@parallel_kernel
def rnn_backward(dhs, batch_major, hs, Wh, dh, dxw, one, rows, units):
    """Fills dxw with d(pre-activation); dh enters as the gradient at h_T and leaves as dh0.
    dhs: (T, N, H), or (N, T, H) if batch_major."""
    T, N, H = dxw.shape
    panels, cols, first, C = unit_panels(Wh.T, H, 1, units)
    dh_step = np.empty((N, first[-1] * C), dtype=dhs.dtype)  # the gradient reaching h_t, packed
    for p in prange(first[-1]):  # panel by panel: all threads pack, however they split the steps
        pack_panels(Wh.T, cols, panels, p, p + 1)
    shares = (len(rows) - 1) * (len(units) - 1)
    if len(units) == 2:  # split by rows: each thread runs all steps of its own rows, no region per step
        for c in prange(shares):
            for t in range(T - 1, -1, -1):
                _backward_step(c, t, dhs, batch_major, hs, dh, dxw, one, panels, dh_step, first, rows, units)
            gradient_at_start(dxw, panels, dh_step, dh, first, rows, units, c)
    else:
        for t in range(T - 1, -1, -1):
            for c in prange(shares):
                _backward_step(c, t, dhs, batch_major, hs, dh, dxw, one, panels, dh_step, first, rows, units)
        for c in prange(shares):
            gradient_at_start(dxw, panels, dh_step, dh, first, rows, units, c)


@kernel(inline="always")
def _backward_step(c, t, dhs, batch_major, hs, dh, dxw, one, panels, dh_step, first, rows, units):
    r0, r1, u0, u1, at = gradient_reaching_h(dxw, t, panels, dh_step, dh, first, rows, units, c)
    _tanh_step_backward(dxw[t], dh_step, at, dhs, t, batch_major, hs[t], r0, r1, u0, u1, one)


@kernel
def _tanh_step_backward(d, dh, at, dhs, t, batch_major, h, r0, r1, u0, u1, one):
    for n in range(r0, r1):
        up = step_row(dhs, t, n, batch_major)
        _tanh_derivative(d[n, u0:u1], dh[n, at : at + u1 - u0], up[u0:u1], h[n, u0:u1], one)


@kernel(inline="always")
def _tanh_derivative(d, dh, up, h, one):
    for j in range(d.size):
        d[j] = (dh[j] + up[j]) * (one - h[j] * h[j])
