"""How long a cold first training iteration takes on the numba backend: Numba compiling.

    python benchmarks/first_iteration.py --cell lstm

Each measurement runs in a fresh process on an empty Numba cache (a temporary NUMBA_CACHE_DIR):
get the backend, start compiling ahead (``NumbaBackend.compile_ahead``, as ``rnncore train``
does) or not, then one float32 iteration of a RecurrentLM (V = D = H = 64, N = 8, T = 35: the
sizes do not change what compiles) with SGD. Prints the iteration's seconds both ways.
"""
import argparse
import os
import subprocess
import sys
import tempfile

ITERATION = """
import sys, time
import numpy as np, rnncore
from rnncore.cells import CELLS
from rnncore.models import RecurrentLM
from rnncore.optim import SGD
be = rnncore.get_backend("numba")
be.compile_ahead(CELLS[sys.argv[1]], np.float32, np.int32)
model = RecurrentLM(64, 64, 64, cell=sys.argv[1], backend=be)
xs, ts = np.random.default_rng(0).integers(0, 64, (2, 8, 35)).astype(np.int32)  # a corpus's ids
start = time.perf_counter()
model.forward(be.asarray(xs), be.asarray(ts))
model.backward()
SGD(0.1).update(model.params, model.grads, be)
print(f"{time.perf_counter() - start:.1f}")
"""


def first_iteration(cell, ahead):
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "RNNCORE_COMPILE_AHEAD": "1" if ahead else "0"}
        out = subprocess.run([sys.executable, "-c", ITERATION, cell], env=env, capture_output=True, text=True,
                             check=True)
    return float(out.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", default="lstm", choices=("rnn", "lstm", "gru"))
    cell = p.parse_args().cell
    ahead, alone = first_iteration(cell, True), first_iteration(cell, False)
    print(f"{cell}: a cold first iteration took {ahead:.1f} s compiling ahead, {alone:.1f} s without")


if __name__ == "__main__":
    main()
