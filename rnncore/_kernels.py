"""Finds the hand-written kernels: ``rnncore/kernels`` when installed, ``../kernels`` in a checkout.

The top-level ``kernels/`` folder is packaged as ``rnncore.kernels`` (see pyproject.toml).
Running from a source tree with ``PYTHONPATH=.`` has no such package, so it is registered
here from the folder beside ``rnncore/``.
"""
import hashlib
import importlib
import importlib.util
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
    """Import a Numba kernel module, e.g. ``numba_module("lstm_numba")``."""
    package()
    module = importlib.import_module(f"{PACKAGE}.{name}")
    _drop_stale_numba_cache(module)
    return module


def _numba_sources_digest():
    digest = hashlib.sha256()
    for path in sorted(folder().glob("*_numba.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _drop_stale_numba_cache(module):
    """Numba's cache checks only a kernel's own file for changes, not the helpers it inlines
    from common_numba.py: after any kernel source changed, a module's cached code is dropped."""
    cached = [f for f in vars(module).values()
              if getattr(getattr(f, "py_func", None), "__module__", None) == module.__name__
              and hasattr(getattr(f, "_cache", None), "_cache_path")]
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


# The kernel templates each CUDA file defines; each is instantiated for float and double.
CUDA_KERNELS = {
    "rnn.cu": ("rnn_forward_step", "rnn_backward_step", "rnn_step_forward", "rnn_step_backward", "recurrent_dot"),
    "lstm.cu": ("lstm_forward_step", "lstm_backward_step", "lstm_step_forward", "lstm_step_backward"),
    "training.cu": ("embedding_scatter_add", "softmax_cross_entropy", "keep_mask", "axpy"),
}
CUDA_TYPES = {"float32": "float", "float64": "double"}
_INCLUDE = '#include "common.cuh"'


def cuda_module_source(filename):
    """The file's source with common.cuh inlined (CuPy's compile cache keys on the text alone)."""
    common = cuda_source("common.cuh").replace("#pragma once", "")
    return cuda_source(filename).replace(_INCLUDE, common)


def cuda_name_expressions(filename):
    """``["lstm_forward_step<float>", "lstm_forward_step<double>", ...]`` for RawModule."""
    return [f"{k}<{c}>" for k in CUDA_KERNELS[filename] for c in CUDA_TYPES.values()]
