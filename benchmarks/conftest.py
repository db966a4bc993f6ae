"""pytest-benchmark suites: rnncore's backends side by side with PyTorch in the same run.

Run:      pytest benchmarks -n 0 --benchmark-json=bench.json   (-n 0: one process; xdist would turn the timing off)
Ratios:   python benchmarks/ratios.py bench.json      (each backend's median over the peer's)

Every benchmark sits in a group named after its shape, so pytest-benchmark's table puts
the backends and the peer of one shape together; peak memory of one call is stored in
``extra_info["peak_bytes"]`` (host memory via tracemalloc, or the CuPy pool, or PyTorch's
CUDA allocator; not measurable for PyTorch on the CPU).
"""
import pytest

try:  # PyTorch first: its OpenMP runtime must start before Numba's, or PyTorch runs 5x slower
    import torch  # noqa: F401
except ImportError:
    pass

import rnncore  # noqa: E402
from steps import configure_torch, set_numba_threads  # noqa: E402

BACKENDS = [name for name in ("numpy", "numba", "cupy") if name in rnncore.available_backends()]


def pytest_configure(config):
    set_numba_threads()


@pytest.fixture(params=BACKENDS)
def backend(request):
    return rnncore.get_backend(request.param)


@pytest.fixture
def torch_device():
    """PyTorch on the GPU if it has one (cuDNN, strict float32), else on THREADS CPU threads."""
    torch = pytest.importorskip("torch")
    return torch, configure_torch(torch)


def run_synced(benchmark, fn, sync, rounds=15):
    """Median timing with a device sync inside each timed call; three warm-ups first."""
    def call():
        fn()
        sync()

    for _ in range(3):
        call()
    return benchmark.pedantic(call, rounds=rounds, iterations=1)


def record_peak(benchmark, backend, fn):
    with backend.peak_memory() as report:
        fn()
        backend.synchronize()
    benchmark.extra_info["peak_bytes"] = report.peak_bytes


def record_torch_peak(benchmark, torch, device, fn):
    if device != "cuda":
        benchmark.extra_info["peak_bytes"] = None
        return
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    benchmark.extra_info["peak_bytes"] = torch.cuda.max_memory_allocated() - before
