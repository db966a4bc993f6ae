"""Data-parallel training over MPI ranks: ``mpiexec -n K rnncore train ...``.

Each rank takes its share of every batch's rows, computes that share's gradients weighted by
its share of the rows, and one allreduce per iteration sums a single flat buffer in place: the
gradients, the weighted loss and a stop flag. So every rank sees the global loss (a NaN on any
rank is a NaN on all, at the same iteration), the same summed gradients (clipped afterwards by
their global norm) and the same decision to stop on Ctrl-C or SIGTERM, and all take the same
optimizer step. CPU: ``MPI.Allreduce`` on a host buffer. GPU: NCCL's ``allReduce`` on a device
buffer, one GPU per rank, its communicator's id broadcast over MPI (ChainerMN's pair).

Without mpiexec ``communicator()`` is ``SINGLE`` and mpi4py is not imported.
"""
import importlib.util
import os
import signal
import sys

import numpy as np

# what Open MPI, MPICH/Hydra and PMIx-based launchers put in each rank's environment
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS")
SIGNAL_FLAGS = {2: 1.0, 15: 1000.0}  # SIGINT, SIGTERM: summed over ranks, >= 1000 means a SIGTERM came


def agreed_signal(flags):
    """The sum of the ranks' SIGNAL_FLAGS -> the signal they all stop on (0: none)."""
    return 0 if flags == 0 else (15 if flags >= 1000 else 2)


def launched_by_mpiexec(environ=os.environ):
    return any(name in environ for name in LAUNCHER_VARIABLES)


# Ctrl-C, SIGTERM or SIGHUP to Open MPI 5's mpiexec (PRRTE's prterun) is not passed on: it sends
# each rank SIGCONT, then SIGTERM 0.25 s later, then SIGKILL 0.25 s after that (hard-coded in
# PRRTE's odls kill_local_procs, no MCA parameter changes it), and exits 1 whatever the ranks do.
LAUNCHER_KILL_WINDOW_S = 0.5


def launcher_stop_signals(environ=os.environ):
    """The signals that warn a rank its launcher may be ending the job: SIGCONT under Open MPI,
    the first of prterun's SIGCONT, SIGTERM, SIGKILL. The ranks save at the next iteration and go
    on; the SIGTERM then stops them (``train._stop_on_signals``). Job control sends SIGCONT too
    (``fg`` after Ctrl-Z, a scheduler resuming a suspended job): one save more, nothing else."""
    return (signal.SIGCONT,) if "OMPI_COMM_WORLD_SIZE" in environ else ()


LAUNCHERS = ("prterun", "mpiexec", "mpirun", "orterun")  # names of Open MPI's mpiexec process


