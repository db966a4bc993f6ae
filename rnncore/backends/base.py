"""The backend seam: what every backend provides, and the parts they share.

A backend is an array module ``xp`` plus a table of fused whole-sequence kernels.
Everything is time-major inside: ``xw`` is ``(T, N, G)``, states are ``(N, H)``.
Layers hoist the non-recurrent matrix products out of the loop, so a kernel runs
only the recurrence:

    rnn_forward(xw, h0, Wh) -> hs
        h_t = tanh(xw_t + h_{t-1} @ Wh).  ``xw`` is overwritten and returned as ``hs``.
    rnn_backward(dhs, hs, h0, Wh, dh_T) -> (dxw, dh0)
        ``dxw`` is the gradient of the pre-activations; ``dWh = [h0, hs[:-1]]^T dxw``
        is left to one GEMM in the layer.
    lstm_forward(xw, h0, c0, Wh) -> (hs, cs)
        a_t = xw_t + h_{t-1} @ Wh split into gates i, f, g, o (cuDNN/PyTorch order);
        i, f, o = sigmoid, g = tanh; c_t = f*c_{t-1} + i*g; h_t = o*tanh(c_t).
        ``xw`` is overwritten with the activated gates (the saved state for backward).
    lstm_backward(dhs, hs, cs, gates, h0, c0, Wh, dh_T, dc_T) -> (dh0, dc0)
        ``gates`` is overwritten with the gradient of the pre-activations ``dxw``.

``dh_T``/``dc_T`` are the gradients arriving at the last state from later steps
(None means zero). ``dhs`` (T, N, H) may be any strided view, typically the transpose of a
layer's batch-major upstream gradient; a backend copies it only if its kernels must.
Overwriting in place keeps peak memory at what backward needs.

The rest of a training step: ``embedding_scatter_add(dW, ids, dout)`` adds rows of
``dout`` into ``dW`` at ``ids``; ``softmax_cross_entropy(scores, labels)`` returns the
mean loss over labels != -1 and its gradient in one pass; ``dropout_mask``.
"""
import contextlib
import tracemalloc


class BackendError(RuntimeError):
    """A backend could not do what was asked."""


class BackendNotAvailable(ImportError):
    """The backend's packages or device are missing; the message says what to install."""


class MemoryReport:
    """Filled in when a ``peak_memory()`` block ends: ``peak_bytes`` allocated above the start."""

    peak_bytes = 0

    def __repr__(self):
        return f"MemoryReport(peak_bytes={self.peak_bytes})"


class Backend:
    """Base class: array conversion, randomness and memory tracking over ``self.xp``."""

    name = "base"
    xp = None

    def __init__(self):
        self.seed(None)

    def __repr__(self):
        return f"<rnncore backend {self.name!r}>"

    # arrays ----------------------------------------------------------------
    def asarray(self, a, dtype=None):
        """Move host data (or an array of this backend) to this backend."""
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        """Return ``a`` as a host NumPy array."""
        import numpy

        return numpy.asarray(a)

    def owns(self, a):
        """True if ``a`` is an array of this backend."""
        return isinstance(a, self.xp.ndarray)

    def synchronize(self):
        """Wait for queued device work; a no-op on the CPU."""

    def initial_grad(self, grad_T, like):
        """The gradient entering the last state: zeros for None, else a contiguous copy (kernels
        update it in place)."""
        xp = self.xp
        return xp.zeros_like(like) if grad_T is None else xp.array(grad_T, dtype=like.dtype, order="C")

    # dense algebra: what layers and optimizers call, so a backend can run them its own way
    def matmul(self, a, b, out=None):
        """a @ b for 2-D arrays (transposed views welcome), into ``out`` if given."""
        return self.xp.matmul(a, b, out=out)

    def matmuls(self, products):
        """out = a @ b for each (a, b, out) of ``products``, in order; a backend may run them side
        by side where no out is another's operand."""
        for a, b, out in products:
            self.matmul(a, b, out=out)

    def linear(self, x, W, b, out=None):
        """x @ W + b."""
        out = self.matmul(x, W, out)
        out += b
        return out

    def sum_rows(self, a, out):
        """out = a.sum(axis=0) for a 2-D a (bias gradients)."""
        return a.sum(axis=0, out=out)

    def sum_of_squares(self, arrays):
        """Sum of the squared entries of all arrays, as a 0-d array (no device sync)."""
        return sum(self.xp.vdot(a, a) for a in arrays)

    def scale_(self, a, s):
        """a *= s in place (s: a number or a 0-d array)."""
        a *= s

    def axpy_(self, alpha, x, y):
        """y += alpha * x in place."""
        y += alpha * x

    # randomness ------------------------------------------------------------
    def seed(self, seed):
        """Reset the backend's random generator (dropout masks, initializers)."""
        self.rng = self.xp.random.default_rng(seed)

    def dropout_mask(self, shape, ratio, dtype):
        """Keep-mask scaled by 1/(1-ratio): multiply activations by it in forward and backward."""
        keep = self.rng.random(shape, dtype=dtype) >= ratio
        return keep.astype(dtype) * dtype.type(1.0 / (1.0 - ratio))

    # memory ----------------------------------------------------------------
    @contextlib.contextmanager
    def peak_memory(self):
        """Report the peak bytes allocated inside the block above what was live at its start.

        NumPy reports its buffers to tracemalloc, so this sees host arrays (and Python
        objects). Tracing slows Python down: measure memory and time in separate runs.
        """
        report = MemoryReport()
        started_here = not tracemalloc.is_tracing()
        if started_here:
            tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        try:
            yield report
        finally:
            report.peak_bytes = max(0, tracemalloc.get_traced_memory()[1] - start)
            if started_here:
                tracemalloc.stop()

    # kernels (see the module docstring) -------------------------------------
    def rnn_forward(self, xw, h0, Wh):
        raise NotImplementedError

    def rnn_backward(self, dhs, hs, h0, Wh, dh_T=None):
        raise NotImplementedError

    def lstm_forward(self, xw, h0, c0, Wh):
        raise NotImplementedError

    def lstm_backward(self, dhs, hs, cs, gates, h0, c0, Wh, dh_T=None, dc_T=None):
        raise NotImplementedError

    def embedding_scatter_add(self, dW, ids, dout):
        raise NotImplementedError

    def softmax_cross_entropy(self, scores, labels):
        raise NotImplementedError
