"""The whole-sequence recurrence, written once: a cell brings its step math, ``drivers`` compiles the rest.

One compiled call runs a sequence. The threads split each step by batch rows or by hidden units
(``share``; the caller picks: rows when Wh fits in a core's L2 cache, so each core keeps all of
Wh hot and touches only its own rows; else units, so each core streams only its share of Wh).
Split by rows, each thread runs every step of its own rows in one parallel region (it never
reads another's rows); split by units, each step is a region of its own (a step reads all of
h_{t-1}, which every thread finished before the previous region ended, so nothing else needs
synchronizing). A parallel call made from inside a parallel region runs nested and costs a
step's time: the split is chosen once, outside. The columns of Wh (forward) or Wh^T (backward)
each unit group needs are packed into panels once per call, by all threads. A forward step of a
thread is its gate columns of h_{t-1} Wh by the register tile, then the cell's update of its rows
and units; a backward step its columns of dhw_{t+1} Wh^T (the gradient reaching h_t through Wh),
then the cell's gate gradients.

A cell supplies two kernels (``kernels/<cell>_numba.py``), inlined where the driver calls them
once per thread and step (as calls, their seventeen array arguments cost the RNN's backward at
H=100 about 2%):

    forward_rows(t, r0, r1, u0, u1, rec, at, xw, states0, hs, saved, bh)
    backward_rows(t, r0, r1, u0, u1, dh, at, dhs, batch_major, hs, saved, states0, dhw, dxw,
                  dstates, bypass, one)

for rows r0..r1 and units u0..u1 (w = u1 - u0) of step t. ``rec`` holds h_{t-1} Wh of those
rows and units, gate q of unit u0 + j in column at + q*w + j; ``dh`` the gradient reaching h_t
through Wh, unit u0 + j in column at + j. ``bypass`` (N, H), zero on entry, for a cell made with
``bypass=True`` (else empty): the gradient reaching h_t that bypasses Wh (the GRU's z * dh_{t+1});
the cell adds it to dh and writes its own step's in its place, and the driver adds what is left
into the gradient at h0.
``one``: 1 in the arrays' dtype. The rest are the driver's arguments (``_forward``, ``_backward``).
Before a driver of a dtype first runs, ``register_tile.bind_product(dtype)`` must have run
(``NumbaBackend`` does it).

Compile time: Numba links a callee's code into every function that calls it and optimizes and
emits the whole again for each, and each parallel loop is three such functions. So each driver
has one parallel loop of steps for both splits (``region_steps``), the backward's gradient at h0
in it as step -1; the tile's product is called through a symbol (``register_tile.product``);
prange indices go to callees as int64 (a prange index is int64 where Numba types the loop and
uint64 where it compiles it, which compiled pack_panels twice). A prange must stand in the
driver itself: one in an inlined helper ran serially. Sequence lengths and a gradient scale are
None or arrays: a driver without them is compiled without their code (Numba drops the branches
of ``x is None`` for an argument that is None), which kept them from costing the plain
recurrences 2-4% at H=100; with them it is compiled once more, when first asked.
"""
import numpy as np
from numba import prange

from .float32_math import like
from .jit import instance, kernel
from .register_tile import pack_panels, product, unit_panels
from .schedule import share


def drivers(name, forward_rows, backward_rows, bypass=False):
    """The compiled (forward, backward) of the cell ``name`` with its step kernels (see above);
    ``bypass``: whether the cell's h_t depends on h_{t-1} other than through Wh (else the backward
    allocates and adds no bypass, a few percent of the RNN's at 100)."""
    return (instance(_forward, f"{name}_forward", forward_rows=forward_rows),
            instance(_backward, f"{name}_backward", backward_rows=backward_rows, has_bypass=bypass))


