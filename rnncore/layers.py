"""Time layers with the book's API (*Deep Learning from Scratch 2*, ch. 5-6).

Every layer has ``params`` and ``grads`` (lists of arrays; ``backward`` writes the
gradients in place so optimizers can hold references), ``forward`` and ``backward``.
Public shapes are batch-major ``(N, T, D)``. Inside, data is time-major ``(T, N, D)``;
a layer returns its output as a transposed view of a time-major buffer, so the next
layer's ``time_major()`` is free and no activation is copied between layers.
"""
import numbers
from typing import NamedTuple

import numpy as np

from . import cells
from .backends import get_backend
from .checks import (
    FLOAT_DTYPES,
    check_params,
    expect_backend_array,
    expect_float,
    expect_ids,
    expect_param_shape,
    expect_shape,
)


def time_major(x):
    """(N, T, ...) -> contiguous (T, N, ...); free when x is a transposed time-major buffer."""
    t = x.transpose((1, 0) + tuple(range(2, x.ndim)))
    return t if t.flags.c_contiguous else t.copy()


def batch_major(x):
    """(T, N, ...) -> (N, T, ...) view."""
    return x.transpose((1, 0) + tuple(range(2, x.ndim)))


class Layer:
    """Holds the backend, the parameters, zeroed gradients, and the forward cache."""

    param_names = ()

    def __init__(self, params, backend=None):
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        self.params = list(params)
        self.dtype = check_params(self.name, self.backend, self.param_names, self.params) if params else None
        # C order whatever the parameter's layout: kernels index gradients row-major
        self.grads = [self.xp.zeros(p.shape, dtype=p.dtype) for p in self.params]
        self._cache = None

    @property
    def name(self):
        return type(self).__name__

    def _where(self, method):
        return f"{self.name}.{method}"

    def _input(self, method, name, x, spec):
        where = self._where(method)
        expect_backend_array(where, name, x, self.backend)
        expect_shape(where, name, x, spec)
        if self.dtype is not None:
            expect_float(where, name, x, self.dtype)
        return x.shape

    def _forward_cache(self):
        """What forward saved. It is dropped only once backward has checked its arguments, so a
        call with a bad argument can be repeated correctly."""
        if self._cache is None:
            raise RuntimeError(f"{self.name}.backward called without a forward pass before it")
        return self._cache

    def _scale(self, grad, dout, where):
        """grad * dout for a scalar upstream gradient, keeping grad's dtype. A 0-d array of the
        backend stays where it is (no host sync; CuPy refuses to convert one implicitly)."""
        if isinstance(dout, (int, float)) or (isinstance(dout, (np.ndarray, np.generic)) and dout.ndim == 0
                                              and dout.dtype.kind in "iuf"):
            return grad if dout == 1 else grad * grad.dtype.type(dout)
        if self.backend.owns(dout) and dout.ndim == 0 and dout.dtype.kind in "iuf":
            return grad * dout.astype(grad.dtype)
        raise TypeError(f"{where}: dout must be a number (the gradient of the loss), got {type(dout).__name__}")


class TimeEmbedding(Layer):
    """Looks up rows of ``W`` (V, D) for integer ids (N, T) in [0, V)."""

    param_names = ("W",)

    def __init__(self, W, backend=None):
        super().__init__([W], backend)
        expect_shape(self.name, "W", W, ("V", "D"))

    def forward(self, ids):
        where = self._where("forward")
        expect_backend_array(where, "ids", ids, self.backend)
        expect_shape(where, "ids", ids, ("N", "T"))
        (W,) = self.params
        expect_ids(where, "ids", ids, 0, W.shape[0])
        ids_tm = time_major(ids)
        self._cache = ids_tm
        return batch_major(W[ids_tm])

    def backward(self, dout):
        ids_tm = self._forward_cache()
        T, N = ids_tm.shape
        D = self.params[0].shape[1]
        self._input("backward", "dout", dout, (("N", N), ("T", T), ("D", D)))
        self._cache = None
        (dW,) = self.grads
        dW[...] = 0
        self.backend.embedding_scatter_add(dW, ids_tm.reshape(-1), time_major(dout).reshape(-1, D))
        return None


