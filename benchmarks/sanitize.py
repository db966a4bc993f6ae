"""Every CUDA kernel on odd shapes, in both recurrence modes, both precisions and every cell: the
program to run under compute-sanitizer (memcheck, racecheck, synccheck), e.g.

    compute-sanitizer --tool memcheck  python benchmarks/sanitize.py
    compute-sanitizer --tool racecheck python benchmarks/sanitize.py
    python benchmarks/sanitize.py --emulate    # the same program on the CPU emulator of the tests

It ends by checking that every kernel instantiation (``_kernels.cuda_name_expressions``) was
launched, and exits 1 naming any that was not. CuPy's memory pool is switched off: it carves
arrays out of large blocks, so memcheck would miss a kernel running past one array into the
next. The shapes reach each launch path of the fused steps: all four warps a block, fewer
(N = 1600: one warp for the LSTM in float32, two for the GRU), and the cuBLAS forward beside the
fused backward where a fused forward does not fit (N = 3100: the LSTM in float32; the LSTM and
GRU in float64). Each cell also runs one layer with variable lengths (0 and T among them) and
randomized-truncation scales, which reach the kernels' padding branches.
"""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ((1, 1, 1), (3, 5, 33), (17, 4, 70), (1600, 2, 5), (3100, 2, 3))  # N, T, H
CELLS = ("rnn", "lstm", "gru")


def backends(emulate):
    if emulate:
        sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "support")]
        from conftest import emulated_cupy

        return [emulated_cupy("cublas"), emulated_cupy("fused")]
    import cupy

    from rnncore.backends.cupy_backend import CupyBackend

    cupy.cuda.set_allocator(None)
    return [CupyBackend(recurrence="cublas"), CupyBackend(recurrence="fused")]


def record_launches(be, launched):
    """Adds "file: name expression" to ``launched`` for each kernel ``be`` launches."""
    from rnncore import _kernels

    function = be._function

    def recording(filename, kernel, dtype, cell=None):
        fn = function(filename, kernel, dtype, cell)
        name = f"{filename}: {_kernels.cuda_name_expression(kernel, np.dtype(dtype).name, getattr(cell, 'name', cell))}"

        def launch(*args, **kwargs):
            launched.add(name)
            return fn(*args, **kwargs)

        return launch

    be._function = recording


def run(be, dtype):
    from rnncore.models import CELLS as LAYERS
    from rnncore.models import RecurrentLM
    from rnncore.optim import SGD, clip_grads

    for N, T, H in SHAPES:
        for cell in CELLS:
            model = RecurrentLM(11, H, H, cell=cell, num_layers=2, dropout=0.3, tie_weights=True,
                                backend=be, dtype=dtype, seed=1)
            rng = np.random.default_rng(0)
            xs = be.asarray(rng.integers(0, 11, size=(N, T)))
            ts = be.asarray(rng.integers(-1, 11, size=(N, T)))
            model.forward(xs, ts)
            model.backward()
            clip_grads(model.grads, 1.0, be)
            SGD(0.1).update(model.params, model.grads, be)
    for cell in CELLS:  # padding and truncation: lengths 0 and T among the rows
        N, T, D, H = 19, 5, 3, 6
        rng = np.random.default_rng(1)
        cls = LAYERS[cell]
        G = cls.cell.gates * H
        shapes = [(D, G), (H, G)] + [(G,)] * (len(cls.cell.param_names) - 2)
        layer = cls(*(be.asarray(rng.standard_normal(s).astype(dtype)) for s in shapes), backend=be)
        lengths = rng.integers(0, T + 1, size=N)
        lengths[:2] = (0, T)
        layer.forward(be.asarray(rng.standard_normal((N, T, D)).astype(dtype)), lengths=lengths)
        layer.backward(be.asarray(rng.standard_normal((N, T, H)).astype(dtype)), scale=rng.choice([0.0, 2.0], size=T))


def main(argv):
    from rnncore import _kernels

    launched = set()
    for be in backends("--emulate" in argv):
        record_launches(be, launched)
        for dtype in ("float32", "float64"):
            run(be, dtype)
        be.synchronize()
        print(f"{be.name} ({be.recurrence}): ran")
    every = {f"{f}: {name}" for f in _kernels.CUDA_KERNELS for name in _kernels.cuda_name_expressions(f)}
    missing = sorted(every - launched)
    if missing:
        print("never launched:", *missing, sep="\n  ")
        return 1
    print(f"every kernel ran: {len(every)} instantiations")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
