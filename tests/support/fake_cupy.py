"""A CPU stand-in for the parts of CuPy that the cupy backend uses, for tests without a GPU.

Arrays are NumPy arrays. ``RawModule`` compiles the real ``kernels/*.cu`` source with g++
against ``emu.h`` and launches kernels through ctypes, so the backend's Python code and
its CUDA kernels both run; only cuBLAS is replaced, by NumPy's matmul. Kernel arguments
must be NumPy arrays or NumPy scalars of an explicit width, as they must for real CuPy (which
passes None as the pointer 0xffffffff, not NULL: a null pointer is np.uint64(0)). Every kernel
of rnncore declares its pointers __restrict__, so no two array arguments of a launch may share
memory: each launch checks that, and CUDA's launch limits (threads a block, grid dimensions,
dynamic shared memory up to the function's ``max_dynamic_shared_size_bytes``).

What it models of CuPy beyond the kernels: ``empty``/``empty_like`` return NaN (CuPy's pool
hands out stale memory, never zeros); ``random.default_rng`` is CuPy-shaped (its bit
generator keeps its state in a device array ``_state``, ``state()`` is a method returning
its address, ``random(size, dtype)``); ``cuda.MemoryHook`` registers by name (a second hook
of one name raises KeyError, as CuPy's does) and its callbacks are called with CuPy 14.2's
keyword arguments for every array the module's functions allocate, and when that array is
freed; ``_core._routines_linalg`` keeps the GEMM compute type, one per stand-in module (a
stand-in module is a process). Dynamic shared memory is filled with NaN at each launch (emu.h).
"""
import collections
import ctypes
import hashlib
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import types
import weakref
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


SHARED_DEFAULT = 48 * 1024  # dynamic shared memory a launch may use without opting in
MAX_THREADS = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)


def check_launch(name, grid, block, shared_mem, shared_limit=SHARED_DEFAULT):
    """CUDA's launch limits: what a real launch would refuse (cudaErrorInvalidConfiguration)."""
    grid, block = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block))
    if len(grid) != 3 or len(block) != 3:
        raise ValueError(f"{name}: grid and block have at most 3 dimensions, got {grid}, {block}")
    for what, dims, limits in (("grid", grid, MAX_GRID), ("block", block, MAX_BLOCK)):
        for d, limit in zip(dims, limits):
            if not isinstance(d, (int, np.integer)) or not 1 <= d <= limit:
                raise ValueError(f"{name}: {what} {dims} outside CUDA's limits (1 to {limits} a dimension)")
    if block[0] * block[1] * block[2] > MAX_THREADS:
        raise ValueError(f"{name}: {block} is more than {MAX_THREADS} threads a block")
    if not 0 <= shared_mem <= shared_limit:
        raise ValueError(f"{name}: {shared_mem} bytes of dynamic shared memory, over the {shared_limit} allowed")


class _Function:
    def __init__(self, name, entry):
        self.name = name
        self.entry = entry
        self.max_dynamic_shared_size_bytes = SHARED_DEFAULT  # CuPy's attribute: raise it to opt in

    def __call__(self, grid, block, args, shared_mem=0):
        check_launch(self.name, grid, block, shared_mem, self.max_dynamic_shared_size_bytes)
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


