"""The CuPy backend: CUDA through CuPy, the elementwise work of each step fused by hand.

Kernels are CUDA C templates in ``kernels/*.cu`` compiled by ``cupy.RawModule`` on first
use (CuPy caches the binaries on disk). A forward step is one cuBLAS GEMM for the
recurrent product plus one fused gate kernel; backward likewise. Nothing here reads a
value back to the host, so a training iteration never waits on the device.
Strict float32: CuPy's GEMMs use TF32 only if the user sets CUPY_TF32=1.
"""
import contextlib
import importlib

import numpy as np

from .. import _kernels
from .base import Backend, BackendNotAvailable, MemoryReport

THREADS = 256  # threads per block; softmax_cross_entropy needs SOFTMAX_THREADS in training.cu to match


class CupyBackend(Backend):
    name = "cupy"

    def __init__(self, cupy_module=None):
        cp = cupy_module or importlib.import_module("cupy")
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
        super().__init__()

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
        key = (filename, kernel, dtype)
        if key not in self._functions:
            if filename not in self._modules:
                self._modules[filename] = self.xp.RawModule(
                    code=_kernels.cuda_module_source(filename),
                    options=("-std=c++17",),
                    name_expressions=_kernels.cuda_name_expressions(filename),
                )
            ctype = _kernels.CUDA_TYPES[np.dtype(dtype).name]
            self._functions[key] = self._modules[filename].get_function(f"{kernel}<{ctype}>")
        return self._functions[key]

    def _launch(self, fn, size, args):
        blocks = max(1, min(-(-size // THREADS), self._max_blocks))
        fn((blocks,), (THREADS,), args)

    def _start(self, grad_T, like):
        cp = self.xp
        return cp.zeros_like(like) if grad_T is None else cp.array(grad_T, dtype=like.dtype, order="C")

    # recurrences -----------------------------------------------------------
    def rnn_forward(self, xw, h0, Wh):
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
        cp = self.xp
        T, N, H = dhs.shape
        step = self._function("rnn.cu", "rnn_backward_step", dhs.dtype)
        dhs = cp.ascontiguousarray(dhs)
        dxw = cp.empty_like(dhs)
        dh = self._start(dh_T, h0)
        for t in reversed(range(T)):
            self._launch(step, N * H, (dxw[t], dh, dhs[t], hs[t], np.int64(N * H)))
            cp.matmul(dxw[t], Wh.T, out=dh)
        return dxw, dh

    def lstm_forward(self, xw, h0, c0, Wh):
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
        cp = self.xp
        T, N, G = gates.shape
        H = G // 4
        step = self._function("lstm.cu", "lstm_backward_step", gates.dtype)
        dhs = cp.ascontiguousarray(dhs)
        c0 = cp.ascontiguousarray(c0)
        dh = self._start(dh_T, h0)
        dc = self._start(dc_T, c0)
        for t in reversed(range(T)):
            c_prev = cs[t - 1] if t > 0 else c0
            self._launch(step, N * H, (gates[t], dh, dhs[t], cs[t], c_prev, dc, np.int32(N), np.int32(H)))
            cp.matmul(gates[t], Wh.T, out=dh)
        return dh, dc

    # the rest of a training step ------------------------------------------
    def embedding_scatter_add(self, dW, ids, dout):
        cp = self.xp
        M, D = dout.shape
        fn = self._function("training.cu", "embedding_scatter_add", dW.dtype)
        ids = cp.ascontiguousarray(ids, dtype=cp.int32)
        self._launch(fn, M * D, (dW, ids, cp.ascontiguousarray(dout), np.int64(M), np.int32(D)))

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
