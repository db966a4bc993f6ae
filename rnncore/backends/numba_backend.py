"""The Numba backend: NumPy arrays, every hot loop compiled, all threads Numba's own.

Kernels live in ``kernels/``: a recurrence is one compiled call per sequence, the one driver of
``kernels/numba/recurrence.py`` made with the cell's step math (``kernels/<cell>_numba.py``,
imported when a cell first runs); the large matrix products run BLAS (Intel MKL, sequential,
on Intel CPUs where ``pip install mkl`` put it; else SciPy's OpenBLAS; RNNCORE_BLAS=mkl|scipy
chooses), one single-threaded call per thread on its share of the rows or columns. SciPy's OpenBLAS is
therefore set to one thread when this backend starts (NumPy's own BLAS is left alone): with two
thread pools spinning on two cores, each step waits on the other pool's spinning threads.
A kernel compiles on its first call with new argument types (a cell, a dtype, a direction:
only what runs); ``cache=True`` keeps the compiled code beside the kernels (or under
NUMBA_CACHE_DIR), so only the first process compiles.
"""
import functools
import os
import subprocess
import sys

import numpy as np

try:
    import numba  # noqa: F401
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS the kernels call)
except ImportError as exc:
    raise ImportError(f"numba and scipy are needed ({exc})") from exc

from .. import _kernels
from .numpy_backend import NumpyBackend

_blas = _kernels.numba_module("numba.blas")
_gemm = _kernels.numba_module("numba.gemm")
_schedule = _kernels.numba_module("numba.schedule")
_tile = _kernels.numba_module("numba.register_tile")
_training = _kernels.numba_module("training_numba")


WEIGHTS_KEPT_IN_L2 = 1 << 20  # bytes: half of a 2 MiB L2, the rest for the state, gates and prefetch