class _Hooks:
    """The registered memory hooks of one stand-in module, and the blocks they saw allocated."""

    def __init__(self):
        self.registered = collections.OrderedDict()
        self.pmem_ids = itertools.count(1)

    def allocated(self, a):
        """Report ``a``'s memory as taken from the pool if it is a new block, and its free later."""
        if not self.registered or not isinstance(a, np.ndarray) or not a.flags.owndata or a.nbytes == 0:
            return
        base = a
        kw = dict(device_id=0, mem_size=-(-base.nbytes // 512) * 512, mem_ptr=base.ctypes.data, pmem_id=next(self.pmem_ids))
        for hook in list(self.registered.values()):
            hook.malloc_preprocess(device_id=0, size=base.nbytes, mem_size=kw["mem_size"])
        for hook in list(self.registered.values()):
            hook.malloc_postprocess(size=base.nbytes, **kw)
        weakref.finalize(base, self.freed, kw)

    def freed(self, kw):
        for hook in list(self.registered.values()):
            hook.free_preprocess(**kw)
        for hook in list(self.registered.values()):
            hook.free_postprocess(**kw)


def _memory_hook_class(hooks):
    class MemoryHook:
        """cupy.cuda.MemoryHook: registered by name while in a with block; callbacks take keywords."""

        name = "MemoryHook"

        def __enter__(self):
            if self.name in hooks.registered:
                raise KeyError(f"memory hook {self.name} already exists")
            hooks.registered[self.name] = self
            return self

        def __exit__(self, *exc):
            del hooks.registered[self.name]

        def alloc_preprocess(self, **kwargs):
            pass

        def alloc_postprocess(self, **kwargs):
            pass

        def malloc_preprocess(self, **kwargs):
            pass

        def malloc_postprocess(self, **kwargs):
            pass

        def free_preprocess(self, **kwargs):
            pass

        def free_postprocess(self, **kwargs):
            pass

    return MemoryHook


class XORWOW:
    """CuPy's default bit generator, as far as code outside CuPy can see it: the state lives in
    a device array ``_state`` (int8) of ``_size`` generators; ``state()`` is a METHOD that
    returns its address. The stand-in keeps a PCG64 state in the first 32 bytes of ``_state``."""

    def __init__(self, seed=None, *, size=-1, cp=None):
        self._seed_seq = np.random.SeedSequence(seed)
        self._seed = self._seed_seq.generate_state(1, np.uint32)[0]
        self._size = 8 * 256 * 16 if size < 0 else size
        self._state = cp.zeros(48 * self._size, dtype=np.int8)
        words = np.random.PCG64(self._seed_seq).state["state"]
        self._write(words["state"], words["inc"])

    def _write(self, state, inc):
        host = np.zeros(32, dtype=np.uint8)
        host[:16] = np.frombuffer(int(state).to_bytes(16, "little"), np.uint8)
        host[16:] = np.frombuffer(int(inc).to_bytes(16, "little"), np.uint8)
        self._state.view(np.uint8)[:32] = host

    def _pcg(self):
        raw = np.asarray(self._state).view(np.uint8)[:32].tobytes()
        pcg = np.random.PCG64()
        pcg.state = {"bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
                     "state": {"state": int.from_bytes(raw[:16], "little"), "inc": int.from_bytes(raw[16:], "little")}}
        return pcg

    def state(self):
        return self._state.ctypes.data


class Generator:
    """cupy.random.Generator: ``random(size=None, dtype=float64, out=None)`` draws on the device."""

    def __init__(self, bit_generator, cp):
        self.bit_generator = bit_generator
        self._cp = cp

    def random(self, size=None, dtype=np.float64, out=None):
        pcg = self.bit_generator._pcg()
        values = np.random.Generator(pcg).random(size, dtype=dtype)
        self.bit_generator._write(pcg.state["state"]["state"], pcg.state["state"]["inc"])
        values = self._cp.asarray(values)
        if out is not None:
            out[...] = values
            return out
        return values


def _random_module(cp):
    return types.SimpleNamespace(
        default_rng=lambda seed=None: Generator(XORWOW(seed, cp=cp), cp),
        Generator=Generator, XORWOW=XORWOW)


def _linalg_module(name):
    """cupy._core._routines_linalg's compute-type settings, process-wide (here: per stand-in)."""
    linalg = types.ModuleType(name)
    linalg.COMPUTE_TYPE_TBD, linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_FP32, linalg.COMPUTE_TYPE_TF32 = 0, 1, 4, 7
    types_now = {}
    linalg.get_compute_type = lambda dtype: types_now.get(np.dtype(dtype), linalg.COMPUTE_TYPE_DEFAULT)
    linalg.set_compute_type = lambda dtype, mode: types_now.__setitem__(np.dtype(dtype), mode)
    return linalg


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


def _stale(a):
    """What CuPy's pool hands out: not zeros. Floats are NaN, integers a large garbage value."""
    if a.dtype.kind in "fc":
        a.fill(np.nan)
    elif a.dtype.kind in "iu":
        a.fill(np.iinfo(a.dtype).max // 3)
    return a


class _FakeCupy(types.ModuleType):
    """Anything not defined here is NumPy's; every array a NumPy function returns through it is
    reported to the memory hooks; with ``strict``, it is a DeviceArray."""

    strict = False

    def __getattr__(self, name):
        attr = getattr(np, name)
        if callable(attr) and not isinstance(attr, type):
            hooks, strict = self._hooks, self.strict

            def call(*args, **kwargs):
                out = attr(*args, **kwargs)
                if not any(out is a for a in (*args, *kwargs.values())):  # not an input handed back
                    hooks.allocated(out)
                return _on_device(out) if strict else out

            return call
        return attr

    def empty(self, *args, **kwargs):
        return self._wrap(_stale(np.empty(*args, **kwargs)))

    def empty_like(self, *args, **kwargs):
        return self._wrap(_stale(np.empty_like(*args, **kwargs)))

    def _wrap(self, out):
        self._hooks.allocated(out)
        return _on_device(out) if self.strict else out


_MODULES = itertools.count()


def make(strict=False):
    """A stand-in module (a new one is a new process: its own hooks and GEMM settings).
    ``strict``: its arrays are DeviceArrays (``__int__``, ``__float__``, ``__bool__``, ``item``,
    ``tolist`` raise) and ``asnumpy`` raises, as CuPy under ``cupyx.allow_synchronize(False)``:
    code that would wait on a GPU to read a value fails here (test only what never should)."""
    name = f"fake_cupy_{next(_MODULES)}"
    cp = _FakeCupy(name)
    cp.strict = strict
    cp._hooks = _Hooks()
    cp.ndarray = DeviceArray if strict else np.ndarray
    cp.asnumpy = DeviceArray._read_back if strict else np.asarray
    cp.RawModule = RawModule
    cp.random = _random_module(cp)
    cp.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
        Device=_Device,
        MemoryHook=_memory_hook_class(cp._hooks),
        get_current_stream=_Stream,
    )
    core = types.ModuleType(f"{name}._core")
    core._routines_linalg = _linalg_module(f"{name}._core._routines_linalg")
    cp._core = core
    sys.modules[core.__name__] = core
    sys.modules[core._routines_linalg.__name__] = core._routines_linalg
    return cp
