"""Shared fixtures: every backend that can run here, including the CUDA kernels on the CPU.

Backends under test:
- ``numpy`` and ``numba`` (skipped where numba is not installed);
- ``cupy-emu``, ``cupy-emu-fused``: the real cupy backend (per-step cuBLAS + gate kernels,
  or the fused step kernels) and its real ``kernels/*.cu``, compiled with g++ and run on
  the CPU by ``support/fake_cupy.py`` (skipped without g++);
- ``cupy``, ``cupy-fused``: the real thing, marked ``gpu`` (skipped without CuPy and a device).
"""
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "support"))

import fake_cupy  # noqa: E402

import rnncore  # noqa: E402
from rnncore.backends.cupy_backend import CupyBackend  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("RNNCORE_TEST_DATA", REPO.parent / "shared" / "data"))

HAS_NUMBA = importlib.util.find_spec("numba") is not None
HAS_GPU, NO_GPU_REASON = rnncore.backends.cuda_status()
# RNNCORE_REQUIRE_GPU=1 (the GPU scripts set it): a GPU test that cannot run fails, naming why
REQUIRE_GPU = os.environ.get("RNNCORE_REQUIRE_GPU") == "1"
# No background compiling processes racing the tests over Numba's cache (and the cores);
# test_numba_kernels.py turns it on where it tests it.
os.environ.setdefault("RNNCORE_COMPILE_AHEAD", "0")
_made = {}


def emulated_cupy(recurrence="cublas"):
    """The cupy backend on the CPU stand-in; ``recurrence`` picks its per-step kernels."""
    if recurrence not in _made:
        be = CupyBackend(fake_cupy.make(), recurrence=recurrence)
        be.name = "cupy-emu" if recurrence == "cublas" else f"cupy-emu-{recurrence}"
        _made[recurrence] = be
    return _made[recurrence]


def real_cupy(recurrence):
    key = ("gpu", recurrence)
    if key not in _made:
        _made[key] = CupyBackend(recurrence=recurrence)
    return _made[key]


def backend_by_name(name):
    if name == "numba" and not HAS_NUMBA:
        pytest.skip("numba is not installed")
    if name.startswith("cupy-emu"):
        if not fake_cupy.compiler_available():
            pytest.skip("g++ is needed to run the CUDA kernels on the CPU")
        return emulated_cupy("fused" if name.endswith("fused") else "cublas")
    if name.startswith("cupy") and not HAS_GPU:
        skip_without_gpu()
    if name == "cupy-fused":
        return real_cupy("fused")
    return rnncore.get_backend(name)


CPU_BACKENDS = ["numpy", "numba", "cupy-emu", "cupy-emu-fused"]
GPU_BACKENDS = [pytest.param(name, marks=pytest.mark.gpu) for name in ("cupy", "cupy-fused")]
ALL_BACKENDS = CPU_BACKENDS + GPU_BACKENDS
OTHER_BACKENDS = CPU_BACKENDS[1:] + GPU_BACKENDS


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    return backend_by_name(request.param)


@pytest.fixture(params=OTHER_BACKENDS)
def other_backend(request):
    """Every backend but the NumPy reference."""
    return backend_by_name(request.param)


def skip_without_gpu():
    """Skip (or, with RNNCORE_REQUIRE_GPU=1, fail) a test that needs the GPU, saying why it cannot run."""
    if REQUIRE_GPU:
        pytest.fail(f"RNNCORE_REQUIRE_GPU=1 but the GPU cannot be used: {NO_GPU_REASON}")
    pytest.skip(f"needs CuPy and a CUDA device: {NO_GPU_REASON}")


@pytest.fixture(autouse=True)
def _gpu_marker(request):
    if request.node.get_closest_marker("gpu") and not HAS_GPU:
        skip_without_gpu()


CELL_KINDS = ["rnn", "lstm", "gru"]


def layer_class(kind):
    """The layer of a cell name: TimeRNN, TimeLSTM or TimeGRU."""
    return rnncore.models.CELLS[kind]


def random_params(rng, kind, D, H, dtype, scale=0.5):
    """The parameters of a TimeRNN, TimeLSTM or TimeGRU ("rnn", "lstm", "gru") as host arrays:
    Wx (D, G), Wh (H, G), then the bias b (G,), or the GRU's bx and bh."""
    cell = layer_class(kind).cell
    G = cell.gates * H
    shapes = [(D, G), (H, G)] + [(G,)] * (len(cell.param_names) - 2)
    return [(rng.standard_normal(shape) * scale).astype(dtype) for shape in shapes]


def to_backend(backend, arrays):
    return [backend.asarray(np.array(a)) for a in arrays]


@pytest.fixture(scope="session")
def shared_data():
    """The corpora: ../shared/data (or $RNNCORE_TEST_DATA); failing that, downloaded once from the
    public mirrors into rnncore's cache; failing that too (no network), the test is skipped."""
    if (DATA_DIR / "ptb" / "ptb.train.txt").is_file():
        return DATA_DIR
    from rnncore.app import data

    try:
        for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt", "timemachine.txt"):
            path = data.dataset_path(name, progress=False)
        return path.parent.parent
    except data.DataError as exc:
        pytest.skip(f"no corpora at {DATA_DIR} and no download ({exc})")
