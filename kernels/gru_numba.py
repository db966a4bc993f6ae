"""The GRU's step math (PyTorch/cuDNN form) for the numba recurrence driver (``numba/recurrence.py``).

Gates r, z, n, three H-wide blocks of each 3H row; with rec = h_{t-1} Wh + bh:
r = sigmoid(a_r + rec_r), z = sigmoid(a_z + rec_z), n = tanh(a_n + r rec_n),
h_t = (1 - z) n + z h_{t-1}. bh is added here, inside the step: its n block sits inside r * (...).
Forward writes the activated gates over xw and saves hn = rec_n; backward writes the gradient of
the recurrent pre-activations (rec) over the gates and that of xw into dxw, whose n block differs
(dxw_n = dn, dhw_n = r dn). h_t depends on h_{t-1} also directly (z h_{t-1}): that part of its
gradient, z dh_t, bypasses Wh (the driver's ``bypass``).
"""
from .numba.float32_math import sigmoid_, tanh_
from .numba.jit import kernel
from .numba.recurrence import drivers, step_row


@kernel(inline="always")  # see numba/recurrence.py: inlined into the driver
def forward_rows(t, r0, r1, u0, u1, rec, at, xw, states0, hs, saved, bh):
    """Row by row over contiguous 1-D slices, each loop writing one array per gate, which LLVM
    vectorizes (see the LSTM's)."""
    H, w = hs.shape[2], u1 - u0
    a, hn, h = xw[t], saved[0][t], hs[t]
    h_prev = hs[t - 1] if t > 0 else states0[0]
    for n in range(r0, r1):
        if w == H:  # all units: r and z lie side by side, one loop without a scalar tail between them
            _add_sigmoid(a[n, : 2 * H], rec[n, at : at + 2 * H], bh[: 2 * H])
        else:
            for q in range(2):
                lo = at + q * w
                _add_sigmoid(a[n, q * H + u0 : q * H + u1], rec[n, lo : lo + w], bh[q * H + u0 : q * H + u1])
        lo = at + 2 * w
        _update(a[n, u0:u1], a[n, H + u0 : H + u1], a[n, 2 * H + u0 : 2 * H + u1], rec[n, lo : lo + w],
                bh[2 * H + u0 : 2 * H + u1], h_prev[n, u0:u1], hn[n, u0:u1], h[n, u0:u1])


@kernel(inline="always")
def _add_sigmoid(a, rec, b):
    """a = sigmoid(a + rec + b), in place."""
    for j in range(a.size):
        a[j] = sigmoid_(a[j] + rec[j] + b[j])


@kernel(inline="always")  # inlined: as a call, each row's slices cost a reference count each (see the LSTM's)
def _update(r, z, n, rec_n, b_n, h_prev, hn, h):
    """n = tanh(a_n + r hn) over a_n, hn = rec_n + b_n saved, h = n + z (h_prev - n)."""
    for j in range(n.size):
        g = rec_n[j] + b_n[j]
        hn[j] = g
        v = tanh_(n[j] + r[j] * g)
        n[j] = v
        h[j] = v + z[j] * (h_prev[j] - v)


@kernel(inline="always")
def backward_rows(t, r0, r1, u0, u1, dh, at, dhs, batch_major, hs, saved, states0, dhw, dxw, dstates, bypass, one):
    """The gate gradients, over the activated gates in dhw and into dxw; ``bypass`` carries z dh."""
    H = hs.shape[2]
    g, d, hn = dhw[t], dxw[t], saved[0][t]
    h_prev = hs[t - 1] if t > 0 else states0[0]
    for n in range(r0, r1):
        up = step_row(dhs, t, n, batch_major)
        _gates_backward(g[n, u0:u1], g[n, H + u0 : H + u1], g[n, 2 * H + u0 : 2 * H + u1],
                        d[n, u0:u1], d[n, H + u0 : H + u1], d[n, 2 * H + u0 : 2 * H + u1],
                        dh[n, at : at + u1 - u0], up[u0:u1], bypass[n, u0:u1], hn[n, u0:u1], h_prev[n, u0:u1], one)


@kernel(inline="always")
def _gates_backward(gr, gz, gn, dr, dz, dn, dh, up, bypass, hn, h_prev, one):
    """One row's units: gr, gz, gn hold r, z, n on entry and the gradients of rec on exit; dr, dz,
    dn receive those of xw; bypass enters as the part of dh_t that skipped Wh and leaves as
    z dh_t, the part of dh_{t-1} that does."""
    for j in range(gr.size):
        r, z, n = gr[j], gz[j], gn[j]
        d = dh[j] + up[j] + bypass[j]
        d_n = d * (one - z) * (one - n * n)  # of a_n + r hn
        d_r = d_n * hn[j] * r * (one - r)
        d_z = d * (h_prev[j] - n) * z * (one - z)
        gr[j], gz[j], gn[j] = d_r, d_z, d_n * r
        dr[j], dz[j], dn[j] = d_r, d_z, d_n
        bypass[j] = d * z


forward, backward = drivers("gru", forward_rows, backward_rows, bypass=True)
