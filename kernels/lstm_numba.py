"""The LSTM's step math for the numba recurrence driver (``numba/recurrence.py``).

Gates i, f, g, o (cuDNN/PyTorch order), four H-wide blocks of each 4H row; i, f, o = sigmoid,
g = tanh; c_t = f c_{t-1} + i g; h_t = o tanh(c_t). Carries (h, c); saves the cells c. Forward
writes the activated gates over xw; backward writes the pre-activation gradients over them (dxw
is dhw is the gates array).
"""
from .numba.float32_math import tanh_
from .numba.jit import kernel
from .numba.loops import add_activate
from .numba.recurrence import drivers, step_row


@kernel(inline="always")  # see numba/recurrence.py: inlined into the driver
def forward_rows(t, r0, r1, u0, u1, rec, at, xw, states0, hs, saved, bh):
    """Row by row over contiguous 1-D slices, each loop writing one array: LLVM then vectorizes
    (one 2-D loop writing four gate blocks of one buffer it would not; a column slice of a 2-D
    array has an unknown layout, which also stops it)."""
    H, w = hs.shape[2], u1 - u0
    a, c, h = xw[t], saved[0][t], hs[t]
    c_prev = saved[0][t - 1] if t > 0 else states0[1]
    for n in range(r0, r1):
        if w == H:  # all units: i and f lie side by side, one loop without a scalar tail between them
            add_activate(a[n, : 2 * H], rec[n, at : at + 2 * H], False)
        for q in range(2 if w == H else 0, 4):
            lo = at + q * w
            add_activate(a[n, q * H + u0 : q * H + u1], rec[n, lo : lo + w], q == 2)
        _cell_update(a[n, u0:u1], a[n, H + u0 : H + u1], a[n, 2 * H + u0 : 2 * H + u1], a[n, 3 * H + u0 : 3 * H + u1],
                     c_prev[n, u0:u1], c[n, u0:u1], h[n, u0:u1])


# inlined: as a call, each row's seven slices cost a reference count each (~25% of a step at H=100)
@kernel(inline="always")
def _cell_update(i, f, g, o, c_prev, c, h):
    for j in range(i.size):
        c_new = f[j] * c_prev[j] + i[j] * g[j]
        c[j] = c_new
        h[j] = o[j] * tanh_(c_new)


@kernel(inline="always")
def backward_rows(t, r0, r1, u0, u1, dh, at, dhs, batch_major, hs, saved, states0, dhw, dxw, dstates, bypass, one):
    """The four gate gradients, over the activated gates in dhw; dstates[1] carries dc."""
    H = hs.shape[2]
    a, c = dhw[t], saved[0][t]
    c_prev = saved[0][t - 1] if t > 0 else states0[1]
    dc = dstates[1]
    for n in range(r0, r1):
        up = step_row(dhs, t, n, batch_major)
        _gates_backward(a[n, u0:u1], a[n, H + u0 : H + u1], a[n, 2 * H + u0 : 2 * H + u1],
                        a[n, 3 * H + u0 : 3 * H + u1], dh[n, at : at + u1 - u0], up[u0:u1], c[n, u0:u1],
                        c_prev[n, u0:u1], dc[n, u0:u1], one)


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


forward, backward = drivers("lstm", forward_rows, backward_rows)
