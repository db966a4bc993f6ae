"""The CuPy backend: CUDA through CuPy, the elementwise work of each step fused by hand.

Kernels are CUDA C templates in ``kernels/*.cu`` compiled by ``cupy.RawModule`` on first
use (CuPy caches the binaries on disk). One recurrence driver serves every cell: the kernels
of ``kernels/recurrence.cu`` are templates over the cell (``kernels/cells.cuh``), and how a
step runs (a cuBLAS GEMM plus the cell's gate kernel, or one fused kernel) is a strategy the
backend picks once (``CublasSteps``, ``FusedSteps``). Nothing here reads a value back to the
host, so a training iteration never waits on the device.

TF32 is process-wide (CuPy keeps one GEMM compute type per dtype for the whole process), and
so is the rule: the first CupyBackend of a process (per CuPy module) sets it, from its
``tf32`` argument, else RNNCORE_TF32=1, else strict float32 whatever CUPY_TF32 says. A later
instance changes it only when given ``tf32=`` explicitly; ``set_tf32`` changes it for every
instance, and every instance's ``.tf32`` reads the current setting.
"""
import base64
import contextlib
import importlib
import itertools
import os

import numpy as np

from .. import _kernels
from .base import Backend, BackendNotAvailable, MemoryReport

THREADS = 256  # threads per block; softmax_cross_entropy needs SOFTMAX_THREADS in training.cu to match
STEP_WARPS = 4  # warps (hidden units) per block of a fused step kernel
SHARED_LIMIT = 48 * 1024  # dynamic shared memory a block may use without opting in
NULL = np.uint64(0)  # a null pointer argument (CuPy passes None as 0xffffffff, not as NULL)
# What a cell's per-unit carried gradient (the kernels' ``carry``) is: "state", the gradient of
# its second state (the LSTM's dc: dstates_T[1] in, dstates0[1] out); "bypass", the part of the
# gradient reaching h_{t-1} that skips Wh (the GRU's d * z: from zero, added to dh_0 at the
# end); None, nothing (the RNN).
CARRY = {"rnn": None, "lstm": "state", "gru": "bypass"}


