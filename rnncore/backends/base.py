"""The backend seam: what every backend provides (``BackendProtocol``), and the parts they share.

A backend is an array module ``xp`` plus a table of fused whole-sequence kernels.
Everything is time-major inside: ``xw`` is ``(T, N, G)``, states are ``(N, H)``, G = gates * H
of the cell (``rnncore.cells``). Layers hoist the non-recurrent matrix products out of the
loop, so a backend runs only the recurrence, one driver for every cell:

    recurrence_forward(cell, xw, states0, Wh, bh=None, lengths=None) -> (hs, gates, saved)
        cell     rnncore.cells.Cell (RNN, LSTM, GRU): its step math runs inside the driver.
        xw       (T, N, G) C-contiguous, float32/float64: x_t Wx + b for every step.
                 OVERWRITTEN with the activated gates and returned as ``gates``.
        states0  list of (N, H), one per ``cell.states`` (h0; h0, c0); read only, any layout.
        Wh       (H, G), read only, any layout (PyTorch's weight_hh_l0.T is Fortran-ordered).
        bh       (G,) or None: the recurrent bias inside the step (``cell.recurrent_bias``:
                 the GRU's r * (h Wh_n + bh_n)); None for the other cells.
        lengths  None, or (N,) int64 array of the backend, values in [0, T] (the layer checked
                 them): row n's steps t >= lengths[n] are padding. They output zeros
                 (hs[t, n] = 0), leave the row's state as it was, and their gates and saved
                 rows are never read. The layer gathers each row's last valid state.
        hs       (T, N, H), new, C order; for ``cell.gates_are_h`` (the RNN) it *is* ``xw``.
        saved    tuple of new (T, N, H) arrays named by ``cell.saved`` (LSTM: cs; GRU: hn).
        The states after the last step are ``cell.last_states(hs, saved)``.

    recurrence_backward(cell, dhs, hs, gates, saved, states0, Wh, dstates_T=None, scale=None,
                        lengths=None) -> (dxw, dhw, dstates0)
        dhs        (T, N, H) upstream gradient, any strided view (typically the transpose of a
                   layer's batch-major gradient); read only; a backend copies it only if its
                   kernels must.
        hs, gates, saved, states0, Wh: as forward returned or took them. ``gates`` is
                   OVERWRITTEN with ``dhw`` unless ``cell.gates_are_h`` (then it is hs, which
                   the layer still needs: it is not written).
        dstates_T  list (one per state) of (N, H) or None: gradients reaching the last states
                   from later steps (None: zero). Read only.
        scale      None, or (T,) host float64 array: the gradient step t sends back to the states
                   before it (h_{t-1} through Wh and any bypass, c_{t-1}) is multiplied by
                   scale[t] (randomized truncation, d2l 9.7: ``bptt.randomized_pass``). scale[0]
                   scales what reaches the start states.
        lengths    as forward's: at a row's padded steps dxw and dhw are 0, dhs is not read, and
                   the gradients reaching the states pass through unchanged (unscaled), so
                   dstates_T reaches the row's last valid step.
        dhw        (T, N, G): gradient of the recurrent pre-activations h_{t-1} Wh (+ bh):
                   dWh = [h_{t-1}]^T dhw and dbh = 1^T dhw follow from it.
        dxw        (T, N, G) C order: gradient of xw: dWx = x^T dxw, db(x) = 1^T dxw, dx = dxw Wx^T.
                   The same array as dhw for the LSTM (both over ``gates``); a new array for the
                   RNN (gates are hs) and the GRU (whose n block differs: dhw_n = r * dxw_n).
        dstates0   list of new (N, H) arrays: gradients at the start states.
    No argument aliases another unless said so above. Overwriting in place keeps peak memory
    at what backward needs: hs, gates and the saved arrays, nothing per step beyond them.

The rest of a training step: ``embedding_scatter_add(dW, ids, dout)`` adds rows of
``dout`` into ``dW`` at ``ids``; ``softmax_cross_entropy(scores, labels)`` returns the
mean loss over labels != -1 and its gradient in one pass; ``dropout_mask``; the dense
algebra (``matmul``, ``matmuls``, ``linear``, ``sum_rows``) layers and optimizers call.
"""
import contextlib
import hashlib
import json
import reprlib
import tracemalloc
import warnings
from typing import Protocol, runtime_checkable


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

    def compile_ahead(self, cell, dtype, ids_dtype=None):
        """Start compiling, beside this process, what a training of ``cell`` in ``dtype`` (token
        ids of ``ids_dtype``) will need; a backend that compiles nothing ahead does nothing (the
        numba backend does)."""

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

    def rng_state(self):
        """The generator's state as host data (NumPy's dict), or None where it cannot be read
        back: what a checkpoint stores and a recomputed forward restores, so dropout masks repeat."""
        state = getattr(getattr(self.rng, "bit_generator", None), "state", None)
        return state if isinstance(state, dict) else None

    def set_rng_state(self, state):
        """Put the generator back where ``rng_state()`` found it. A state this backend cannot
        continue (CuPy's XORWOW, from a checkpoint made on a GPU; another generator; a malformed
        one) re-seeds deterministically from it instead, and warns (RuntimeWarning), as the cupy
        backend does: dropout masks differ from the saving run, but the same state always gives
        the same ones."""
        bg = self.rng.bit_generator
        kind = state.get("bit_generator") if isinstance(state, dict) else None
        if kind == type(bg).__name__:
            try:
                bg.state = state
                return
            except (TypeError, ValueError, KeyError, OverflowError):  # malformed: re-seeded below
                pass
        self.reseed_from(state, kind)

    def reseed_from(self, state, kind):
        """Seed the generator from a digest of ``state`` (one it cannot continue), and warn."""
        try:
            text = json.dumps(state, sort_keys=True, default=str)
        except (TypeError, ValueError, RecursionError):  # keys of mixed types, a cycle, deep nesting
            text = reprlib.repr(state)
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        warnings.warn(f"the saved random state ({kind or type(state).__name__}) cannot be continued by the "
                      f"{self.name} backend's generator ({type(self.rng.bit_generator).__name__}): re-seeded "
                      f"deterministically from it, so dropout masks differ from the run that saved it",
                      RuntimeWarning, stacklevel=3)
        self.seed(seed)

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
    def recurrence_forward(self, cell, xw, states0, Wh, bh=None, lengths=None):
        raise NotImplementedError

    def recurrence_backward(self, cell, dhs, hs, gates, saved, states0, Wh, dstates_T=None, scale=None, lengths=None):
        raise NotImplementedError

    def embedding_scatter_add(self, dW, ids, dout):
        raise NotImplementedError

    def softmax_cross_entropy(self, scores, labels):
        raise NotImplementedError


