"""Binding BLAS's sgemm/dgemm for the GEMM kernels: Intel MKL (sequential) or SciPy's OpenBLAS.

The kernels call the symbols ``rnncore_sgemm``/``rnncore_dgemm``, which the JIT linker resolves
in each process, so the kernels that call them stay cacheable (a ctypes function pointer would
be baked into the code). ``bind()`` finds the library and registers the symbols; it runs when
``NumbaBackend()`` starts, never at import (it reads /proc/cpuinfo and may load MKL), and must
run before a GEMM kernel is first called or loaded from the cache. Fortran ABI: every argument
by address.
"""
import ctypes
import ctypes.util
import functools
import glob
import os
import sys

import llvmlite.binding as llvm_binding
from numba import types

sgemm, dgemm = (types.ExternalFunction(f"rnncore_{n}", types.void(*[types.intp] * 13)) for n in ("sgemm", "dgemm"))


@functools.cache
def bind():
    """Register the GEMM symbols (once a process); returns the path of the library they call."""
    addresses, path = _blas()
    for name, address in addresses.items():
        llvm_binding.add_symbol(f"rnncore_{name}", address)
    return path


def _cython_blas_address(name):
    """The address of SciPy's BLAS routine ``name`` (what NumPy's dot uses inside @njit too)."""
    import scipy.linalg.cython_blas

    capsule = scipy.linalg.cython_blas.__pyx_capi__[name]
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype, api.PyCapsule_GetName.argtypes = ctypes.c_char_p, [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))


def _intel_cpu():
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in f)
    except OSError:
        return False


def _blas_choice():
    """RNNCORE_BLAS: "mkl", "scipy" or "auto" (the default): MKL on Intel CPUs only. On an AMD
    EPYC (Zen 3) MKL's single-threaded SGEMM ran the weight-gradient shapes 1.4x slower than
    OpenBLAS (the pair at H=650: 49-53 against 35-37 ms); on Intel it was 9-19% faster."""
    choice = os.environ.get("RNNCORE_BLAS", "auto")
    if choice not in ("auto", "mkl", "scipy"):
        raise ValueError(f"RNNCORE_BLAS must be auto, mkl or scipy, got {choice!r}")
    return choice if choice != "auto" else ("mkl" if _intel_cpu() else "scipy")


def _sequential_mkl():
    """Intel MKL's runtime library (``pip install mkl``, Linux) set to run sequentially, or None:
    not installed, not chosen (``_blas_choice``), or already loaded by someone else (NumPy
    built on MKL: switching its threading would slow it, and its own threads would fight
    Numba's)."""
    if _blas_choice() != "mkl" or not sys.platform.startswith("linux"):
        return None
    paths = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*"))) + [ctypes.util.find_library("mkl_rt")]
    for path in filter(None, paths):
        try:
            ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
            return None  # loaded already: not ours to configure
        except OSError:
            pass
        try:
            mkl = ctypes.CDLL(path)
        except OSError:
            continue
        sequential, lp64 = 1, 0  # MKL_THREADING_SEQUENTIAL; MKL_INTERFACE_LP64: 32-bit integers, as the kernels pass
        configured = (mkl.MKL_Set_Threading_Layer(ctypes.c_int(sequential)) == sequential
                      and mkl.MKL_Set_Interface_Layer(ctypes.c_int(lp64)) == lp64)
        return (mkl, path) if configured else None
    return None


def _blas():
    """{"sgemm": address, "dgemm": address} and the library's path: MKL where installed and
    chosen (on Intel its single-threaded GEMMs made a training step 9-19% faster than
    OpenBLAS), else SciPy's OpenBLAS."""
    found = _sequential_mkl()
    if found is not None:
        mkl, path = found
        return {n: ctypes.cast(getattr(mkl, n + "_"), ctypes.c_void_p).value for n in ("sgemm", "dgemm")}, path
    import scipy.linalg.cython_blas

    return {n: _cython_blas_address(n) for n in ("sgemm", "dgemm")}, scipy.linalg.cython_blas.__file__