def _forward(xw, states0, Wh, bh, hs, saved, lengths, rows, units):
    """Runs the cell over a sequence.

    xw       (T, N, G) C order: x_t Wx + b for every step; OVERWRITTEN with the activated gates.
    states0  tuple of (N, H) C order, read: h0 (, c0).
    Wh       (H, G) C order, read.
    bh       (G,) or None: the recurrent bias (the GRU's), read.
    hs       (T, N, H) C order, written; xw itself for the RNN (its gate is h).
    saved    tuple of (T, N, H) C order, written: what the cell keeps for backward (LSTM: c).
    lengths  (N,) int64, or None (every step valid): a row's steps t >= lengths[n] are padding,
             which output zeros (their gates and saved rows are left as they were).
    rows, units  int64 bounds: how the threads split a step (``share``).
    """
    T, N, G = xw.shape
    H = hs.shape[2]
    panels, cols, first, C = unit_panels(Wh, False, H, G // H, units)
    rec = np.empty((N, first[-1] * C), dtype=xw.dtype)  # each unit group's gate columns, packed
    for p in prange(panels.shape[0]):  # panel by panel: all threads pack, however they split the steps
        pack_panels(Wh, False, cols, panels, np.int64(p), np.int64(p) + 1)  # int64: see the module's docstring
    live = np.empty(0, dtype=np.int64) if lengths is None else lengths  # empty: every row is live
    steps = region_steps(T, units)
    for t0 in range(0, T, steps):
        for c in prange((len(rows) - 1) * (len(units) - 1)):
            for t in range(t0, t0 + steps):
                r0, r1, u0, u1, at = recurrent_product(np.int64(c), t, hs, states0[0], G // H, panels, rec, first,
                                                       rows, units, live)
                if lengths is None:
                    forward_rows(t, r0, r1, u0, u1, rec, at, xw, states0, hs, saved, bh)  # noqa: F821 (see drivers)
                    continue
                n = r0
                while n < r1:  # runs of rows within their length step; a row past it outputs zeros
                    m = valid_until(lengths, t, n, r1)
                    if m > n:
                        forward_rows(t, n, m, u0, u1, rec, at, xw, states0, hs, saved, bh)  # noqa: F821
                    else:
                        m = n + 1
                        zero(hs[t, n, u0:u1])
                    n = m


def _backward(dhs, batch_major, hs, saved, states0, Wh, dhw, dxw, dstates, scale, lengths, rows, units):
    """Gradients through the cell over a sequence, from its end to its start.

    dhs      (T, N, H), or (N, T, H) if batch_major, C order: the gradient from above; read.
    hs, saved, states0, Wh: as forward left or read them.
    dhw      (T, N, G) C order, written: the gradient of h_{t-1} Wh (+ bh). For cells whose gates
             are not h it is the gates array forward returned: the cell reads each gate there
             before it writes the gradient over it.
    dxw      (T, N, G) C order, written: the gradient of xw; may be dhw (the RNN's and the LSTM's).
    dstates  tuple of (N, H) C order: the gradients at the last states on entry, at the first
             ones (h0, c0) on exit.
    scale    (T,) of the arrays' dtype: what step t sends back to the states before it (h_{t-1}
             through Wh and the bypass, c_{t-1}) is multiplied by scale[t].
    lengths  as forward's: at a row's padded steps dxw and dhw are 0, dhs is not read, and the
             gradients reaching the states pass through unchanged (unscaled).
             scale and lengths are both None, or both arrays of which either may be empty.
    rows, units  as forward.
    """
    T, N, H = hs.shape
    panels, cols, first, C = unit_panels(Wh, True, H, 1, units)
    dh_step = np.empty((N, first[-1] * C), dtype=dhw.dtype)  # the gradient reaching h_t through Wh, packed
    bypass = np.empty((N if has_bypass else 0, H), dtype=dhw.dtype)  # noqa: F821 (bound by drivers)
    zero(bypass.reshape(-1))  # (np.zeros would be a parallel loop: a region of its own)
    one = like(dhw, 1)
    for p in prange(panels.shape[0]):
        pack_panels(Wh, True, cols, panels, np.int64(p), np.int64(p) + 1)
    live = np.empty(0, dtype=np.int64) if lengths is None else lengths  # empty: every row is live
    steps = region_steps(T + 1, units)
    for t0 in range(T - 1, -2, -steps):  # down to step -1: the gradient at h0
        for c in prange((len(rows) - 1) * (len(units) - 1)):
            for t in range(t0, t0 - steps, -1):
                r0, r1, u0, u1, at = gradient_reaching_h(dhw, t, panels, dh_step, dstates[0], first, rows, units,
                                                         np.int64(c), live)
                if t < 0:
                    if lengths is not None:
                        past_length(dh_step, at, dstates[0], scale, lengths, t, r0, r1, u0, u1)
                    at_start(dh_step, at, bypass, dstates[0], r0, r1, u0, u1, has_bypass)  # noqa: F821
                    continue
                if lengths is None:
                    backward_rows(t, r0, r1, u0, u1, dh_step, at, dhs, batch_major, hs, saved, states0,  # noqa: F821
                                  dhw, dxw, dstates, bypass, one)
                    continue
                past_length(dh_step, at, dstates[0], scale, lengths, t, r0, r1, u0, u1)
                n = r0
                while n < r1:  # runs of rows within their length step; a row past it passes the gradient on
                    m = valid_until(lengths, t, n, r1)
                    if m > n:
                        backward_rows(t, n, m, u0, u1, dh_step, at, dhs, batch_major, hs, saved, states0,  # noqa: F821
                                      dhw, dxw, dstates, bypass, one)
                        scale_carried(scale, t, dstates, bypass, n, m, u0, u1)
                    else:
                        m = n + 1
                        no_gradient(dhw, dxw, t, n, u0, u1, H)
                    n = m


@kernel(inline="always")
def region_steps(steps, units):
    """How many steps a thread runs in one parallel region: all when the threads split the batch
    rows (no region per step), one when they split the units."""
    return max(steps, 1) if len(units) == 2 else 1


@kernel(inline="always")
def recurrent_product(c, t, hs, h0, gates, panels, rec, first, rows, units, live):
    """Thread c's share of h_{t-1} Wh at forward step t, into rec (not for the rows ``live_end``
    leaves out). Returns its rows, its units and the column of rec where they start."""
    r0, r1, g = share(c, rows, units)
    u0, u1 = units[g], units[g + 1]
    h_prev = hs[t - 1] if t > 0 else h0
    product(h_prev, panels, rec, first[g], first[g + 1], r0, live_end(live, t, r0, r1), gates * (u1 - u0),
            t % 2 == 1)
    return r0, r1, u0, u1, first[g] * panels.shape[2]


@kernel(inline="always")
def gradient_reaching_h(dhw, t, panels, dh_step, dh, first, rows, units, c, live):
    """Thread c's share of dh_step at backward step t: the incoming dh at t = T - 1, else
    dhw[t + 1] Wh^T on its packed columns (at t = -1: the part of the gradient at h0 that goes
    through Wh; not for the rows ``live_end`` leaves out at step t + 1, which ``past_length``
    fills). Returns its rows, its units and the column of dh_step where those units start."""
    r0, r1, g = share(c, rows, units)
    u0, u1, at = units[g], units[g + 1], first[g] * panels.shape[2]
    if t == dhw.shape[0] - 1:
        for n in range(r0, r1):
            copy(dh_step[n, at : at + u1 - u0], dh[n, u0:u1])
    else:
        product(dhw[t + 1], panels, dh_step, first[g], first[g + 1], r0, live_end(live, t + 1, r0, r1), u1 - u0,
                t % 2 == 1)
    return r0, r1, u0, u1, at


@kernel(inline="always")
def live_end(lengths, t, r0, r1):
    """One past the last of rows r0..r1 whose step t is within its length (all, for empty
    lengths). The products stop there: a batch sorted longest first, as ``rnncore.sequences``
    makes them, does work in proportion to the sum of its lengths, not to N T."""
    if lengths.size:
        while r1 > r0 and lengths[r1 - 1] <= t:
            r1 -= 1
    return r1


@kernel(inline="always")
def past_length(dh_step, at, dh, scale, lengths, t, r0, r1, u0, u1):
    """With scale and lengths (either may be empty): the product in dh_step, times scale[t + 1],
    or, where step t + 1 is past the row's length, the incoming dh, passed on unscaled."""
    for n in range(r0, r1):
        if lengths.size and t + 1 >= lengths[n]:
            copy(dh_step[n, at : at + u1 - u0], dh[n, u0:u1])
        elif scale.size and t + 1 < scale.size:
            scale_row(dh_step[n, at : at + u1 - u0], scale[t + 1])


@kernel(inline="always")
def valid_until(lengths, t, n, r1):
    """Where the run of rows from n on whose step t is within their length ends (before r1)."""
    if not lengths.size:
        return r1
    m = n
    while m < r1 and t < lengths[m]:
        m += 1
    return m


@kernel(inline="always")
def scale_carried(scale, t, dstates, bypass, r0, r1, u0, u1):
    """Times scale[t], for rows r0..r1 and units u0..u1: the gradients step t sends back to the
    states before it besides the one through Wh (the bypass, the LSTM's dc)."""
    if scale.size:
        for n in range(r0, r1):
            if bypass.size:
                scale_row(bypass[n, u0:u1], scale[t])
            for k in range(1, len(dstates)):
                scale_row(dstates[k][n, u0:u1], scale[t])


@kernel(inline="always")
def scale_row(x, s):
    for j in range(x.size):
        x[j] *= s


@kernel(inline="always")
def no_gradient(dhw, dxw, t, n, u0, u1, H):
    """Zero gradients for row n's units u0..u1 in every gate block at step t (past its length)."""
    for q in range(dhw.shape[2] // H):
        zero(dhw[t, n, q * H + u0 : q * H + u1])
        zero(dxw[t, n, q * H + u0 : q * H + u1])


@kernel(inline="always")
def copy(into, x):
    for j in range(into.size):
        into[j] = x[j]


@kernel(inline="always")
def zero(x):
    """x[:] = 0 as a loop: in a parallel kernel an array expression (or np.zeros) is a parallel
    loop of its own, a region each call and more to compile."""
    for j in range(x.size):
        x[j] = 0


@kernel(inline="always")
def at_start(dh_step, at, bypass, dh, r0, r1, u0, u1, has_bypass):
    """The gradient at h0 of rows r0..r1, units u0..u1: dh = dhw_0 Wh^T (in dh_step) (+ bypass)."""
    for n in range(r0, r1):
        through, out = dh_step[n, at : at + u1 - u0], dh[n, u0:u1]
        if has_bypass:
            past = bypass[n, u0:u1]
            for j in range(out.size):
                out[j] = through[j] + past[j]
        else:
            for j in range(out.size):
                out[j] = through[j]


@kernel(inline="always")
def step_row(x, t, n, batch_major):
    """Row n of step t of a sequence held time-major (T, N, ...) or, if batch_major, (N, T, ...):
    contiguous either way, so loops over it vectorize (the upstream gradient is read where it lies)."""
    return x[n, t] if batch_major else x[t, n]
