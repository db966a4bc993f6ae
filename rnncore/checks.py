"""Input checks shared by the layers: each error names the layer, the argument and what was expected."""
import contextlib
import threading

import numpy as np

_trust = threading.local()


@contextlib.contextmanager
def trusted_ids():
    """Inside the block, skip the range check of ids held in device memory.

    Reading an id range back from a GPU waits for the device: once per layer call that is a
    sync per training iteration. The trainer checks its corpus on the host once and trains
    inside this block; everyone else keeps the check.
    """
    previous = getattr(_trust, "on", False)
    _trust.on = True
    try:
        yield
    finally:
        _trust.on = previous

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def array_kind(a):
    t = type(a)
    return f"{t.__module__.split('.')[0]}.{t.__name__}"


def expect_backend_array(where, name, a, backend):
    """Arrays must already live on the layer's backend: rnncore never copies between host and device."""
    if not backend.owns(a):
        raise TypeError(
            f"{where}: {name} is a {array_kind(a)}, but this layer runs on the {backend.name!r} backend, "
            f"which takes {backend.xp.__name__}.ndarray; convert it explicitly with "
            f"rnncore.get_backend({backend.name!r}).asarray(...)"
        )


def shape_text(spec):
    return "(" + ", ".join(str(s) if isinstance(s, str) else f"{s[0]}={s[1]}" for s in spec) + ")"


def expect_shape(where, name, a, spec):
    """``spec`` lists each axis as a free name ("N") or a (name, size) pair (("D", 650))."""
    ok = a.ndim == len(spec) and all(isinstance(s, str) or a.shape[k] == s[1] for k, s in enumerate(spec))
    if not ok:
        raise ValueError(f"{where}: {name} must have shape {shape_text(spec)}, got {tuple(a.shape)}")
    if 0 in a.shape:
        raise ValueError(f"{where}: {name} must not be empty, got shape {tuple(a.shape)}")


def expect_float(where, name, a, dtype):
    if a.dtype != dtype:
        raise TypeError(
            f"{where}: {name} has dtype {a.dtype}, but the layer's parameters are {dtype}; "
            f"cast it with .astype('{dtype}')"
        )


def expect_ids(where, name, a, low, high):
    """Integer ids in [low, high); reading the range syncs a GPU, which only happens here."""
    if a.dtype.kind not in "iu":
        raise TypeError(f"{where}: {name} must hold integer ids, got dtype {a.dtype}")
    if getattr(_trust, "on", False) and type(a) is not np.ndarray:  # device memory (host arrays: always checked)
        return
    lo, hi = int(a.min()), int(a.max())
    if lo < low or hi >= high:
        bad = lo if lo < low else hi
        raise ValueError(f"{where}: {name} holds id {bad}, outside the valid range [{low}, {high - 1}]")


def check_params(where, backend, names, params):
    """Parameters: arrays of the backend, one float dtype (float32 or float64) for all."""
    for name, p in zip(names, params):
        expect_backend_array(where, name, p, backend)
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1 or next(iter(dtypes)) not in FLOAT_DTYPES:
        got = ", ".join(f"{n} {p.dtype}" for n, p in zip(names, params))
        raise TypeError(f"{where}: parameters must share one dtype, float32 or float64; got {got}")
    return params[0].dtype


def expect_param_shape(where, name, p, shape, meaning):
    if tuple(p.shape) != tuple(shape):
        raise ValueError(f"{where}: {name} must have shape {tuple(shape)} ({meaning}), got {tuple(p.shape)}")