class TimeAffine(Layer):
    """out = x @ W + b at every step; W (D, M), b (M,)."""

    param_names = ("W", "b")

    def __init__(self, W, b, backend=None):
        super().__init__([W, b], backend)
        expect_shape(self.name, "W", W, ("D", "M"))
        expect_param_shape(self.name, "b", b, (W.shape[1],), "M = W.shape[1]")

    def forward(self, x):
        W, b = self.params
        D, M = W.shape
        N, T, _ = self._input("forward", "x", x, ("N", "T", ("D", D)))
        x_tm = time_major(x)
        self._cache = x_tm
        out = self.backend.linear(x_tm.reshape(T * N, D), W, b)
        return batch_major(out.reshape(T, N, M))

    def backward(self, dout):
        x_tm = self._forward_cache()
        T, N, D = x_tm.shape
        W, _ = self.params
        M = W.shape[1]
        self._input("backward", "dout", dout, (("N", N), ("T", T), ("M", M)))
        self._cache = None
        d = time_major(dout).reshape(T * N, M)
        dW, db = self.grads
        self.backend.matmul(x_tm.reshape(T * N, D).T, d, out=dW)
        self.backend.sum_rows(d, db)
        return batch_major(self.backend.matmul(d, W.T).reshape(T, N, D))


class TimeSoftmaxWithLoss(Layer):
    """Mean cross-entropy of softmax(scores) over all labels that are not -1 (the book's ignore label)."""

    def __init__(self, backend=None):
        super().__init__([], backend)

    def forward(self, xs, ts):
        where = self._where("forward")
        expect_backend_array(where, "xs", xs, self.backend)
        expect_shape(where, "xs", xs, ("N", "T", "V"))
        if xs.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{where}: xs must hold float32 or float64 scores, got dtype {xs.dtype}")
        N, T, V = xs.shape
        expect_backend_array(where, "ts", ts, self.backend)
        expect_shape(where, "ts", ts, (("N", N), ("T", T)))
        expect_ids(where, "ts", ts, -1, V)
        scores = time_major(xs).reshape(T * N, V)
        loss, dscores = self.backend.softmax_cross_entropy(scores, time_major(ts).reshape(T * N))
        self._cache = dscores.reshape(T, N, V)
        return loss

    def backward(self, dout=1):
        dscores = self._scale(self._forward_cache(), dout, self._where("backward"))
        self._cache = None
        return batch_major(dscores)


class TimeMSELoss(Layer):
    """Mean squared error between predictions (N, T, D) and targets of the same shape (d2l 9.1)."""

    def __init__(self, backend=None):
        super().__init__([], backend)

    def forward(self, ys, ts):
        where = self._where("forward")
        for name, a in (("ys", ys), ("ts", ts)):
            expect_backend_array(where, name, a, self.backend)
            if a.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{where}: {name} must be float32 or float64, got {a.dtype}")
        expect_shape(where, "ys", ys, ("N", "T", "D"))
        expect_shape(where, "ts", ts, tuple((n, s) for n, s in zip("NTD", ys.shape)))
        expect_float(where, "ts", ts, ys.dtype)
        diff = ys - ts
        self._cache = diff
        return (diff * diff).mean()

    def backward(self, dout=1):
        diff = self._forward_cache()
        grad = self._scale(diff, dout, self._where("backward")) * diff.dtype.type(2 / diff.size)
        self._cache = None
        return grad


class TimeDropout(Layer):
    """Inverted dropout: zero each activation with probability ``ratio`` while ``train_flg`` is set.

    ``rows = (r0, r1, N)``: this layer sees rows r0..r1 of a batch of N (one rank's share in
    data-parallel training): it draws the whole batch's mask and keeps its rows, so the masks,
    and the training, do not depend on how many ranks share the batch.
    """

    def __init__(self, ratio=0.5, backend=None):
        super().__init__([], backend)
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 <= ratio < 1:
            raise ValueError(f"TimeDropout: ratio must be a number in [0, 1), got {ratio!r}")
        self.ratio = float(ratio)
        self.train_flg = True
        self.rows = None

    def forward(self, xs):
        where = self._where("forward")
        expect_backend_array(where, "xs", xs, self.backend)
        expect_shape(where, "xs", xs, ("N", "T", "D"))
        if xs.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{where}: xs must be float32 or float64, got {xs.dtype}")
        N, T, D = xs.shape
        if not self.train_flg or self.ratio == 0:
            self._cache = (xs.shape, None)
            return xs
        if self.rows is None:
            mask = batch_major(self.backend.dropout_mask((T, N, D), self.ratio, xs.dtype))
        else:
            r0, r1, total = self.rows
            if r1 - r0 != N:
                raise ValueError(f"{where}: rows {r0}..{r1} of {total} were set, but xs has N={N}")
            mask = batch_major(self.backend.dropout_mask((T, total, D), self.ratio, xs.dtype)[:, r0:r1])
        self._cache = (xs.shape, mask)
        return xs * mask

    def backward(self, dout):
        shape, mask = self._forward_cache()
        where = self._where("backward")
        expect_backend_array(where, "dout", dout, self.backend)
        expect_shape(where, "dout", dout, tuple((n, s) for n, s in zip("NTD", shape)))
        self._cache = None
        return dout if mask is None else dout * mask


