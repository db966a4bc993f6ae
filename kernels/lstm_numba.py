"""LSTM recurrence for the numba backend: one compiled call per sequence; one parallel region
per step when the threads split the hidden units, one for the whole sequence when they split
the batch rows (a thread then never reads another's rows).

Gates are i, f, g, o (cuDNN/PyTorch order), four H-wide blocks of each 4H row. The threads
split a step either by hidden units (each packs the columns of Wh its units need and streams
only those) or, when Wh fits in a core's L2 cache, by batch rows (each keeps all of Wh and
touches only its own rows, so no cache line is shared between cores); see ``share``. In a
forward step a thread computes its gate columns of h_{t-1} @ Wh with the register tile
(``panel_product``) and then the cell update; in a backward step its columns of
dA_{t+1} @ Wh^T (the gradient reaching h_t) and then the gate gradients. A step reads only
what every thread finished before the previous region ended, so no other synchronization is
needed. Forward writes the activated gates over ``xw``; backward writes the pre-activation
gradients over them.
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
    tanh_,
    unit_panels,
)


@parallel_kernel
def lstm_forward(xw, h0, c0, Wh, hs, cs, rows, units):
    """rows, units: how the threads split a step (``share``)."""
    T, N, G = xw.shape
    H = G // 4
    panels, cols, first, C = unit_panels(Wh, H, 4, units)
    rec = np.empty((N, first[-1] * C), dtype=xw.dtype)  # each unit group's gate columns, packed
    for p in prange(first[-1]):  # panel by panel: all threads pack, however they split the steps
        pack_panels(Wh, cols, panels, p, p + 1)
    shares = (len(rows) - 1) * (len(units) - 1)
    if len(units) == 2:  # split by rows: each thread runs all steps of its own rows, no region per step
        for c in prange(shares):
            for t in range(T):
                _forward_step(c, t, xw, h0, c0, hs, cs, panels, rec, first, rows, units)
    else:
        for t in range(T):
            for c in prange(shares):
                _forward_step(c, t, xw, h0, c0, hs, cs, panels, rec, first, rows, units)


@kernel(inline="always")
def _forward_step(c, t, xw, h0, c0, hs, cs, panels, rec, first, rows, units):
    """Thread c's share of step t: its gate columns of h_{t-1} @ Wh, then the cell update."""
    r0, r1, g = share(c, rows, units)
    u0, u1 = units[g], units[g + 1]
    h_prev = hs[t - 1] if t > 0 else h0
    c_prev = cs[t - 1] if t > 0 else c0
    panel_product(h_prev, panels, rec, first[g], first[g + 1], r0, r1, 4 * (u1 - u0), t % 2 == 1)
    _cell_forward(xw[t], rec, first[g] * panels.shape[2], c_prev, cs[t], hs[t], r0, r1, u0, u1, hs.shape[2])


@kernel
def _cell_forward(a, rec, at, c_prev, c, h, r0, r1, u0, u1, H):
    """Rows r0..r1, units u0..u1; rec holds their gate q in columns at + q*w .. at + (q+1)*w,
    w = u1 - u0. Row by row over contiguous 1-D slices, each loop writing one array: LLVM then
    vectorizes (one 2-D loop writing four gate blocks of one buffer it would not; a column
    slice of a 2-D array has an unknown layout, which also stops it)."""
    w = u1 - u0
    for n in range(r0, r1):
        if w == H:  # all units: i and f lie side by side, one loop without a scalar tail between them
            add_activate(a[n, : 2 * H], rec[n, at : at + 2 * H], False)
        for q in range(2 if w == H else 0, 4):
            lo = at + q * w
            add_activate(a[n, q * H + u0 : q * H + u1], rec[n, lo : lo + w], q == 2)
        _cell_update(a[n, u0:u1], a[n, H + u0:H + u1], a[n, 2 * H + u0:2 * H + u1], a[n, 3 * H + u0:3 * H + u1],
                     c_prev[n, u0:u1], c[n, u0:u1], h[n, u0:u1])


@kernel(inline="always")  # inlined: as a call, each row's seven slices cost a reference count each (~25% of a step at H=100)
def _cell_update(i, f, g, o, c_prev, c, h):
    for j in range(i.size):
        c_new = f[j] * c_prev[j] + i[j] * g[j]
        c[j] = c_new
        h[j] = o[j] * tanh_(c_new)


@parallel_kernel
def lstm_backward(dhs, batch_major, cs, gates, c0, Wh, dh, dc, one, rows, units):
    """dh, dc enter as the gradients at h_T, c_T and leave as those at h0, c0.
    dhs: (T, N, H), or (N, T, H) if batch_major."""
    T, N, G = gates.shape
    H = G // 4
    panels, cols, first, C = unit_panels(Wh.T, H, 1, units)
    dh_step = np.empty((N, first[-1] * C), dtype=gates.dtype)  # the gradient reaching h_t, packed
    for p in prange(first[-1]):  # panel by panel: all threads pack, however they split the steps
        pack_panels(Wh.T, cols, panels, p, p + 1)
    shares = (len(rows) - 1) * (len(units) - 1)
    if len(units) == 2:  # split by rows: each thread runs all steps of its own rows, no region per step
        for c in prange(shares):
            for t in range(T - 1, -1, -1):
                _backward_step(c, t, dhs, batch_major, cs, gates, c0, dh, dc, one, panels, dh_step, first, rows, units)
            gradient_at_start(gates, panels, dh_step, dh, first, rows, units, c)
    else:
        for t in range(T - 1, -1, -1):
            for c in prange(shares):
                _backward_step(c, t, dhs, batch_major, cs, gates, c0, dh, dc, one, panels, dh_step, first, rows, units)
        for c in prange(shares):
            gradient_at_start(gates, panels, dh_step, dh, first, rows, units, c)


@kernel(inline="always")
def _backward_step(c, t, dhs, batch_major, cs, gates, c0, dh, dc, one, panels, dh_step, first, rows, units):
    """Thread c's share of backward step t: the gradient reaching its units of h_t, then the gate gradients."""
    c_prev = cs[t - 1] if t > 0 else c0
    r0, r1, u0, u1, at = gradient_reaching_h(gates, t, panels, dh_step, dh, first, rows, units, c)
    _cell_backward(gates[t], dh_step, at, dhs, t, batch_major, cs[t], c_prev, dc, r0, r1, u0, u1, cs.shape[2], one)


@kernel
def _cell_backward(a, dh, at, dhs, t, batch_major, c, c_prev, dc, r0, r1, u0, u1, H, one):
    """dh: the gradient reaching units u0..u1 from the next step, in columns at .. at + u1 - u0;
    dhs: the gradient from above, whose row n of step t ``step_row`` finds."""
    for n in range(r0, r1):
        up = step_row(dhs, t, n, batch_major)
        _gates_backward(a[n, u0:u1], a[n, H + u0:H + u1], a[n, 2 * H + u0:2 * H + u1], a[n, 3 * H + u0:3 * H + u1],
                        dh[n, at : at + u1 - u0], up[u0:u1], c[n, u0:u1], c_prev[n, u0:u1], dc[n, u0:u1], one)


@kernel(inline="always")
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
