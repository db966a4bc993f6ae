"""The numba kernels of another commit against this tree's, both loaded in one process.

    python benchmarks/ab_kernels.py --old 61efe9f --cell lstm --hidden 100

Two processes run seconds apart and this VM's speed drifts between them by more than a kernel
change is worth, so both versions run in one process: the old commit's ``kernels/`` is
extracted (``git archive``) as a package of its own, ``oldkernels``, and a layer on a backend
running those kernels alternates with the same layer on this tree's backend, turn by turn.
Each turn times ``--steps`` layer steps (forward+backward) and keeps their median; the report
is the median over the turns of new / old, and its quartiles. The old kernels go to
build/ab-kernels/<commit>/ and compile on first use (cached there for the next run).

An old commit is either of this tree's layout (one recurrence driver, ``kernels/numba/``: its
modules stand in for this tree's) or of the one before the cells became data (per-cell
``rnn_numba``/``lstm_numba`` entry points and ``common_numba``, up to 61efe9f: ``PerCellKernels``
runs them behind the seam the layers call now).
"""
import argparse
import ctypes
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

import llvmlite.binding as llvm_binding
import numpy as np
from steps import layer_step, median_ms_of, set_numba_threads

import rnncore
from rnncore import cells
from rnncore.backends import numba_backend
from rnncore.backends.numba_backend import NumbaBackend, _c

ROOT = Path(__file__).resolve().parents[1]
SHARED = {"_gemm": "numba.gemm", "_schedule": "numba.schedule", "_tile": "numba.register_tile",
          "_training": "training_numba"}  # the backend's kernel modules, this tree's layout


def commit_sha(commit):
    """The full hash of ``commit`` in this checkout, or "" if it names none."""
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                           capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else ""


def old_package(sha):
    """The commit's kernels/ as the package ``oldkernels`` (extracted once per commit)."""
    folder = ROOT / "build" / "ab-kernels" / sha
    if not (folder / "oldkernels").is_dir():
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "kernels"], capture_output=True)
        if archive.returncode != 0:
            raise SystemExit(f"ab_kernels.py: no kernels/ at {sha}: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(folder, filter="data")
        (folder / "kernels").rename(folder / "oldkernels")
    sys.path.insert(0, str(folder))
    return folder / "oldkernels"


class PerCellKernels(NumbaBackend):
    """The numba backend on kernels from before the cells became data (``common_numba``,
    ``rnn_forward``, ``lstm_backward``, ...), behind the seam: RNN and LSTM only."""

    def __init__(self):
        names = ("common_numba", "rnn_numba", "lstm_numba", "training_numba")
        self.common, self.rnn, self.lstm, self.training = (importlib.import_module(f"oldkernels.{m}") for m in names)
        super().__init__()

    def _gemm(self, a, b, out, bias=None):
        out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype) if out is None else out
        target = out if self._row_major(out) else np.empty(out.shape, dtype=out.dtype)
        self.common.gemm(self._layout(a), self._layout(b), target, numba_backend.numba.get_num_threads(), bias)
        if target is not out:
            out[...] = target
        return out

    def matmuls(self, products):
        if not (len(products) == 3 and self._independent(products)
                and all(self._blas_product(a, b, out) and self._row_major(out) for a, b, out in products)):
            return super().matmuls(products)
        operands = [x for a, b, out in products for x in (self._layout(a), self._layout(b), out)]
        self.common.gemm_three(*operands, numba_backend.numba.get_num_threads())

    @staticmethod
    def _layout(a):
        return a if (a.flags.c_contiguous or a.flags.f_contiguous) else np.ascontiguousarray(a)

    def recurrence_forward(self, cell, xw, states0, Wh, bh=None, lengths=None):
        T, N, G = xw.shape
        H = G // cell.gates
        split = self._split(N, H, Wh)
        if cell is cells.RNN:
            return self.rnn.rnn_forward(xw, _c(states0[0]), _c(Wh), *split), xw, ()
        hs, cs = np.empty((T, N, H), dtype=xw.dtype), np.empty((T, N, H), dtype=xw.dtype)
        self.lstm.lstm_forward(xw, _c(states0[0]), _c(states0[1]), _c(Wh), hs, cs, *split)
        return hs, xw, (cs,)

    def recurrence_backward(self, cell, dhs, hs, gates, saved, states0, Wh, dstates_T=None, scale=None, lengths=None):
        _, N, H = hs.shape
        dstates = [self.initial_grad(g, s) for g, s in zip(dstates_T or [None] * len(cell.states), states0)]
        split, one = self._split(N, H, Wh), gates.dtype.type(1)
        if cell is cells.RNN:
            dxw = np.empty(gates.shape, dtype=gates.dtype)
            self.rnn.rnn_backward(*self._sequence(dhs), hs, _c(Wh), dstates[0], dxw, one, *split)
            return dxw, dxw, dstates
        self.lstm.lstm_backward(*self._sequence(dhs), saved[0], gates, _c(states0[1]), _c(Wh), *dstates, one, *split)
        return gates, gates, dstates