class Held(NamedTuple):
    """What forward kept of a segment for backward: its gates and saved arrays, or the states it
    started from (backward then computes them again)."""

    gates: object
    saved: tuple
    states: list


class Recurrent(Layer):
    """One recurrent layer over any cell (``rnncore.cells``): checks, carried states, the hoisted
    GEMMs, checkpointing. ``TimeRNN``, ``TimeLSTM`` and ``TimeGRU`` are declarations over it.

    ``checkpoint=k`` processes the sequence in segments of k steps. A segment whose cell saves
    nothing beyond hs (the RNN) holds what backward reads; any other keeps only the states at
    its start, and backward recomputes its gates and saved arrays just before it needs them.
    Gradients equal the plain pass's up to float rounding.
    """

    cell = None

    def __init__(self, *params, stateful=False, checkpoint=None, backend=None):
        super().__init__(params, backend)
        cell = self.cell
        Wx, Wh = params[0], params[1]
        expect_shape(self.name, "Wh", Wh, ("H", "G"))
        H = Wh.shape[0]
        G = cell.gates * H
        g_text = "G = H" if cell.gates == 1 else f"G = {cell.gates}H"
        expect_param_shape(self.name, "Wh", Wh, (H, G), f"H, {g_text}")
        expect_shape(self.name, "Wx", Wx, ("D", ("G", G)))
        for name, b in zip(self.param_names[2:], params[2:]):
            expect_param_shape(self.name, name, b, (G,), g_text)
        if checkpoint is not None and (isinstance(checkpoint, bool) or not isinstance(checkpoint, numbers.Integral)
                                       or checkpoint < 1):
            raise ValueError(f"{self.name}: checkpoint must be a positive number of steps or None, got {checkpoint!r}")
        self.hidden_size = H
        # dWh and the recurrent pre-activations' bias gradient as the rows of one buffer:
        # _segment_grads computes both in one GEMM
        self._dWh_db = self.xp.zeros((H + 1, G), dtype=Wh.dtype)
        self.grads[1], self.grads[-1] = self._dWh_db[:H], self._dWh_db[H]
        self.stateful = stateful
        self.checkpoint = None if checkpoint is None else int(checkpoint)
        self.reset_state()

    @property
    def param_names(self):
        return self.cell.param_names

    @property
    def state_names(self):
        """The carried states: ("h",) or ("h", "c")."""
        return self.cell.states

    def reset_state(self):
        """Forget the carried state: the next forward starts from zeros."""
        for name in self.cell.states:
            setattr(self, name, None)
            setattr(self, "d" + name, None)
        self._given_state = False

    def set_state(self, h, c=None):
        """Start the next forward from ``h`` (and ``c`` for the LSTM), each (N, H). A stateful layer
        carries on from there; a stateless one starts from it once, then from zeros again."""
        where = self._where("set_state")
        if "c" not in self.cell.states and c is not None:
            raise ValueError(f"{where}: a {self.name} has no cell state; pass h only")
        states = list(zip(self.cell.states, (h, c)))
        for name, s in states:
            if s is None:
                raise ValueError(f"{where}: {name} is required")
            self._check_state(where, name, s)
        if c is not None and c.shape != h.shape:
            raise ValueError(f"{where}: c must have the shape of h {tuple(h.shape)}, got {tuple(c.shape)}")
        for name, s in states:
            setattr(self, name, s.copy())
        self._given_state = True

    def _check_state(self, where, name, s, N=None):
        expect_backend_array(where, name, s, self.backend)
        expect_shape(where, name, s, ("N" if N is None else ("N", N), ("H", self.hidden_size)))
        expect_float(where, name, s, self.dtype)

    def _start_states(self, N):
        """The states the next forward starts from: carried ones if stateful and set, else zeros."""
        names = self.cell.states
        carried = [getattr(self, n) for n in names]
        if carried[0] is not None and (self.stateful or self._given_state) and carried[0].shape[0] != N:
            raise ValueError(  # before the given state is used up: a corrected call still starts from it
                f"{self._where('forward')}: the carried state has batch size {carried[0].shape[0]} "
                f"but xs has N={N}; call reset_state() or set_state() first"
            )
        given, self._given_state = self._given_state, False
        if carried[0] is None or not (self.stateful or given):
            return [self.xp.zeros((N, self.hidden_size), dtype=self.dtype) for _ in names]
        return carried

    @classmethod
    def from_torch(cls, state_dict, index=0, prefix="", stateful=False, backend=None, dtype="float32"):
        """A layer with the weights of layer ``index`` of a ``torch.nn.RNN``/``LSTM``/``GRU`` state dict."""
        be = get_backend(backend)
        return cls(*(be.asarray(p.astype(dtype)) for p in torch_params(state_dict, index, prefix, cls.cell)),
                   stateful=stateful, backend=be)

    def load_torch(self, state_dict, index=0, prefix=""):
        """Overwrite this layer's weights in place from a PyTorch state dict (see ``torch_params``)."""
        for name, p, v in zip(self.param_names, self.params, torch_params(state_dict, index, prefix, self.cell)):
            if p.shape != v.shape:
                raise ValueError(f"{self.name}: {name} is {tuple(p.shape)} but the state dict gives {tuple(v.shape)}")
            p[...] = self.backend.asarray(v.astype(p.dtype))

    # the pass ------------------------------------------------------------------------
    def forward(self, xs, lengths=None):
        """xs (N, T, D) -> hs (N, T, H). ``lengths`` (N,) integers in [0, T] (host or backend
        array): row n's steps from lengths[n] on are padding: they leave its state unchanged and
        output zeros, and backward sends nothing through them (PyTorch's packed sequences); a
        stateful layer carries each row's state at its last valid step."""
        Wx = self.params[0]
        self._input("forward", "xs", xs, ("N", "T", ("D", Wx.shape[0])))
        x_tm = time_major(xs)
        T, N, _ = x_tm.shape
        lengths = checked_lengths(self._where("forward"), self.backend, lengths, N, T)
        starts = self._start_states(N)
        seg = min(self.checkpoint or T, T)
        hs = None if seg == T else self.xp.empty((T, N, self.hidden_size), dtype=self.dtype)
        kept, states = [], starts
        for t0 in range(0, T, seg):
            seg_lengths = _segment_lengths(lengths, t0, min(t0 + seg, T), T, self.xp)
            out, gates, saved = self._run_segment(x_tm[t0 : t0 + seg], states, seg_lengths)
            if seg == T:
                hs = out
            else:
                hs[t0 : t0 + seg] = out
            # what backward needs: the gates and saved arrays (hs is kept anyway: nothing more for
            # the RNN), or only where the segment started
            if seg == T or self.cell.gates_are_h:
                kept.append(Held(gates if seg == T else None, saved, None))
            else:
                kept.append(Held(None, None, states))
            states = self._last_states(out, saved, seg_lengths, states)
            if seg < T:  # copies: views would keep the whole segment alive
                states = [s.copy() for s in states]
        self._cache = (x_tm, starts, hs, kept, seg, lengths)
        for name, value in zip(self.cell.states, states):
            setattr(self, name, value.copy())
        return batch_major(hs)

    def backward(self, dhs, dh_next=None, dc_next=None, scale=None):
        """dhs (N, T, H) -> dxs (N, T, D). ``dh_next``/``dc_next`` (N, H): gradients reaching the
        last state from beyond this chunk (None: truncated here). Leaves ``dh`` (``dc``).
        ``scale`` (T,) numbers: the gradient step t sends to the states before it is multiplied
        by scale[t] (randomized truncation; ``rnncore.bptt.randomized_pass``)."""
        x_tm, starts, hs, kept, seg, lengths = self._forward_cache()
        T, N, D = x_tm.shape
        self._input("backward", "dhs", dhs, (("N", N), ("T", T), ("H", self.hidden_size)))
        if "c" not in self.cell.states and dc_next is not None:
            raise ValueError(f"{self._where('backward')}: a {self.name} has no cell state; dc_next must be None")
        grads = [dh_next, dc_next][: len(self.cell.states)]
        for name, g in zip(("dh_next", "dc_next"), grads):
            if g is not None:
                self._check_state(self._where("backward"), name, g, N)
        scale = self._step_scale(scale, T)
        self._cache = None
        d_tm = dhs.transpose(1, 0, 2)  # a view: backends read it as it lies, or copy it themselves
        dx = None if seg == T else self.xp.empty((T, N, D), dtype=self.dtype)
        for k in reversed(range(len(kept))):
            t0, t1 = k * seg, min(k * seg + seg, T)
            seg_lengths = _segment_lengths(lengths, t0, t1, T, self.xp)
            states = starts if k == 0 else self._segment_start(kept[k], hs, t0)
            gates, saved = self._held_or_recomputed(kept[k], x_tm[t0:t1], hs[t0:t1], states, seg_lengths)
            dxw, dhw, grads = self.backend.recurrence_backward(self.cell, d_tm[t0:t1], hs[t0:t1], gates, saved,
                                                               states, self.params[1], grads,
                                                               None if scale is None else scale[t0:t1],
                                                               seg_lengths)
            dx_seg = self._segment_grads(x_tm[t0:t1], states[0], hs[t0:t1], dxw, dhw, accumulate=t1 < T,
                                         lengths=seg_lengths)
            if dx is None:
                dx = dx_seg
            else:
                dx[t0:t1] = dx_seg
        for name, g in zip(self.cell.states, grads):
            setattr(self, "d" + name, g)
        return batch_major(dx)

    def _step_scale(self, scale, T):
        """``scale`` as a (T,) float64 host array of finite numbers, or None."""
        if scale is None:
            return None
        where = self._where("backward")
        if self.backend.owns(scale) and not isinstance(scale, np.ndarray):
            raise TypeError(f"{where}: scale must be host numbers (a list or NumPy array), not a device array")
        try:
            values = np.asarray(scale, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{where}: scale must be numbers, got {type(scale).__name__}") from None
        if values.shape != (T,) or not np.isfinite(values).all():
            raise ValueError(f"{where}: scale must be {T} finite numbers (one per step), got shape {values.shape}")
        return values

    @staticmethod
    def _segment_start(held, hs, t0):
        """The states entering the segment at t0: kept by forward, or (a segment that holds its
        gates) h at t0 - 1."""
        return held.states if held.states is not None else [hs[t0 - 1]]

    def _held_or_recomputed(self, held, x_seg, hs_seg, states, lengths):
        """The segment's gates and saved arrays: held since forward, or computed again from its start."""
        if self.cell.gates_are_h:
            return hs_seg, ()
        if held.states is None:
            return held.gates, held.saved
        return self._run_segment(x_seg, states, lengths)[1:]

    def _run_segment(self, x_seg, states, lengths=None):
        """(hs, gates, saved) of the segment from ``states``: xw = x Wx + bx for all its steps in
        one GEMM, then the recurrence."""
        Wx, Wh, b = self.params[:3]
        T, N, D = x_seg.shape
        x_flat, rows = x_seg.reshape(T * N, D), live_rows(lengths, T, N, self.xp)
        if rows is None:
            xw = self.backend.linear(x_flat, Wx, b)
        else:  # the padded steps' entries are never read: zeros, for a kernel that computes and drops them
            xw = self.xp.zeros((T * N, Wx.shape[1]), dtype=self.dtype)
            if rows.size:
                xw[rows] = self.backend.linear(x_flat[rows], Wx, b)
        xw = xw.reshape(T, N, Wx.shape[1])
        bh = self.params[3] if self.cell.recurrent_bias else None
        if lengths is None:  # the plain call: a backend needs no lengths support for it
            return self.backend.recurrence_forward(self.cell, xw, states, Wh, bh)
        return self.backend.recurrence_forward(self.cell, xw, states, Wh, bh, lengths)

    def _last_states(self, hs, saved, lengths, starts):
        """The states after the segment: at its last step, or per row at its last valid step (the
        start state for a row with no valid step)."""
        if lengths is None:
            return self.cell.last_states(hs, saved)
        xp = self.xp
        rows, last = xp.arange(hs.shape[1]), xp.maximum(lengths - 1, 0)
        some = (lengths > 0)[:, None]
        return [xp.where(some, seq[last, rows], start) for seq, start in zip(self.cell.sequences(hs, saved), starts)]

    def _segment_grads(self, x_seg, h_start, hs_seg, dxw, dhw, accumulate, lengths=None):
        """dWx = x^T dxw, and dWh with the recurrent bias in one GEMM: [h_{t-1}, 1]^T dhw, whose
        last row 1^T dhw is the bias gradient, so no second pass reads dhw for a column sum
        (6% less time for the two at H=100); and dxs = dxw Wx^T: three independent products,
        handed to the backend together. A cell with two biases (the GRU) adds bx's gradient,
        1^T dxw. Added in if ``accumulate``, else written; returns the segment's dxs, time-major.
        With ``lengths`` the products take only the steps within them (``live_rows``): the
        padded ones' dxw and dhw are zero."""
        T, N, D = x_seg.shape
        Wx = self.params[0]
        G, H = Wx.shape[1], self.hidden_size
        xp = self.xp
        x_flat, flat, flat_h = x_seg.reshape(T * N, D), dxw.reshape(T * N, G), dhw.reshape(T * N, G)
        h_ones = xp.empty((T, N, H + 1), dtype=self.dtype)  # [h_{t-1}, 1] for every t
        h_ones[0, :, :H] = h_start
        h_ones[1:, :, :H] = hs_seg[:-1]
        h_ones[:, :, H] = 1
        h_ones = h_ones.reshape(T * N, H + 1)
        rows = live_rows(lengths, T, N, xp)
        if rows is not None:
            x_flat, flat, flat_h, h_ones = x_flat[rows], flat[rows], flat_h[rows], h_ones[rows]
        dWx, dWh_db, dbx = self.grads[0], self._dWh_db, self.grads[2] if self.cell.recurrent_bias else None
        if not len(x_flat):  # no step within the lengths: nothing flows back
            for g in (dWx, dWh_db, dbx):
                if g is not None and not accumulate:
                    g[...] = 0
            return xp.zeros((T, N, D), dtype=self.dtype)
        if accumulate:
            dWx, dWh_db = xp.empty_like(dWx), xp.empty_like(dWh_db)
        dx = xp.empty((len(x_flat), D), dtype=self.dtype)
        self.backend.matmuls([(x_flat.T, flat, dWx), (h_ones.T, flat_h, dWh_db), (flat, Wx.T, dx)])
        if rows is not None:
            dx_live, dx = dx, xp.zeros((T * N, D), dtype=self.dtype)
            dx[rows] = dx_live
        if accumulate:
            self.grads[0] += dWx
            self._dWh_db += dWh_db
        if dbx is not None:
            if accumulate:
                dbx += flat.sum(axis=0)
            else:
                self.backend.sum_rows(flat, dbx)
        return dx.reshape(T, N, D)


def live_rows(lengths, T, N, xp):
    """Indices t * N + n of the steps of a (T, N, ...) segment within their rows' lengths, for
    the input and weight products to take only those; None (take all) without lengths or where
    fewer than a tenth of the steps are padding (the gathers would then cost more than they save)."""
    if lengths is None or 10 * int(lengths.sum()) > 9 * T * N:
        return None
    return xp.flatnonzero((xp.arange(T)[:, None] < lengths[None, :]).reshape(-1))


def checked_lengths(where, backend, lengths, N, T):
    """``lengths`` checked as (N,) integers in [0, T], returned as a backend int64 array; None for
    None, and where every row is T long (nothing to mask: the plain path). Reading the range back
    syncs a GPU, as the id checks do."""
    if lengths is None:
        return None
    if not backend.owns(lengths):
        if not isinstance(lengths, (np.ndarray, list, tuple)):
            raise TypeError(f"{where}: lengths must be an array of N integers, got {type(lengths).__name__}")
        lengths = np.asarray(lengths)
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"{where}: lengths must hold integers, got dtype {lengths.dtype}")
    if lengths.shape != (N,):
        raise ValueError(f"{where}: lengths must have shape (N={N},), got {tuple(lengths.shape)}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 0 or hi > T:
        raise ValueError(f"{where}: lengths must lie in [0, T={T}], got {lo if lo < 0 else hi}")
    return None if lo == T else backend.xp.asarray(lengths, dtype=np.int64)


def _segment_lengths(lengths, t0, t1, T, xp):
    """Each row's valid steps within steps t0..t1 of T, counted from t0 (lengths are at most T:
    the whole sequence's are the lengths themselves)."""
    if lengths is None or (t0 == 0 and t1 == T):
        return lengths
    return xp.clip(lengths - t0, 0, t1 - t0)


class TimeRNN(Recurrent):
    """tanh RNN over a sequence: h_t = tanh(x_t @ Wx + h_{t-1} @ Wh + b).

    Wx (D, H), Wh (H, H), b (H,). ``forward(xs)`` takes (N, T, D) and returns hs (N, T, H).
    With ``stateful=True`` the last h is carried into the next forward (truncated BPTT);
    backward never reaches past the start of the current chunk, and leaves the gradient
    with respect to the starting state in ``dh``.
    """

    cell = cells.RNN

    def __init__(self, Wx, Wh, b, stateful=False, checkpoint=None, backend=None):
        super().__init__(Wx, Wh, b, stateful=stateful, checkpoint=checkpoint, backend=backend)


class TimeLSTM(Recurrent):
    """LSTM over a sequence, gates in the cuDNN/PyTorch order i, f, g, o.

    a_t = x_t @ Wx + h_{t-1} @ Wh + b, split into four H-wide blocks i, f, g, o;
    i, f, o = sigmoid, g = tanh; c_t = f*c_{t-1} + i*g; h_t = o*tanh(c_t).
    Wx (D, 4H), Wh (H, 4H), b (4H,): a ``torch.nn.LSTM``'s ``weight_ih_l0.T``,
    ``weight_hh_l0.T`` and ``bias_ih_l0 + bias_hh_l0`` drop in as they are.
    (The book orders the gates f, g, i, o.) ``stateful`` carries h and c between
    calls; after backward, ``dh`` and ``dc`` hold the gradients of the start state.
    """

    cell = cells.LSTM

    def __init__(self, Wx, Wh, b, stateful=False, checkpoint=None, backend=None):
        super().__init__(Wx, Wh, b, stateful=stateful, checkpoint=checkpoint, backend=backend)


class TimeGRU(Recurrent):
    """GRU over a sequence in PyTorch's/cuDNN's form, gates r, z, n:

    a = x_t @ Wx + bx, g = h_{t-1} @ Wh + bh, each split into three H-wide blocks r, z, n;
    r = sigmoid(a_r + g_r), z = sigmoid(a_z + g_z), n = tanh(a_n + r * g_n),
    h_t = (1 - z) * n + z * h_{t-1}.
    Wx (D, 3H), Wh (H, 3H), bx (3H,), bh (3H,): a ``torch.nn.GRU``'s ``weight_ih_l0.T``,
    ``weight_hh_l0.T``, ``bias_ih_l0`` and ``bias_hh_l0`` (``from_torch``). The biases stay
    apart because bh's n block sits inside r * (...). The books (d2l 10.2, DLFS2's appendix)
    apply r before the product, tanh(a_n + (r * h_{t-1}) @ Wh_n); rnncore follows cuDNN and
    PyTorch. ``stateful`` carries h between calls; after backward ``dh`` holds the gradient of
    the start state.
    """

    cell = cells.GRU

    def __init__(self, Wx, Wh, bx, bh, stateful=False, checkpoint=None, backend=None):
        super().__init__(Wx, Wh, bx, bh, stateful=stateful, checkpoint=checkpoint, backend=backend)


class Bidirectional:
    """Two recurrent layers over one sequence, the second reading it backwards; their outputs side
    by side, (N, T, 2H), as ``nn.LSTM(bidirectional=True)`` and the book's TimeBiLSTM give them.

    With ``lengths`` the backward layer reads each row's valid steps in reverse, starting at the
    row's last valid step (PyTorch's packed sequences), and outputs zeros past the row's end.
    ``params``/``grads``: the forward layer's, then the backward layer's.
    """

    def __init__(self, forward_layer, backward_layer):
        f, b = forward_layer, backward_layer
        for layer in (f, b):
            if not isinstance(layer, Recurrent):
                raise TypeError(f"Bidirectional: expected recurrent layers, got {type(layer).__name__}")
        if f.backend is not b.backend or f.dtype != b.dtype or f.params[0].shape[0] != b.params[0].shape[0]:
            raise ValueError("Bidirectional: the two layers must share the backend, dtype and input size D")
        self.layers = (f, b)
        self.backend, self.dtype = f.backend, f.dtype
        self.params, self.grads = f.params + b.params, f.grads + b.grads
        self.hidden_size = f.hidden_size + b.hidden_size
        self._reversal = None

    def forward(self, xs, lengths=None):
        """xs (N, T, D) -> (N, T, H_forward + H_backward)."""
        f, b = self.layers
        out_f = f.forward(xs, lengths)  # checks xs and lengths
        N, T = xs.shape[:2]
        lengths = checked_lengths("Bidirectional.forward", self.backend, lengths, N, T)
        self._reversal = _reversal(self.backend.xp, N, T, lengths)
        out_b = _take_steps(b.forward(_take_steps(xs, self._reversal), lengths), self._reversal)
        return self.backend.xp.concatenate([out_f, out_b], axis=2)

    def backward(self, dout):
        f, b = self.layers
        if self._reversal is None:
            raise RuntimeError("Bidirectional.backward called without a forward pass before it")
        Hf = f.hidden_size
        dx = f.backward(dout[:, :, :Hf])
        dx = dx + _take_steps(b.backward(_take_steps(dout[:, :, Hf:], self._reversal)), self._reversal)
        self._reversal = None
        return dx


def _reversal(xp, N, T, lengths):
    """(rows, steps) indices that reverse each row's first lengths[n] steps (all T without
    lengths) and leave its padding where it is; the map is its own inverse."""
    t = xp.arange(T)[None, :]
    L = xp.full((N, 1), T, dtype=np.int64) if lengths is None else lengths[:, None]
    return xp.arange(N)[:, None], xp.where(t < L, L - 1 - t, t)


def _take_steps(x, index):
    rows, steps = index
    return x[rows, steps]


class Stack:
    """Recurrent layers one above the other (each a recurrent layer or a ``Bidirectional``), with
    inverted dropout on the outputs of all but the last while ``train_flg`` is set, as PyTorch's
    ``num_layers`` and ``dropout`` apply it. ``forward(xs, lengths=None)``, ``backward(dout)``;
    ``params``/``grads`` layer by layer. ``Stack.from_torch`` builds one from a multi-layer,
    optionally bidirectional ``nn.RNN``/``LSTM``/``GRU`` state dict.
    """

    def __init__(self, layers, dropout=0.0):
        layers = list(layers)
        if not layers:
            raise ValueError("Stack: needs at least one layer")
        backend = layers[0].backend
        self.layers = layers
        self.backend, self.dtype = backend, layers[0].dtype
        self.dropouts = [TimeDropout(dropout, backend=backend) for _ in layers[:-1]]
        self.train_flg = True
        self.params = [p for layer in layers for p in layer.params]
        self.grads = [g for layer in layers for g in layer.grads]

    @classmethod
    def from_torch(cls, state_dict, cell, num_layers=1, bidirectional=False, dropout=0.0, prefix="",
                   backend=None, dtype="float32"):
        """``cell``: "rnn", "lstm" or "gru"; the rest as the PyTorch module was made."""
        layer = {c.cell.name: c for c in (TimeRNN, TimeLSTM, TimeGRU)}[cell]
        be = get_backend(backend)

        def make(k, suffix):
            params = torch_params(state_dict, k, prefix, layer.cell, suffix)
            return layer(*(be.asarray(p.astype(dtype)) for p in params), backend=be)

        return cls([Bidirectional(make(k, ""), make(k, "_reverse")) if bidirectional else make(k, "")
                    for k in range(num_layers)], dropout)

    def forward(self, xs, lengths=None):
        for k, layer in enumerate(self.layers):
            if k:
                drop = self.dropouts[k - 1]
                drop.train_flg = self.train_flg
                xs = drop.forward(xs)
            xs = layer.forward(xs, lengths)
        return xs

    def backward(self, dout):
        for k in reversed(range(len(self.layers))):
            dout = self.layers[k].backward(dout)
            if k:
                dout = self.dropouts[k - 1].backward(dout)
        return dout


def torch_params(state_dict, index=0, prefix="", cell=cells.LSTM, suffix=""):
    """The layer's parameters as host arrays from ``weight_ih_l{k}``, ``weight_hh_l{k}``,
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` (``prefix`` before each name, e.g. for a model's submodule;
    ``suffix`` after, "_reverse" for the backward direction of a bidirectional module).

    PyTorch stores (G, D) and (G, H) with the gates in rnncore's order (i, f, g, o; r, z, n),
    so the weights go in transposed; the two biases are summed for cells with one bias and
    kept apart for the GRU. Values may be torch tensors (read through ``numpy.asarray``;
    rnncore never imports torch) or arrays.
    """
    names = [f"{prefix}{n}_l{index}{suffix}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    missing = [n for n in names if n not in state_dict]
    if missing:
        raise KeyError(f"the state dict has no {', '.join(missing)}; its keys are {', '.join(state_dict)}")
    w_ih, w_hh, b_ih, b_hh = (_host_array(state_dict[n]) for n in names)
    weights = [np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T)]
    return weights + ([b_ih, b_hh] if cell.recurrent_bias else [b_ih + b_hh])


def _host_array(value):
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        value = value.detach().cpu()
    return np.asarray(value, dtype=np.float64)
