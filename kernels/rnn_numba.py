"""The tanh RNN's step math for the numba recurrence driver (``numba/recurrence.py``):
h_t = tanh(xw_t + h_{t-1} Wh). Its one gate is h itself, so forward writes h over xw and backward
writes the pre-activation gradient into dxw, which is dhw."""
from .numba.jit import kernel
from .numba.loops import add_activate
from .numba.recurrence import drivers, step_row


@kernel(inline="always")  # see numba/recurrence.py: inlined into the driver
def forward_rows(t, r0, r1, u0, u1, rec, at, xw, states0, hs, saved, bh):
    """h_t = tanh(xw_t + rec) over xw (which is hs). Row by row over contiguous 1-D slices, which
    LLVM vectorizes (a column slice of a 2-D array has an unknown layout, which stops it)."""
    a = xw[t]
    for n in range(r0, r1):
        add_activate(a[n, u0:u1], rec[n, at : at + u1 - u0], True)


@kernel(inline="always")
def backward_rows(t, r0, r1, u0, u1, dh, at, dhs, batch_major, hs, saved, states0, dhw, dxw, dstates, bypass, one):
    """dxw_t = (dh + dhs_t) * (1 - h_t^2)."""
    d, h = dxw[t], hs[t]
    for n in range(r0, r1):
        up = step_row(dhs, t, n, batch_major)
        _tanh_derivative(d[n, u0:u1], dh[n, at : at + u1 - u0], up[u0:u1], h[n, u0:u1], one)


@kernel(inline="always")
def _tanh_derivative(d, dh, up, h, one):
    for j in range(d.size):
        d[j] = (dh[j] + up[j]) * (one - h[j] * h[j])


forward, backward = drivers("rnn", forward_rows, backward_rows)