@runtime_checkable
class BackendProtocol(Protocol):
    """What a layer, model or optimizer may call on a backend (see the module docstring for the
    kernels' contracts). Every backend satisfies it; tests/test_package.py checks the
    signatures too."""

    name: str
    xp: object

    def asarray(self, a, dtype=None): ...
    def to_numpy(self, a): ...
    def owns(self, a): ...
    def synchronize(self): ...
    def matmul(self, a, b, out=None): ...
    def matmuls(self, products): ...
    def linear(self, x, W, b, out=None): ...
    def sum_rows(self, a, out): ...
    def sum_of_squares(self, arrays): ...
    def scale_(self, a, s): ...
    def axpy_(self, alpha, x, y): ...
    def seed(self, seed): ...
    def rng_state(self): ...
    def set_rng_state(self, state): ...
    def dropout_mask(self, shape, ratio, dtype): ...
    def peak_memory(self): ...
    def recurrence_forward(self, cell, xw, states0, Wh, bh=None, lengths=None): ...
    def recurrence_backward(self, cell, dhs, hs, gates, saved, states0, Wh, dstates_T=None, scale=None,
                            lengths=None): ...
    def embedding_scatter_add(self, dW, ids, dout): ...
    def softmax_cross_entropy(self, scores, labels): ...
