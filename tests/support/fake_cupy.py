"""A CPU stand-in for the parts of CuPy that the cupy backend uses, for tests without a GPU.

Arrays are NumPy arrays. ``RawModule`` compiles the real ``kernels/*.cu`` source with g++
against ``emu.h`` and launches kernels through ctypes, so the backend's Python code and
its CUDA kernels both run; only cuBLAS is replaced, by NumPy's matmul. Kernel arguments
must be NumPy arrays or NumPy scalars of an explicit width, as they must for real CuPy (which
passes None as the pointer 0xffffffff, not NULL: a null pointer is np.uint64(0)). Every kernel
of rnncore declares its pointers __restrict__, so no two array arguments of a launch may share
memory: each launch checks that.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
_BUILD = Path(tempfile.gettempdir()) / "rnncore-emulated-cuda"
_FLAGS = ("-std=c++20", "-O1", "-shared", "-fPIC")
_SCALARS = {
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
}


def compiler_available():
    return shutil.which("g++") is not None


class RawModule:
    def __init__(self, code, options=(), name_expressions=(), enable_cooperative_groups=False):
        self.names = list(name_expressions)
        synchronizes = any(word in code for word in ("__syncthreads", "__shfl", "__syncwarp", "grid_sync"))
        flags = f"{str(synchronizes).lower()}, {str(enable_cooperative_groups).lower()}"
        wrappers = "".join(
            f'extern "C" void emu_launch_{k}(const unsigned* g, const unsigned* b, void** a, unsigned s)'
            f" {{ emu::launch(&{name}, g, b, a, {flags}, s); }}\n"
            for k, name in enumerate(self.names)
        )
        source = f'#include "emu.h"\n{code}\n{wrappers}'
        # the key covers everything that goes into the build, emu.h and the flags too
        digest = hashlib.sha1((source + (HERE / "emu.h").read_text() + " ".join(_FLAGS)).encode()).hexdigest()[:16]
        _BUILD.mkdir(exist_ok=True)
        library = _BUILD / f"module_{digest}.so"
        if not library.exists():
            src = _BUILD / f"module_{digest}.{os.getpid()}.cpp"
            src.write_text(source)
            partial = library.with_suffix(f".{os.getpid()}.tmp")
            subprocess.run(
                ["g++", *_FLAGS, f"-I{HERE}", str(src), "-o", str(partial)],
                check=True,
                capture_output=True,
                text=True,
            )
            partial.rename(library)
        self._lib = ctypes.CDLL(str(library))

    def get_function(self, name):
        if name not in self.names:
            raise KeyError(f"{name} is not among the module's name expressions {self.names}")
        return _Function(name, getattr(self._lib, f"emu_launch_{self.names.index(name)}"))


class _Function:
    def __init__(self, name, entry):
        self.name = name
        self.entry = entry

    def __call__(self, grid, block, args, shared_mem=0):
        arrays = [(k, a) for k, a in enumerate(args) if isinstance(a, np.ndarray)]
        for i, (k, a) in enumerate(arrays):
            for m, b in arrays[i + 1 :]:
                if np.may_share_memory(a, b) and np.shares_memory(a, b):
                    raise ValueError(f"{self.name}: arguments {k} and {m} share memory (its pointers are __restrict__)")
        holders = [_argument(a) for a in args]
        pointers = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        self.entry(_dims(grid), _dims(block), pointers, ctypes.c_uint(shared_mem))


def _dims(d):
    d = tuple(d) + (1,) * (3 - len(d))
    return (ctypes.c_uint * 3)(*d)


def _argument(a):
    if isinstance(a, np.ndarray):
        return ctypes.c_void_p(a.ctypes.data)
    if isinstance(a, np.generic) and a.dtype in _SCALARS:
        return _SCALARS[a.dtype](a.item())
    raise TypeError(f"kernel arguments must be arrays or sized NumPy scalars, got {type(a).__name__}")


class _MemoryHook:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Stream:
    def synchronize(self):
        pass


class _Device:
    id = 0
    attributes = {"MultiProcessorCount": 2}

    def synchronize(self):
        pass


class DeviceArray(np.ndarray):
    """An array that refuses to be read back to the host, as a CuPy array does inside
    ``cupyx.allow_synchronize(False)``: a conversion to a Python number or list raises."""

    def _read_back(self, *args, **kwargs):
        raise AssertionError("a device value was read back to the host (a device sync)")

    __bool__ = __int__ = __float__ = __complex__ = __index__ = item = tolist = get = _read_back


def _on_device(x):
    return x.view(DeviceArray) if isinstance(x, np.ndarray) and not isinstance(x, DeviceArray) else x


class _FakeCupy(types.ModuleType):
    """Anything not defined here is NumPy's; with ``strict``, every array a NumPy function
    returns is a DeviceArray."""

    strict = False

    def __getattr__(self, name):
        attr = getattr(np, name)
        if self.strict and callable(attr) and not isinstance(attr, type):
            return lambda *args, **kwargs: _on_device(attr(*args, **kwargs))
        return attr


def make(strict=False):
    """The stand-in module. ``strict``: its arrays are DeviceArrays and ``asnumpy`` raises, so
    code that would wait on a GPU to read a value fails here (test only what never should)."""
    cp = _FakeCupy("fake_cupy")
    cp.strict = strict
    cp.ndarray = DeviceArray if strict else np.ndarray
    cp.asnumpy = DeviceArray._read_back if strict else np.asarray
    cp.RawModule = RawModule
    cp.random = np.random
    cp.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
        Device=_Device,
        MemoryHook=_MemoryHook,
        get_current_stream=_Stream,
    )
    return cp