class CupyBackend(Backend):
    """``recurrence``: how each step of a recurrence runs.

    ``"cublas"`` (the default): one cuBLAS GEMM for the recurrent product, then one fused
    kernel for the cell's gate math, per step and direction. ``"fused"``: one kernel per step
    does both (``step_*`` in kernels/recurrence.cu), so no cuBLAS call sits inside the loop.
    The fused path is tested on the CPU emulator but not yet timed on a GPU; it becomes the
    default once it has been measured faster there. ``RNNCORE_CUPY_RECURRENCE`` sets it too.
    """

    name = "cupy"

    def __init__(self, cupy_module=None, recurrence=None, tf32=None):
        cp = cupy_module or importlib.import_module("cupy")
        self.recurrence = recurrence or os.environ.get("RNNCORE_CUPY_RECURRENCE", "cublas")
        if self.recurrence not in ("cublas", "fused"):
            raise ValueError(f"recurrence must be 'cublas' or 'fused', got {self.recurrence!r}")
        try:
            count = cp.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDA driver missing or broken
            raise BackendNotAvailable(f"cupy is installed but no CUDA device answers ({exc})") from exc
        if count < 1:
            raise BackendNotAvailable("cupy is installed but no CUDA device answers")
        self.xp = cp
        self._steps = (FusedSteps if self.recurrence == "fused" else CublasSteps)(self)
        self._modules = {}
        self._functions = {}
        sms = cp.cuda.Device().attributes["MultiProcessorCount"]
        self._max_blocks = 32 * sms
        linalg = self._linalg()
        if tf32 is not None:
            self.set_tf32(tf32)
        elif id(linalg) not in _TF32_CHOSEN:  # the process's first backend: strict unless asked
            self.set_tf32(os.environ.get("RNNCORE_TF32") == "1")
        super().__init__()

    def _linalg(self):
        """CuPy's GEMM settings module (``cupy._core._routines_linalg``; the CPU stand-in has its own)."""
        return importlib.import_module(f"{self.xp.__name__}._core._routines_linalg")

    @property
    def tf32(self):
        """Whether cuBLAS may round float32 GEMM inputs to TF32: CuPy's current, process-wide setting."""
        linalg = self._linalg()
        return linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32

    def set_tf32(self, on):
        """Let cuBLAS round float32 GEMM inputs to TF32 (faster, about 1e-3 relative error), or
        not. Process-wide: it changes every CupyBackend's GEMMs and ``.tf32`` (see the module
        docstring for who sets it first). The recurrences' own kernels are always float32."""
        linalg = self._linalg()
        mode = linalg.COMPUTE_TYPE_TF32 if on else linalg.COMPUTE_TYPE_FP32
        linalg.set_compute_type(np.float32, mode)
        _TF32_CHOSEN.add(id(linalg))

    # randomness --------------------------------------------------------------
    def rng_state(self):
        """The generator's state as host data: CuPy's XORWOW keeps its cuRAND states in device
        memory (``bit_generator.state()`` is a method returning their address), so this copies
        them back, once per checkpoint."""
        bg = self.rng.bit_generator
        raw = self.xp.asnumpy(bg._state)
        return {"bit_generator": f"cupy.{type(bg).__name__}", "size": int(bg._size),
                "state": base64.b64encode(raw.tobytes()).decode("ascii")}

    def set_rng_state(self, state):
        """Put the generator back where ``rng_state()`` found it. A state this backend cannot
        continue (NumPy's, from a checkpoint made on the CPU; another generator or size) re-seeds
        deterministically from it instead, and warns: dropout masks differ from the saving run."""
        bg = self.rng.bit_generator
        kind = state.get("bit_generator") if isinstance(state, dict) else None
        if kind == f"cupy.{type(bg).__name__}" and state.get("size") == int(bg._size):
            try:
                raw = np.frombuffer(base64.b64decode(state["state"], validate=True), dtype=np.int8)
            except (KeyError, TypeError, ValueError):  # malformed (binascii.Error is a ValueError)
                raw = None
            if raw is not None and raw.size == bg._state.size:
                bg._state[...] = self.xp.asarray(raw)
                return
        self.reseed_from(state, kind)

    # arrays ----------------------------------------------------------------
    def to_numpy(self, a):
        return self.xp.asnumpy(a)

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

    @contextlib.contextmanager
    def peak_memory(self):
        """Peak bytes taken from CuPy's pool inside the block, above what was in use at its start:
        only blocks allocated inside it count (freeing an older one gives nothing back), and
        blocks nest (each hook has its own name: CuPy refuses two hooks of one name)."""
        hook = _peak_hook(self.xp)
        report = MemoryReport()
        with hook:
            try:
                yield report
            finally:
                self.synchronize()
                report.peak_bytes = hook.peak

    # kernel plumbing -------------------------------------------------------
    def _function(self, filename, kernel, dtype, cell=None):
        """The compiled kernel (for a cell, if it is a template over one), loaded on the current
        device (a function loaded on one GPU cannot be launched on another)."""
        device = self.xp.cuda.Device().id
        dtype = np.dtype(dtype).name
        cell = getattr(cell, "name", cell)
        key = (device, filename, kernel, dtype, cell)
        if key not in self._functions:
            if (device, filename) not in self._modules:
                self._modules[device, filename] = self.xp.RawModule(
                    code=_kernels.cuda_module_source(filename),
                    options=("-std=c++17",),
                    name_expressions=_kernels.cuda_name_expressions(filename),
                )
            name = _kernels.cuda_name_expression(kernel, dtype, cell)
            self._functions[key] = self._modules[device, filename].get_function(name)
        return self._functions[key]

    def _launch(self, fn, size, args):
        """One thread per item of a grid-stride kernel, up to the block cap."""
        blocks = max(1, min(-(-size // THREADS), self._max_blocks))
        fn((blocks,), (THREADS,), args)

    def _launch_warps(self, fn, units, N, columns, dtype, args):
        """A kernel whose warps own one unit each and keep columns * N values of shared memory
        per warp: up to STEP_WARPS warps a block, fewer if N is large (FusedSteps.fits)."""
        itemsize = np.dtype(dtype).itemsize
        warps = max(1, min(STEP_WARPS, SHARED_LIMIT // (columns * N * itemsize)))
        fn((-(-units // warps),), (warps * 32,), args, shared_mem=warps * columns * N * itemsize)

    # recurrences: one driver for every cell (base.py has the contract) ----------
    def recurrence_forward(self, cell, xw, states0, Wh, bh=None, lengths=None):
        cp = self.xp
        T, N, G = xw.shape
        H = G // cell.gates
        hs = xw if cell.gates_are_h else cp.empty((T, N, H), dtype=xw.dtype)
        saved = tuple(cp.empty((T, N, H), dtype=xw.dtype) for _ in cell.saved)  # the kernels keep one at most
        states = [cp.ascontiguousarray(s) for s in states0]
        bh = NULL if bh is None else cp.ascontiguousarray(bh)
        lengths = NULL if lengths is None else cp.ascontiguousarray(lengths, dtype=cp.int64)

        def steps():  # per step: h_{t-1} and the kernel arguments after the strategy's own first
            for t in range(T):
                h_prev, c_prev = _states_before(cell, t, hs, saved, states)
                yield h_prev, (xw[t], bh, h_prev, c_prev, NULL if cell.gates_are_h else hs[t],
                               saved[0][t] if saved else NULL, lengths, np.int32(t), np.int32(N), np.int32(H))

        self._steps.forward(cell, steps(), Wh, N, xw.dtype)
        return hs, xw, saved

    def recurrence_backward(self, cell, dhs, hs, gates, saved, states0, Wh, dstates_T=None, scale=None, lengths=None):
        cp = self.xp
        T, N, G = gates.shape
        H = G // cell.gates
        dtype = gates.dtype
        states = [cp.ascontiguousarray(s) for s in states0]
        dstates_T = dstates_T or [None] * len(cell.states)
        dh = self.initial_grad(dstates_T[0], states[0])  # the strategy may overwrite it
        padded = lengths is not None
        dh_T = dh.copy() if padded else NULL  # read at each row's last live step
        lengths = cp.ascontiguousarray(lengths, dtype=cp.int64) if padded else NULL
        carries = CARRY[cell.name]
        carry = (self.initial_grad(dstates_T[1], states[1]) if carries == "state"
                 else cp.zeros((N, H), dtype=dtype) if carries == "bypass" else NULL)
        # the GRU's dxw differs from dhw (n block: dhw_n = r * dxw_n); the RNN's gates are hs
        dxw = cp.empty(gates.shape, dtype=dtype) if cell.gates_are_h or cell.recurrent_bias else gates
        dhw = dxw if cell.gates_are_h else gates
        if any(s % dhs.itemsize for s in dhs.strides):  # not a whole number of elements: copy
            dhs = cp.ascontiguousarray(dhs)
        dhs_strides = tuple(np.int64(s // dhs.itemsize) for s in dhs.strides[1:])
        factors = [dtype.type(1 if scale is None or t == T else scale[t]) for t in range(T + 1)]

        def steps():  # per step: dhw_t and the kernel arguments after the strategy's own first
            for t in reversed(range(T)):
                yield dhw[t], (gates[t], NULL if dxw is gates else dxw[t], factors[t + 1], dh_T, dhs[t], *dhs_strides,
                               *_states_before(cell, t, hs, saved, states), saved[0][t] if saved else NULL, carry,
                               lengths, np.int32(t), np.int32(N), np.int32(H))

        dh = self._steps.backward(cell, steps(), Wh, dh, N, dtype)  # dhw_0 Wh^T, a new array
        if carries == "bypass":
            dh += carry
        dstates0 = [dh, carry] if carries == "state" else [dh]
        if padded:  # a row of length 0 passes the given gradients on unscaled
            live = (lengths > 0)[:, None]
            dstates0 = [cp.where(live, d * factors[0], given) for d, given in zip(dstates0, (dh_T, carry))]
        elif scale is not None:
            for d in dstates0:
                d *= factors[0]
        return dxw, dhw, dstates0

    # the rest of a training step ------------------------------------------
    def embedding_scatter_add(self, dW, ids, dout):
        cp = self.xp
        if not dW.flags.c_contiguous:  # the kernel indexes dW row-major
            dense = cp.zeros(dW.shape, dtype=dW.dtype)
            self.embedding_scatter_add(dense, ids, dout)
            dW += dense
            return
        M, D = dout.shape
        fn = self._function("training.cu", "embedding_scatter_add", dW.dtype)
        ids = cp.ascontiguousarray(ids, dtype=cp.int32)
        # ids outside [0, V) (possible only under trusted_ids) are skipped by the kernel
        self._launch(fn, M * D, (dW, ids, cp.ascontiguousarray(dout), np.int64(M), np.int32(D), np.int64(dW.shape[0])))

    def dropout_mask(self, shape, ratio, dtype):
        mask = self.rng.random(shape, dtype=dtype)
        fn = self._function("training.cu", "keep_mask", mask.dtype)
        self._launch(fn, mask.size, (mask, dtype.type(ratio), dtype.type(1.0 / (1.0 - ratio)), np.int64(mask.size)))
        return mask

    def axpy_(self, alpha, x, y):
        if not (y.flags.c_contiguous and x.shape == y.shape and x.dtype == y.dtype):
            return super().axpy_(alpha, x, y)
        fn = self._function("training.cu", "axpy", y.dtype)
        self._launch(fn, y.size, (y, self.xp.ascontiguousarray(x), y.dtype.type(alpha), np.int64(y.size)))

    def softmax_cross_entropy(self, scores, labels):
        cp = self.xp
        M, V = scores.shape
        fn = self._function("training.cu", "softmax_cross_entropy", scores.dtype)
        scores = cp.ascontiguousarray(scores)
        labels = cp.ascontiguousarray(labels, dtype=cp.int32)
        # labels outside [-1, V) (possible only under trusted_ids) are skipped like -1, by the
        # kernel and in the count; a 0-d device array: no sync
        count = cp.asarray(((labels >= 0) & (labels < V)).sum(dtype=cp.int32))
        dscores = cp.empty_like(scores)
        row_loss = cp.empty(M, dtype=scores.dtype)
        fn((M,), (THREADS,), (scores, labels, count, dscores, row_loss, np.int32(V)))
        return row_loss.sum(), dscores


class CublasSteps:
    """How a recurrence steps: per step and direction, one cuBLAS GEMM for the recurrent
    product (h_{t-1} Wh, or dhw_{t+1} Wh^T), then the cell's gate kernel."""

    def __init__(self, backend):
        self.backend = backend

    def forward(self, cell, steps, Wh, N, dtype):
        """steps: (h_{t-1}, the rest of gates_forward's arguments) for t = 0, 1, ..."""
        be, cp = self.backend, self.backend.xp
        fn = be._function("recurrence.cu", "gates_forward", dtype, cell)
        rec = cp.empty((N, Wh.shape[1]), dtype=dtype)
        for h_prev, args in steps:
            cp.matmul(h_prev, Wh, out=rec)
            be._launch(fn, h_prev.size, (rec, *args))

    def backward(self, cell, steps, Wh, dh, N, dtype):
        """steps: (dhw_t, the rest of gates_backward's arguments) for t = T-1, ..., 0; dh: the
        gradient given at h_T, overwritten. Returns dhw_0 Wh^T, in dh."""
        be, cp = self.backend, self.backend.xp
        fn = be._function("recurrence.cu", "gates_backward", dtype, cell)
        for dhw_t, args in steps:
            be._launch(fn, dh.size, (dh, *args))
            cp.matmul(dhw_t, Wh.T, out=dh)
        return dh


class FusedSteps(CublasSteps):
    """One kernel per step and direction computes the recurrent product and the gate math
    (``step_*``); where its shared memory would not fit, a direction steps with cuBLAS."""

    @staticmethod
    def fits(N, columns, dtype):
        """A fused step keeps columns * N values per warp in shared memory (forward: one column
        per gate; backward: one): beyond the limit (N in the thousands) cuBLAS steps instead."""
        return columns * N * np.dtype(dtype).itemsize <= SHARED_LIMIT

    def forward(self, cell, steps, Wh, N, dtype):
        if not self.fits(N, cell.gates, dtype):
            return super().forward(cell, steps, Wh, N, dtype)
        be = self.backend
        fn = be._function("recurrence.cu", "step_forward", dtype, cell)
        WhT = be.xp.ascontiguousarray(Wh.T)
        H = Wh.shape[0]
        for _, args in steps:
            be._launch_warps(fn, H, N, cell.gates, dtype, (WhT, *args))

    def backward(self, cell, steps, Wh, dh, N, dtype):
        if not self.fits(N, 1, dtype):
            return super().backward(cell, steps, Wh, dh, N, dtype)
        be = self.backend
        fn = be._function("recurrence.cu", "step_backward", dtype, cell)
        Wh = be.xp.ascontiguousarray(Wh)
        H, G = Wh.shape
        nxt, is_dhw = dh, np.int32(0)  # step T-1 reads the given gradient as it is
        for dhw_t, args in steps:
            be._launch_warps(fn, H, N, 1, dtype, (nxt, is_dhw, Wh, *args))
            nxt, is_dhw = dhw_t, np.int32(1)
        out = be.xp.empty((N, H), dtype=dtype)
        dot = be._function("recurrence.cu", "recurrent_dot", dtype)
        be._launch_warps(dot, H, N, 1, dtype, (out, nxt, Wh, np.int32(N), np.int32(G), np.int32(H)))
        return out


def _states_before(cell, t, hs, saved, states0):
    """h_{t-1} and c_{t-1} (NULL for a cell without c) entering step t."""
    states = list(states0) if t == 0 else [seq[t - 1] for seq in cell.sequences(hs, saved)]
    return states[0], states[1] if len(states) > 1 else NULL


_TF32_CHOSEN = set()  # ids of the GEMM settings modules a backend has set TF32 on
_HOOK_IDS = itertools.count()


def _peak_hook(cp):
    """A CuPy memory hook that tracks the bytes of the pool blocks taken while it is registered
    and still held, and their peak. CuPy calls the callbacks with keyword arguments."""

    class PeakHook(cp.cuda.MemoryHook):
        def __init__(self):
            self.name = f"rnncore_peak_{next(_HOOK_IDS)}"  # unique: nested blocks each have one
            self.in_use = 0
            self.peak = 0
            self.mine = {}  # pointer -> bytes, for blocks taken inside

        def malloc_postprocess(self, **kw):
            if not kw.get("mem_ptr"):
                return
            self.mine[kw["mem_ptr"]] = kw["mem_size"]
            self.in_use += kw["mem_size"]
            self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, **kw):
            self.in_use -= self.mine.pop(kw.get("mem_ptr"), 0)  # a block from before: not counted

    return PeakHook()
