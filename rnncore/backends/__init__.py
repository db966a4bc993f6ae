"""Backend registry: picks the backend a layer runs on, importing numba or cupy only when asked.

Selection order: an explicit ``name`` argument, then the innermost ``with use(...)``
block, then the ``RNNCORE_BACKEND`` environment variable, then ``auto`` (cupy if a CUDA
device answers, else numba if it imports, else numpy).
"""
import contextlib
import functools
import importlib
import importlib.util
import os
import threading

from .base import Backend, BackendError, BackendNotAvailable

NAMES = ("numpy", "numba", "cupy")

# name -> (module, class, how to install what it needs)
_REGISTRY = {
    "numpy": ("rnncore.backends.numpy_backend", "NumpyBackend", "pip install rnncore"),
    "numba": ("rnncore.backends.numba_backend", "NumbaBackend", "pip install 'rnncore[numba]'"),
    "cupy": (
        "rnncore.backends.cupy_backend",
        "CupyBackend",
        "pip install 'rnncore[cuda12]' (CUDA 12) or 'rnncore[cuda13]' (CUDA 13)",
    ),
}
_instances = {}
_context = threading.local()
_lock = threading.Lock()


def get_backend(name=None):
    """Return the backend for ``name`` (a name, a Backend, or None to follow the selection order)."""
    if isinstance(name, Backend):
        return name
    if name is None:
        context = _context_backend()
        if context is not None:
            return context
        name = os.environ.get("RNNCORE_BACKEND") or "auto"
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name or a Backend, got {type(name).__name__}")
    name = name.strip().lower()
    if name == "auto":
        name = _auto_name()
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; valid names: {', '.join(NAMES + ('auto',))}")
    with _lock:
        if name not in _instances:
            _instances[name] = _create(name)
        return _instances[name]


@contextlib.contextmanager
def use(name):
    """Make ``name`` the default backend inside the ``with`` block (per thread, nestable)."""
    backend = get_backend(name)
    stack = _context.__dict__.setdefault("stack", [])
    stack.append(backend)  # the object itself: a configured instance stays that instance
    try:
        yield backend
    finally:
        stack.pop()


def available_backends():
    """Names of the backends that can run here, in the order auto prefers them last to first."""
    names = ["numpy"]
    if _numba_installed():
        names.append("numba")
    if _cuda_device_answers():
        names.append("cupy")
    return names


def _context_backend():
    stack = getattr(_context, "stack", None)
    return stack[-1] if stack else None


def _auto_name():
    """The best backend that actually loads: cupy, else numba, else numpy."""
    for name in ("cupy", "numba"):
        if name in available_backends():
            try:
                get_backend(name)
                return name
            except BackendNotAvailable:
                continue
    return "numpy"


def _numba_installed():
    return all(importlib.util.find_spec(m) is not None for m in ("numba", "scipy"))


def _cuda_device_answers():
    return cuda_status()[0]


@functools.lru_cache(maxsize=None)
def cuda_status():
    """(True, "") if CuPy can run here, else (False, why): CuPy not installed, no device, or a
    device whose libraries do not load. Only the first two mean "no GPU here"; the third is a
    broken install (``cupy-cuda13x`` alone brings neither NVRTC nor cuBLAS/cuRAND: they come with
    the ``[ctk]`` extra or a CUDA toolkit), and the reason says so."""
    if importlib.util.find_spec("cupy") is None:
        return False, "CuPy is not installed"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False, "CuPy is installed but no CUDA device answers"
    except Exception as exc:  # no driver, no device
        return False, f"CuPy is installed but no CUDA device answers ({type(exc).__name__}: {exc})"
    try:  # what the backend needs besides the driver: NVRTC (its kernels), cuBLAS, cuRAND
        x = cupy.ones((2, 2), dtype=cupy.float32)
        float((x @ x).sum() + cupy.random.default_rng(0).random(1, dtype=cupy.float32).sum())
    except Exception as exc:
        return False, (f"a CUDA device answers but CuPy cannot run on it ({type(exc).__name__}: {exc}); "
                       "install the CUDA libraries: pip install 'rnncore[cuda13]' (or [cuda12])")
    return True, ""


def _create(name):
    module_name, class_name, install = _REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
        return getattr(module, class_name)()
    except BackendNotAvailable:
        raise
    except ImportError as exc:
        raise BackendNotAvailable(
            f"backend {name!r} is not installed ({exc}); install it with: {install}"
        ) from exc


__all__ = ["Backend", "BackendError", "BackendNotAvailable", "NAMES", "available_backends", "cuda_status",
           "get_backend", "use"]