def same_blas(path):
    """Point both versions' GEMM kernels at the BLAS this tree's backend chose (``path``): the old
    kernels bind the symbols they call when imported, and with MKL loaded already they chose
    SciPy's OpenBLAS, for whichever kernel was loaded after them. (Kernels load on first call.)"""
    if "mkl" in Path(path).name:
        lib = ctypes.CDLL(path)
        addresses = {n: ctypes.cast(getattr(lib, n + "_"), ctypes.c_void_p).value for n in ("sgemm", "dgemm")}
    else:
        addresses = {n: numba_backend._blas._cython_blas_address(n) for n in ("sgemm", "dgemm")}
    for name, address in addresses.items():
        llvm_binding.add_symbol(f"rnncore_{name}", address)


def versions(folder, cell):
    """{"old": (backend, switch), "new": ...}: ``switch()`` before each turn puts in the kernel
    modules of its version (the backend's module globals and its cells' modules)."""
    new = rnncore.get_backend("numba")
    ours = {name: getattr(numba_backend, name) for name in SHARED}

    def switch(be, modules, cell_package):
        def run():
            for name, module in modules.items():
                setattr(numba_backend, name, module)
            if cell_package:
                be._cells[cell] = importlib.import_module(f"{cell_package}.{cell}_numba")
        return run

    if (folder / "common_numba.py").exists():
        if cell not in ("rnn", "lstm"):
            raise SystemExit(f"ab_kernels.py: {folder.parent.name} has no {cell} kernels")
        old = PerCellKernels()
        same_blas(new.blas)
        return {"old": (old, switch(None, ours, None)), "new": (new, switch(new, ours, None))}
    theirs = {name: importlib.import_module(f"oldkernels.{m}") for name, m in SHARED.items()}
    old = NumbaBackend()
    return {"old": (old, switch(old, theirs, "oldkernels")), "new": (new, switch(new, ours, None))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="the commit whose kernels/ to compare against")
    p.add_argument("--cell", choices=("lstm", "rnn", "gru"), default="lstm")
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--steps", type=int, default=30, help="layer steps timed per turn (default 30)")
    p.add_argument("--turns", type=int, default=12, help="turns of each version (default 12)")
    a = p.parse_args(argv)
    if min(a.hidden, a.batch, a.steps, a.turns) < 1:
        p.error("--hidden, --batch, --steps and --turns must be >= 1")
    sha = commit_sha(a.old)
    if not sha:
        p.error(f"--old {a.old!r} is not a commit of {ROOT}")
    set_numba_threads()
    runs = {}
    for name, (be, switch) in versions(old_package(sha), a.cell).items():
        switch()
        runs[name] = (layer_step(be, a.cell, (a.batch, 35, a.hidden)), switch)
        median_ms_of(runs[name][0], 3, warmups=0)  # compile and warm
    times = {"old": [], "new": []}
    for _ in range(a.turns):
        for name, (step, switch) in runs.items():
            switch()
            times[name].append(median_ms_of(step, a.steps, warmups=0))
    runs["new"][1]()
    ratios = [n / o for n, o in zip(times["new"], times["old"])]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    print(f"{a.cell} N={a.batch} T=35 H={a.hidden}: old {statistics.median(times['old']):.3f} ms, "
          f"new {statistics.median(times['new']):.3f} ms; new / old {median:.3f} (quartiles {q1:.3f}-{q3:.3f}, "
          f"{a.turns} turns)")


if __name__ == "__main__":
    main()
