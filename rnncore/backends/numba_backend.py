"""The Numba backend: NumPy arrays, with each recurrence compiled into one call per sequence.

Kernels live in ``kernels/*_numba.py``; ``cache=True`` writes the compiled code beside
them (or under NUMBA_CACHE_DIR), so a second process starts without recompiling.
"""
import numpy as np

try:
    import numba  # noqa: F401  (a clear error names the extra if it is missing)
except ImportError as exc:
    raise ImportError(f"numba is not importable ({exc})") from exc

from .. import _kernels
from .numpy_backend import NumpyBackend

_rnn = _kernels.numba_module("rnn_numba")
_lstm = _kernels.numba_module("lstm_numba")
_training = _kernels.numba_module("training_numba")


def _c(a):
    return np.ascontiguousarray(a)


def _start(grad_T, like):
    return np.zeros_like(like) if grad_T is None else np.array(grad_T, dtype=like.dtype, order="C")


class NumbaBackend(NumpyBackend):
    name = "numba"

    def rnn_forward(self, xw, h0, Wh):
        return _rnn.rnn_forward(xw, _c(h0), _c(Wh), xw.dtype.type(1))

    def rnn_backward(self, dhs, hs, h0, Wh, dh_T=None):
        dxw = np.empty_like(dhs)
        dh = _rnn.rnn_backward(_c(dhs), hs, _c(Wh).T, _start(dh_T, h0), dxw, dhs.dtype.type(1))
        return dxw, dh

    def lstm_forward(self, xw, h0, c0, Wh):
        T, N, G = xw.shape
        hs = np.empty((T, N, G // 4), dtype=xw.dtype)
        cs = np.empty_like(hs)
        _lstm.lstm_forward(xw, _c(h0), _c(c0), _c(Wh), hs, cs, xw.dtype.type(1))
        return hs, cs

    def lstm_backward(self, dhs, hs, cs, gates, h0, c0, Wh, dh_T=None, dc_T=None):
        dh = _start(dh_T, h0)
        dc = _start(dc_T, c0)
        _lstm.lstm_backward(_c(dhs), cs, gates, _c(c0), _c(Wh).T, dh, dc, dhs.dtype.type(1))
        return dh, dc

    def embedding_scatter_add(self, dW, ids, dout):
        _training.embedding_scatter_add(dW, _c(ids), _c(dout))

    def softmax_cross_entropy(self, scores, labels):
        dscores = np.empty_like(scores)
        loss = _training.softmax_cross_entropy(_c(scores), _c(labels), dscores)
        return np.asarray(loss, dtype=scores.dtype), dscores
