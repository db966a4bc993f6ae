"""The CuPy backend: CUDA through CuPy, the elementwise work of each step fused by hand.

Kernels are CUDA C templates in ``kernels/*.cu`` compiled by ``cupy.RawModule`` on first
use (CuPy caches the binaries on disk). A forward step is one cuBLAS GEMM for the
recurrent product plus one fused gate kernel; backward likewise. Nothing here reads a
value back to the host, so a training iteration never waits on the device.
Strict float32: CuPy's GEMMs use TF32 only if the user sets CUPY_TF32=1.
"""
import contextlib
import importlib
import os

import numpy as np

from .. import _kernels
from .base import Backend, BackendNotAvailable, MemoryReport

THREADS = 256  # threads per block; softmax_cross_entropy needs SOFTMAX_THREADS in training.cu to match
STEP_WARPS = 4  # warps (hidden units) per block of a fused step kernel
SHARED_LIMIT = 48 * 1024  # dynamic shared memory a block may use without opting in


class CupyBackend(Backend):
    """``recurrence``: how each step of a recurrence runs.

    ``"cublas"`` (the default): one cuBLAS GEMM for the recurrent product, then one fused
    kernel for the gate math, per step and direction. ``"fused"``: one kernel per step does
    both (``*_step_*`` in kernels/*.cu), so no cuBLAS call sits inside the loop. The fused
    path is tested on the CPU emulator but not yet timed on a GPU; it becomes the default
    once it has been measured faster there. ``RNNCORE_CUPY_RECURRENCE`` sets it too.
    """

    name = "cupy"

    def __init__(self, cupy_module=None, recurrence=None, tf32=None):
        cp = cupy_module or importlib.import_module("cupy")
        self.recurrence = recurrence or os.environ.get("RNNCORE_CUPY_RECURRENCE", "cublas")
        self.tf32 = os.environ.get("RNNCORE_TF32") == "1" if tf32 is None else bool(tf32)
        if self.recurrence not in ("cublas", "fused"):
            raise ValueError(f"recurrence must be 'cublas' or 'fused', got {self.recurrence!r}")
        try:
            count = cp.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDA driver missing or broken
            raise BackendNotAvailable(f"cupy is installed but no CUDA device answers ({exc})") from exc
        if count < 1:
            raise BackendNotAvailable("cupy is installed but no CUDA device answers")
        self.xp = cp
        self._modules = {}
        self._functions = {}
        sms = cp.cuda.Device().attributes["MultiProcessorCount"]
        self._max_blocks = 32 * sms
        if cupy_module is None:  # the real CuPy (the CPU stand-in has no cuBLAS modes)
            self.set_tf32(self.tf32)
        super().__init__()

    def set_tf32(self, on):
        """Let cuBLAS round float32 GEMM inputs to TF32 (faster, about 1e-3 relative error), or
        not. rnncore sets strict float32 when it starts, whatever CUPY_TF32 says, unless asked.
        (CuPy's compute type is process-wide; the recurrences' own kernels are always float32.)"""
        linalg = importlib.import_module("cupy._core._routines_linalg")
        mode = linalg.COMPUTE_TYPE_TF32 if on else linalg.COMPUTE_TYPE_FP32
        linalg.set_compute_type(np.float32, mode)
        self.tf32 = bool(on)

    # arrays ----------------------------------------------------------------
    def to_numpy(self, a):
        return self.xp.asnumpy(a)

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

    @contextlib.contextmanager
    def peak_memory(self):
        """Peak bytes taken from CuPy's pool inside the block, above what was in use at its start."""
        hook = _peak_hook(self.xp)
        report = MemoryReport()
        with hook:
            try:
                yield report
            finally:
                self.synchronize()
                report.peak_bytes = hook.peak

    # kernel plumbing -------------------------------------------------------
    def _function(self, filename, kernel, dtype):
        """The compiled kernel, loaded on the current device (a function loaded on one GPU
        cannot be launched on another)."""
        device = self.xp.cuda.Device().id
        key = (device, filename, kernel, dtype)
        if key not in self._functions:
            if (device, filename) not in self._modules:
                self._modules[device, filename] = self.xp.RawModule(
                    code=_kernels.cuda_module_source(filename),
                    options=("-std=c++17",),
                    name_expressions=_kernels.cuda_name_expressions(filename),
                )
            ctype = _kernels.CUDA_TYPES[np.dtype(dtype).name]
            self._functions[key] = self._modules[device, filename].get_function(f"{kernel}<{ctype}>")
        return self._functions[key]

    def _launch(self, fn, size, args):
        blocks = max(1, min(-(-size // THREADS), self._max_blocks))
        fn((blocks,), (THREADS,), args)

    # recurrences -----------------------------------------------------------
    def rnn_forward(self, xw, h0, Wh):
        if self._fused_fits(xw.shape[1], 1, xw.dtype):
            return self._rnn_forward_fused(xw, h0, Wh)
        cp = self.xp
        T, N, H = xw.shape
        step = self._function("rnn.cu", "rnn_forward_step", xw.dtype)
        rec = cp.empty((N, H), dtype=xw.dtype)
        h = cp.ascontiguousarray(h0)
        for t in range(T):
            cp.matmul(h, Wh, out=rec)
            self._launch(step, N * H, (xw[t], rec, np.int64(N * H)))
            h = xw[t]
        return xw

    def rnn_backward(self, dhs, hs, h0, Wh, dh_T=None):
        if self._fused_fits(dhs.shape[1], 1, dhs.dtype):
            return self._rnn_backward_fused(dhs, hs, h0, Wh, dh_T)
        cp = self.xp
        T, N, H = dhs.shape
        step = self._function("rnn.cu", "rnn_backward_step", dhs.dtype)
        dhs = cp.ascontiguousarray(dhs)
        dxw = cp.empty_like(dhs)
        dh = self.initial_grad(dh_T, h0)
        for t in reversed(range(T)):
            self._launch(step, N * H, (dxw[t], dh, dhs[t], hs[t], np.int64(N * H)))
            cp.matmul(dxw[t], Wh.T, out=dh)
        return dxw, dh

    def lstm_forward(self, xw, h0, c0, Wh):
        if self._fused_fits(xw.shape[1], 4, xw.dtype):
            return self._lstm_forward_fused(xw, h0, c0, Wh)
        cp = self.xp
        T, N, G = xw.shape
        H = G // 4
        step = self._function("lstm.cu", "lstm_forward_step", xw.dtype)
        hs = cp.empty((T, N, H), dtype=xw.dtype)
        cs = cp.empty_like(hs)
        rec = cp.empty((N, G), dtype=xw.dtype)
        h, c = cp.ascontiguousarray(h0), cp.ascontiguousarray(c0)
        for t in range(T):
            cp.matmul(h, Wh, out=rec)
            self._launch(step, N * H, (xw[t], rec, c, cs[t], hs[t], np.int32(N), np.int32(H)))
            h, c = hs[t], cs[t]
        return hs, cs

    def lstm_backward(self, dhs, hs, cs, gates, h0, c0, Wh, dh_T=None, dc_T=None):
        if self._fused_fits(gates.shape[1], 1, gates.dtype):
            return self._lstm_backward_fused(dhs, cs, gates, c0, Wh, self.initial_grad(dh_T, h0), self.initial_grad(dc_T, c0))
        cp = self.xp
        T, N, G = gates.shape
        H = G // 4
        step = self._function("lstm.cu", "lstm_backward_step", gates.dtype)
        dhs = cp.ascontiguousarray(dhs)
        c0 = cp.ascontiguousarray(c0)
        dh = self.initial_grad(dh_T, h0)
        dc = self.initial_grad(dc_T, c0)
        for t in reversed(range(T)):
            c_prev = cs[t - 1] if t > 0 else c0
            self._launch(step, N * H, (gates[t], dh, dhs[t], cs[t], c_prev, dc, np.int32(N), np.int32(H)))
            cp.matmul(gates[t], Wh.T, out=dh)
        return dh, dc

    # fused steps: one launch per step and direction ----------------------------
    def _step_launch(self, filename, kernel, dtype, H, N, columns_per_unit, args):
        """Launch a fused step kernel: a block's warps own one hidden unit each; its shared
        memory holds columns_per_unit * N values per warp (fewer warps if N is large)."""
        itemsize = np.dtype(dtype).itemsize
        warps = max(1, min(STEP_WARPS, SHARED_LIMIT // (columns_per_unit * N * itemsize)))
        fn = self._function(filename, kernel, dtype)
        fn((-(-H // warps),), (warps * 32,), args, shared_mem=warps * columns_per_unit * N * itemsize)

    def _fused_fits(self, N, columns, dtype):
        """A fused step keeps columns * N values per warp in shared memory: beyond the limit
        (N in the thousands) the cuBLAS path runs instead."""
        return self.recurrence == "fused" and columns * N * np.dtype(dtype).itemsize <= SHARED_LIMIT

    def _rnn_forward_fused(self, xw, h0, Wh):
        cp = self.xp
        T, N, H = xw.shape
        WhT = cp.ascontiguousarray(Wh.T)
        h = cp.ascontiguousarray(h0)
        for t in range(T):
            self._step_launch("rnn.cu", "rnn_step_forward", xw.dtype, H, N, 1, (xw[t], WhT, h, np.int32(N), np.int32(H)))
            h = xw[t]
        return xw

    def _rnn_backward_fused(self, dhs, hs, h0, Wh, dh_T):
        cp = self.xp
        T, N, H = dhs.shape
        dhs, Wh = cp.ascontiguousarray(dhs), cp.ascontiguousarray(Wh)
        dxw = cp.empty_like(dhs)
        for t in reversed(range(T)):
            last = t == T - 1
            nxt = self.initial_grad(dh_T, h0) if last else dxw[t + 1]
            self._step_launch("rnn.cu", "rnn_step_backward", dhs.dtype, H, N, 1,
                              (dxw[t], nxt, np.int32(not last), Wh, dhs[t], hs[t], np.int32(N), np.int32(H)))
        return dxw, self._recurrent_dot(dxw[0], Wh)

    def _lstm_forward_fused(self, xw, h0, c0, Wh):
        cp = self.xp
        T, N, G = xw.shape
        H = G // 4
        WhT = cp.ascontiguousarray(Wh.T)
        hs = cp.empty((T, N, H), dtype=xw.dtype)
        cs = cp.empty_like(hs)
        h, c = cp.ascontiguousarray(h0), cp.ascontiguousarray(c0)
        for t in range(T):
            self._step_launch("lstm.cu", "lstm_step_forward", xw.dtype, H, N, 4,
                              (xw[t], WhT, h, c, cs[t], hs[t], np.int32(N), np.int32(H)))
            h, c = hs[t], cs[t]
        return hs, cs

    def _lstm_backward_fused(self, dhs, cs, gates, c0, Wh, dh, dc):
        cp = self.xp
        T, N, G = gates.shape
        H = G // 4
        dhs, Wh, c0 = cp.ascontiguousarray(dhs), cp.ascontiguousarray(Wh), cp.ascontiguousarray(c0)
        for t in reversed(range(T)):
            last = t == T - 1
            nxt = dh if last else gates[t + 1]
            c_prev = cs[t - 1] if t > 0 else c0
            self._step_launch("lstm.cu", "lstm_step_backward", gates.dtype, H, N, 1,
                              (gates[t], nxt, np.int32(not last), Wh, dhs[t], cs[t], c_prev, dc, np.int32(N), np.int32(H)))
        return self._recurrent_dot(gates[0], Wh), dc

    def _recurrent_dot(self, X, W):
        """X @ W^T for the gradient reaching h0: X (N, K), W (J, K)."""
        N, K = X.shape
        J = W.shape[0]
        out = self.xp.empty((N, J), dtype=X.dtype)
        self._step_launch("rnn.cu", "recurrent_dot", X.dtype, J, N, 1,
                          (out, X, W, np.int32(N), np.int32(K), np.int32(J)))
        return out

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
        self._launch(fn, M * D, (dW, ids, cp.ascontiguousarray(dout), np.int64(M), np.int32(D)))

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
        count = cp.asarray((labels != -1).sum(dtype=cp.int32))  # a 0-d device array: no sync
        dscores = cp.empty_like(scores)
        row_loss = cp.empty(M, dtype=scores.dtype)
        fn((M,), (THREADS,), (scores, labels, count, dscores, row_loss, np.int32(V)))
        return row_loss.sum(), dscores


def _peak_hook(cp):
    """A CuPy memory hook that tracks bytes in use from the pool and their peak."""

    class PeakHook(cp.cuda.MemoryHook):
        name = "rnncore_peak"

        def __init__(self):
            self.in_use = 0
            self.peak = 0

        def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
            self.in_use += mem_size
            self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
            self.in_use -= mem_size

    return PeakHook()
