"""Every CUDA kernel once, on odd shapes, in both recurrence modes and both precisions: the
program to run under compute-sanitizer (memcheck, racecheck, synccheck), e.g.

    compute-sanitizer --tool memcheck  python benchmarks/sanitize.py
    compute-sanitizer --tool racecheck python benchmarks/sanitize.py

CuPy's memory pool is switched off: it carves arrays out of large blocks, so memcheck would
miss a kernel running past one array into the next. The shapes reach each launch path of
the fused steps: all four warps a block, fewer (N = 1600: one warp in float32), and the
cuBLAS forward beside the fused backward where a fused forward does not fit (N = 3100).
"""
import cupy
import numpy as np

from rnncore.backends.cupy_backend import CupyBackend
from rnncore.models import RecurrentLM
from rnncore.optim import SGD, clip_grads


SHAPES = ((1, 1, 1), (3, 5, 33), (17, 4, 70), (1600, 2, 5), (3100, 2, 3))  # N, T, H


def main():
    cupy.cuda.set_allocator(None)
    for recurrence in ("cublas", "fused"):
        be = CupyBackend(recurrence=recurrence)
        for dtype in ("float32", "float64"):
            for N, T, H in SHAPES:
                for cell in ("rnn", "lstm"):
                    model = RecurrentLM(11, H, H, cell=cell, num_layers=2, dropout=0.3, tie_weights=True,
                                        backend=be, dtype=dtype, seed=1)
                    rng = np.random.default_rng(0)
                    xs = be.asarray(rng.integers(0, 11, size=(N, T)))
                    ts = be.asarray(rng.integers(-1, 11, size=(N, T)))
                    model.forward(xs, ts)
                    model.backward()
                    clip_grads(model.grads, 1.0, be)
                    SGD(0.1).update(model.params, model.grads, be)
        be.synchronize()
        print(f"{recurrence}: every kernel ran")


if __name__ == "__main__":
    main()