def tell_launcher(line, pid=None):
    """Write ``line`` to mpiexec's own stderr (the terminal or log it was started with): once it
    is ending the job, prterun forwards no more of the ranks' output. Only where this rank's
    parent is mpiexec itself (rank 0 on mpiexec's node, Linux); returns whether it was written."""
    pid = os.getppid() if pid is None else pid
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:  # bytes: a process may name itself anything
            if f.read().strip().decode("ascii", "replace") not in LAUNCHERS:
                return False
        fd = os.open(f"/proc/{pid}/fd/2", os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def rows_of(rank, size, total):
    """Rank ``rank``'s rows r0..r1 of a batch of ``total``: contiguous, sizes differ by at most one."""
    return rank * total // size, (rank + 1) * total // size


class Single:
    """One process: nothing is split and nothing is reduced."""

    rank, size = 0, 1

    def rows(self, total):
        return 0, total

    def reduce_iteration(self, grads, loss, signal, backend, save=False):
        return loss, signal, save

    def sum(self, value):
        return value

    def gather(self, obj):
        return [obj]

    def barrier(self):
        pass


SINGLE = Single()


class MPICommunicator:
    """``MPI.COMM_WORLD``: this rank's rows, the per-iteration gradient reduction, small collectives."""

    def __init__(self):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()  # place on its node
        self._buf, self._nccl = None, None

    def bind_gpu(self):
        """One GPU per rank, picked by the rank's place on its node: called before the backend
        makes any array, which would otherwise land on device 0. Nothing without CuPy or a GPU."""
        if importlib.util.find_spec("cupy") is None:
            return
        import cupy

        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except cupy.cuda.runtime.CUDARuntimeError:
            return
        if count:
            cupy.cuda.Device(self.local_rank % count).use()

    def rows(self, total):
        if total < self.size:
            raise ValueError(f"a batch of {total} rows cannot be shared by {self.size} ranks; "
                             f"give --batch-size of at least {self.size}")
        return rows_of(self.rank, self.size, total)

    def reduce_iteration(self, grads, loss, signal, backend, save=False):
        """Sum the gradients (each already weighted by this rank's share), the weighted ``loss``,
        the stop flags and the save requests of all ranks with one in-place allreduce. Returns
        the global loss (a 0-d array, not read back), the signal all ranks stop on (0: none) and
        whether any rank asked for a save; ``grads`` then hold the sum."""
        xp = backend.xp
        n = sum(g.size for g in grads)
        if self._buf is None or self._buf.size != n + 3 or self._buf.dtype != grads[0].dtype:
            self._buf = xp.empty(n + 3, dtype=grads[0].dtype)
        buf = self._buf
        xp.concatenate([g.ravel() for g in grads] + [xp.reshape(loss, (1,)).astype(buf.dtype)], out=buf[:-2])
        buf[-2] = SIGNAL_FLAGS.get(signal, 1.0 if signal else 0.0)
        buf[-1] = 1.0 if save else 0.0
        if xp is np:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        else:
            self._nccl_allreduce(buf)
        offset = 0
        for g in grads:
            g[...] = buf[offset:offset + g.size].reshape(g.shape)
            offset += g.size
        # on a GPU this is the iteration's one read back: every rank must agree now whether to stop
        flags = buf[-2:].tolist()
        return buf[-3].copy(), agreed_signal(flags[0]), flags[1] > 0

    def _nccl_allreduce(self, buf):
        """NCCL on the device buffer (the device bind_gpu picked); the communicator is made on
        first use: rank 0 draws its id and MPI broadcasts it."""
        from cupy.cuda import nccl

        if self._nccl is None:
            uid = self.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        kind = {np.dtype("float32"): nccl.NCCL_FLOAT32, np.dtype("float64"): nccl.NCCL_FLOAT64}[buf.dtype]
        import cupy

        stream = cupy.cuda.get_current_stream().ptr
        self._nccl.allReduce(buf.data.ptr, buf.data.ptr, buf.size, kind, nccl.NCCL_SUM, stream)

    def sum(self, value):
        """A host float summed over the ranks (evaluation's weighted losses, a stop flag)."""
        return self.comm.allreduce(float(value), op=self.MPI.SUM)

    def gather(self, obj):
        """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
        return self.comm.gather(obj, root=0)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, status):
        self.comm.Abort(status)


_current = None


def communicator():
    """``SINGLE`` without mpiexec (mpi4py is never imported); under mpiexec, COMM_WORLD, and a
    crash on any rank aborts all of them rather than leaving them waiting in a collective."""
    global _current
    if _current is not None:
        return _current
    if not launched_by_mpiexec():
        return SINGLE
    try:
        _current = MPICommunicator()
    except ImportError:
        raise ImportError("rnncore runs under mpiexec, but mpi4py is missing: pip install 'rnncore[mpi]'") from None
    if _current.size == 1:
        return _current
    previous = sys.excepthook

    def abort_on_crash(kind, value, tb):
        previous(kind, value, tb)
        sys.stderr.flush()
        _current.abort(1)

    sys.excepthook = abort_on_crash
    return _current


def current():
    """The communicator made by ``communicator()``, or SINGLE."""
    return _current or SINGLE