def single_threaded_scipy_blas():
    """Make SciPy's OpenBLAS single-threaded; returns the libraries changed (empty if none found)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    scipy_dir = scipy.__path__[0].rstrip("/")
    libs = [lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and (lib.filepath.startswith(scipy_dir) or "scipy.libs" in lib.filepath)]
    for lib in libs:
        lib.set_num_threads(1)
    return [lib.filepath for lib in libs]


def _c(a):
    """a in C order, writable and aligned (no copy if it is): Numba compiles a kernel once per
    array type of its arguments, so a Fortran-ordered Wh (PyTorch's weight_hh_l0.T, as it comes)
    compiled a second copy of each recurrence, ~30 s the first time, and a read-only dhs 17 s.
    The kernels pack Wh into panels anyway."""
    return a if _ready(a) else np.array(a, order="C")


@functools.cache
def _empty(dtype):
    """An empty (0,) array of the dtype for an argument not given: a bias (one compiled GEMM kernel
    for both), sequence lengths or a gradient scale where the other is given."""
    return np.empty(0, dtype=dtype)


def _lengths(lengths):
    """Sequence lengths as the recurrence kernels take them: (N,) int64 (or None, or empty)."""
    return lengths if lengths is None else _c(np.asarray(lengths, dtype=np.int64))


def _rows_by_work(lengths, threads):
    """Row bounds that give each thread about the same number of steps within the lengths (a row
    of length 0 counts one: its zeros): split evenly, a batch sorted longest first left one
    thread most of the work."""
    work = np.cumsum(np.maximum(lengths, 1))
    cuts = np.searchsorted(work, work[-1] * np.arange(1, threads) / threads) + 1
    return np.concatenate(([0], np.minimum(cuts, len(lengths)), [len(lengths)])).astype(np.int64)


COMPILE_AHEAD_WAIT_S = 120


def _backward_cached(cell, dtype):
    """Whether Numba's cache holds the cell's backward driver for ``dtype`` (any variant)."""
    cache = getattr(_kernels.numba_module(f"{cell.name}_numba").backward, "_cache", None)
    if cache is None:  # not a compiled kernel (NUMBA_DISABLE_JIT): nothing to compile ahead
        return True
    return any(dtype.name in str(key) for key in cache._cache_file._load_index())


def compile_here(cell_name, dtype_name, ids_dtype_name=None):
    """Compile (into the cache) the kernels a layer's backward, the loss, the embedding's
    gradient (for ids of ``ids_dtype_name``) and an SGD step call, with the argument types they
    get there, in the order a training needs them: ``NumbaBackend.compile_ahead`` runs this in a
    process of its own. The arrays' forward pass is the NumPy backend's: no forward driver here."""
    from ..cells import CELLS

    cell, dtype = CELLS[cell_name], np.dtype(dtype_name)
    be, rng = NumbaBackend(), np.random.default_rng(0)

    def arrays(*shapes):
        return [rng.standard_normal(s).astype(dtype) for s in shapes]

    T, N, D, H = 3, 4, 5, 6
    G = cell.gates * H
    xw, Wh, dhs, bh = arrays((T, N, G), (H, G), (N, T, H), (G,))
    states0 = arrays(*[(N, H)] * len(cell.states))
    x, dxw, h_ones, dhw, dWx, dWh, Wx, dx = arrays((T * N, D), (T * N, G), (T * N, H + 1), (T * N, G), (D, G),
                                                    (H + 1, G), (D, G), (T * N, D))
    ids = None if ids_dtype_name is None else rng.integers(0, D, T * N).astype(ids_dtype_name)
    if ids is not None:  # the loss comes before the backward pass
        be.softmax_cross_entropy(dxw, ids)
    hs, gates, saved = NumpyBackend().recurrence_forward(cell, xw, states0, Wh, bh if cell.recurrent_bias else None)
    be.recurrence_backward(cell, dhs.transpose(1, 0, 2), hs, gates, saved, states0, Wh)  # dhs as a layer passes it
    be.matmuls([(x.T, dxw, dWx), (h_ones.T, dhw, dWh), (dxw, Wx.T, dx)])  # as Recurrent._segment_grads
    be.sum_rows(dxw, arrays((G,))[0])
    if ids is not None:
        be.embedding_scatter_add(dWx, ids, dxw)
    be.axpy_(-0.1, dWx, Wx)


def _ready(a):
    """Whether a goes to a kernel as it is: C order, writable, aligned (see ``_c``)."""
    return a.flags.c_contiguous and a.flags.writeable and a.flags.aligned


class NumbaBackend(NumpyBackend):
    name = "numba"

    def __init__(self):
        super().__init__()
        self.blas_libraries = single_threaded_scipy_blas()
        self.blas = _blas.bind()  # the library the GEMM kernels call
        self._splits = {}
        self._work_split = (None, None)  # (lengths, threads) and their row bounds: the last batch's
        self._cells = {}
        self._ahead = {}  # (cell, dtype) -> the process compiling ahead for them

    def compile_ahead(self, cell, dtype, ids_dtype=None):
        """Compile, in a process of its own, what a training of ``cell`` needs after its forward
        recurrence (``compile_here``: the backward driver, the gradient GEMMs, with ``ids_dtype``
        the softmax and the embedding's gradient, the column sum, the optimizer's update) into
        Numba's cache, while this process compiles the forward ones; its first backward waits
        for that process and then loads them (racing it, each compiled some of them again).
        Numba compiles on one core: on two, a cold first iteration of an LSTM's training took
        12-15 s instead of 19-22. Only where the cache lacks the cell's backward driver for the
        dtype; RNNCORE_COMPILE_AHEAD=0 turns it off."""
        dtype = np.dtype(dtype)
        key = (cell.name, dtype.name, None if ids_dtype is None else np.dtype(ids_dtype).name)
        if key[:2] in self._ahead or os.environ.get("RNNCORE_COMPILE_AHEAD") == "0" or _backward_cached(cell, dtype):
            return
        # The child imports what this process would (its sys.path, not the working folder that
        # `python -c` puts first) and ends with this process (Linux: a parent-death signal).
        path = [p or os.getcwd() for p in sys.path]
        code = (f"import ctypes, os, sys; sys.path[:] = {path!r}\n"
                f"if sys.platform.startswith('linux'): ctypes.CDLL(None).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM\n"
                f"if os.getppid() == {os.getpid()}:\n"
                f"    from rnncore.backends.numba_backend import compile_here; compile_here{key!r}")
        self._ahead[key[:2]] = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # dense algebra ---------------------------------------------------------------------
    @staticmethod
    def _blas_product(a, b, out=None):
        """Whether the GEMM kernels take out = a @ b: 2-D floats of one dtype whose inner
        dimensions agree, and out (if given) of the product's shape and dtype, apart from a
        and b. Anything else goes to NumPy, which computes it or raises as it always does."""
        return (a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype and a.dtype.kind == "f" and a.shape[1] == b.shape[0]
                and (out is None or (out.shape == (a.shape[0], b.shape[1]) and out.dtype == a.dtype
                                     and not np.may_share_memory(out, a) and not np.may_share_memory(out, b))))

    @staticmethod
    def _row_major(out):
        """Whether BLAS can write out in place: rows at a stride of its width (flags.c_contiguous
        alone allows any stride on a dimension of length 1, which BLAS takes as the leading one)."""
        return out.strides == (out.shape[1] * out.itemsize, out.itemsize)

    def _gemm(self, a, b, out, bias=None):
        """out = a @ b (+ bias) by the GEMM kernel, through a buffer if out has another layout."""
        out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype) if out is None else out
        target = out if self._row_major(out) else np.empty(out.shape, dtype=out.dtype)
        bias = _empty(a.dtype) if bias is None else _c(bias)
        _gemm.gemm(*self._product(a, b, target), bias, numba.get_num_threads())
        if target is not out:
            out[...] = target
        return out

    def matmul(self, a, b, out=None):
        return self._gemm(a, b, out) if self._blas_product(a, b, out) else np.matmul(a, b, out=out)

    def matmuls(self, products):
        """Three products (a recurrent layer's backward) in one parallel region (``gemm_three``);
        else one by one, as also when an out is another product's operand (in order, as NumPy)."""
        if not (len(products) == 3 and len({a.dtype for a, _, _ in products}) == 1
                and all(self._blas_product(a, b, out) and self._row_major(out) for a, b, out in products)
                and self._independent(products)):
            return super().matmuls(products)
        _gemm.gemm_three(*(self._product(a, b, out) for a, b, out in products), numba.get_num_threads())

    @staticmethod
    def _independent(products):
        """Whether no out shares a buffer with another array of the products. Compared by the
        array that owns the memory (a check of actual overlap took ~1 us a pair, 20 us here):
        disjoint views of one buffer count as shared, which only sends them one by one."""
        def owner(a):
            return id(a if a.base is None else a.base)

        outs = {owner(out) for _, _, out in products}
        return len(outs) == len(products) and not outs.intersection(owner(x) for a, b, _ in products for x in (a, b))

    def linear(self, x, W, b, out=None):
        if not (self._blas_product(x, W, out) and b.shape == (W.shape[1],) and b.dtype == x.dtype):
            return super().linear(x, W, b, out)
        return self._gemm(x, W, out, b)

    @staticmethod
    def _product(a, b, out):
        """(a, ta, b, tb, out) as the GEMM kernels take out = a @ b: each operand C-ordered, and
        whether it holds the transpose of its matrix. A Fortran-ordered operand (a transposed
        view) goes to BLAS as it lies, anything else not C-ordered as a copy."""
        ta = a.flags.f_contiguous and not a.flags.c_contiguous
        tb = b.flags.f_contiguous and not b.flags.c_contiguous
        return _c(a.T if ta else a), ta, _c(b.T if tb else b), tb, out

    # recurrences -----------------------------------------------------------------------
    def _split(self, N, H, Wh, lengths=None):
        """How the threads share a recurrence step: (row bounds, unit bounds), one of them a single range.

        By batch rows when Wh fits in a core's L2 cache (each core then keeps all of Wh hot and
        touches only its own rows: no cache line ping-pongs between cores, which at H=100 made
        two threads slower than one); else by hidden units, so each core streams only its share
        of Wh from L3 every step. Kept per shape: worked out afresh it took 25 us of a 4 ms
        layer step (H=100), Python run between kernels being slow on cold caches."""
        threads = numba.get_num_threads()
        by_rows = Wh.nbytes <= WEIGHTS_KEPT_IN_L2 and N >= threads > 1
        key = (N, H, threads, by_rows)
        if key not in self._splits:
            self._splits[key] = ((_schedule.even_chunks(N, threads), _schedule.even_chunks(H, 1)) if by_rows
                                 else (_schedule.even_chunks(N, 1), _schedule.line_chunks(H, threads)))
        rows, units = self._splits[key]
        if by_rows and lengths is not None and lengths.size:
            key = (lengths.tobytes(), threads)  # forward's, then backward's for the same batch
            if self._work_split[0] != key:
                self._work_split = (key, _rows_by_work(lengths, threads))
            rows = self._work_split[1]
        return rows, units

    @staticmethod
    def _sequence(x):
        """A time-major (T, N, ...) argument as the kernels read it: (C-ordered array, batch_major).
        The transposed view of a batch-major (N, T, ...) array goes as that array, so a layer's
        upstream gradient is read where it lies (a transposing copy was 2% of an LSTM step at H=100);
        anything else as ``_c`` makes it."""
        batch = x.transpose((1, 0) + tuple(range(2, x.ndim)))
        if not x.flags.c_contiguous and _ready(batch):
            return batch, True
        return _c(x), False

    def _cell_kernels(self, cell, dtype):
        """The cell's module, with its compiled (forward, backward) drivers: imported when the cell
        first runs; the product its drivers call bound for the dtype (``bind_product``)."""
        if cell.name not in self._cells:
            self._cells[cell.name] = _kernels.numba_module(f"{cell.name}_numba")
        _tile.bind_product(dtype)
        return self._cells[cell.name]

    def recurrence_forward(self, cell, xw, states0, Wh, bh=None, lengths=None):
        T, N, G = xw.shape
        H = G // cell.gates
        hs = xw if cell.gates_are_h else np.empty((T, N, H), dtype=xw.dtype)
        saved = tuple(np.empty((T, N, H), dtype=xw.dtype) for _ in cell.saved)
        bh, lengths = None if bh is None else _c(bh), _lengths(lengths)
        self._cell_kernels(cell, xw.dtype).forward(xw, tuple(_c(s) for s in states0), _c(Wh), bh, hs, saved,
                                                   lengths, *self._split(N, H, Wh, lengths))
        return hs, xw, saved

    def recurrence_backward(self, cell, dhs, hs, gates, saved, states0, Wh, dstates_T=None, scale=None, lengths=None):
        ahead = self._ahead.pop((cell.name, hs.dtype.name), None)
        if ahead is not None:  # it compiles what comes now: wait, then load (not compile it twice)
            try:
                ahead.wait(timeout=COMPILE_AHEAD_WAIT_S)
            except subprocess.TimeoutExpired:  # stuck (it takes ~10 s): compile here instead
                ahead.kill()
                ahead.wait()
        _, N, H = hs.shape
        dstates = tuple(self.initial_grad(g, s) for g, s in zip(dstates_T or [None] * len(cell.states), states0))
        # a new dxw where the gates are h (not to be written) or where its n block differs from dhw's (the GRU)
        dxw = np.empty(gates.shape, dtype=gates.dtype) if cell.gates_are_h or cell.recurrent_bias else gates
        dhw = dxw if cell.gates_are_h else gates
        if scale is not None or lengths is not None:  # both arrays, either may be empty: one more compiled kernel
            scale = _empty(dhw.dtype) if scale is None else _c(np.asarray(scale, dtype=dhw.dtype))
            lengths = _empty(np.dtype(np.int64)) if lengths is None else _lengths(lengths)
        self._cell_kernels(cell, dhw.dtype).backward(*self._sequence(dhs), _c(hs), tuple(_c(s) for s in saved),
                                                     tuple(_c(s) for s in states0), _c(Wh), dhw, dxw, dstates, scale,
                                                     lengths, *self._split(N, H, Wh, lengths))
        return dxw, dhw, list(dstates)

    # the rest of a training step --------------------------------------------------------
    def embedding_scatter_add(self, dW, ids, dout):
        _training.embedding_scatter_add(dW, _c(ids), _c(dout), numba.get_num_threads())

    def softmax_cross_entropy(self, scores, labels):
        dscores = np.empty_like(scores)
        loss = _training.softmax_cross_entropy(_c(scores), _c(labels), dscores)
        return np.asarray(loss, dtype=scores.dtype), dscores

    def dropout_mask(self, shape, ratio, dtype):
        mask = self.rng.random(shape, dtype=dtype)
        _training.keep_mask(mask.reshape(-1), dtype.type(ratio), dtype.type(1.0 / (1.0 - ratio)))
        return mask

    def sum_rows(self, a, out):
        if not (a.flags.c_contiguous and out.flags.c_contiguous):
            return super().sum_rows(a, out)
        _training.sum_rows(a, out, numba.get_num_threads())
        return out

    def sum_of_squares(self, arrays):
        return sum(_training.sum_of_squares(_c(a).reshape(-1)) for a in arrays)

    def scale_(self, a, s):
        if not a.flags.c_contiguous:
            return super().scale_(a, s)
        _training.scale_(a.reshape(-1), a.dtype.type(s))

    def axpy_(self, alpha, x, y):
        if not y.flags.c_contiguous:
            return super().axpy_(alpha, x, y)
        _training.axpy(y.dtype.type(alpha), _c(x).reshape(-1), y.reshape(-1))
