"""Finds the hand-written kernels: ``rnncore/kernels`` when installed, ``../kernels`` in a checkout.

The top-level ``kernels/`` folder is packaged as ``rnncore.kernels`` (see pyproject.toml).
Running from a source tree with ``PYTHONPATH=.`` has no such package, so it is registered
here from the folder beside ``rnncore/``.
"""
import functools
import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path

PACKAGE = "rnncore.kernels"


def _register_source_tree():
    folder = Path(__file__).resolve().parent.parent / "kernels"
    spec = importlib.util.spec_from_file_location(
        PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or not folder.is_dir():
        raise ImportError(f"rnncore's kernels are missing: neither {PACKAGE} nor {folder} exists")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def package():
    """The ``rnncore.kernels`` package, wherever it lives."""
    try:
        return importlib.import_module(PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != PACKAGE:
            raise
        return _register_source_tree()


def folder():
    return Path(package().__path__[0])


def cuda_source(filename):
    """Text of a CUDA C kernel file, e.g. ``cuda_source("lstm.cu")``."""
    return (folder() / filename).read_text()


def numba_module(name):
    """Import a Numba kernel module, e.g. ``numba_module("lstm_numba")`` or ``numba_module("numba.gemm")``.
    Imported kernel modules whose cached code predates a change of any kernel source drop it first."""
    package()
    module = importlib.import_module(f"{PACKAGE}.{name}")
    for loaded in [m for n, m in sys.modules.items() if n.startswith(PACKAGE + ".")]:
        _drop_stale_numba_cache(loaded)
    return module


@functools.cache
def _numba_sources_digest():
    """A digest of every Numba kernel source: ``*_numba.py`` and the ``numba/`` folder they share."""
    digest = hashlib.sha256()
    for path in sorted([*folder().glob("*_numba.py"), *folder().glob("numba/*.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _drop_stale_numba_cache(module):
    """Numba's cache checks only a kernel's own file for changes, not the helpers it inlines
    from other files, nor the cell's step functions a recurrence driver was made with
    (``numba/jit.py``'s ``instance``): after any kernel source changed, every cached kernel the
    module holds (its own, the drivers made for it, those it imports) is dropped, once."""
    cached = sorted((f for f in vars(module).values() if _cached_kernel(f)),
                    key=lambda f: f.py_func.__module__ != module.__name__)  # its own first: the marker goes beside them
    if not cached:
        return
    marker = Path(cached[0]._cache._cache_path) / f"{module.__name__.rsplit('.', 1)[-1]}.sources"
    digest = _numba_sources_digest()
    try:
        if marker.read_text() == digest:
            return
    except OSError:
        pass
    for kernel in cached:
        kernel._cache.flush()
    try:
        marker.write_text(digest)
    except OSError:  # a read-only cache folder: Numba then does not cache there either
        pass


def _cached_kernel(f):
    """Whether f is a Numba kernel of this package that caches its code."""
    module = getattr(getattr(f, "py_func", None), "__module__", None) or ""
    return module.startswith(PACKAGE + ".") and hasattr(getattr(f, "_cache", None), "_cache_path")


# The kernel templates each CUDA file defines; each is instantiated for float and double, and
# those in CUDA_CELL_KERNELS also for every cell of kernels/cells.cuh (their first template
# argument), named here by rnncore.cells' names.
CUDA_KERNELS = {
    "recurrence.cu": ("gates_forward", "gates_backward", "step_forward", "step_backward", "recurrent_dot"),
    "training.cu": ("embedding_scatter_add", "softmax_cross_entropy", "keep_mask", "axpy"),
}
CUDA_CELL_KERNELS = {"gates_forward", "gates_backward", "step_forward", "step_backward"}
CUDA_CELLS = {"rnn": "RnnCell", "lstm": "LstmCell", "gru": "GruCell"}
CUDA_TYPES = {"float32": "float", "float64": "double"}
_INCLUDE = re.compile(r'^#include "([\w.]+)"[ \t]*$', re.MULTILINE)


def cuda_module_source(filename):
    """The file's source with its ``#include "x.cuh"`` headers inlined, each once (NVRTC is given
    no include path, and CuPy's compile cache keys on the text alone)."""
    seen = set()

    def inline(match):
        header = match.group(1)
        if header in seen:
            return ""
        seen.add(header)
        return _INCLUDE.sub(inline, cuda_source(header).replace("#pragma once", ""))

    return _INCLUDE.sub(inline, cuda_source(filename))


def cuda_name_expression(kernel, dtype, cell=None):
    """``"step_forward<GruCell, float>"``: kernel for a dtype name ("float32") and cell name ("gru")."""
    ctype = CUDA_TYPES[dtype]
    return f"{kernel}<{CUDA_CELLS[cell]}, {ctype}>" if kernel in CUDA_CELL_KERNELS else f"{kernel}<{ctype}>"


def cuda_name_expressions(filename):
    """Every instantiation of the file's kernels, for RawModule's name_expressions."""
    return [cuda_name_expression(k, d, c) for k in CUDA_KERNELS[filename] for d in CUDA_TYPES
            for c in (CUDA_CELLS if k in CUDA_CELL_KERNELS else (None,))]
