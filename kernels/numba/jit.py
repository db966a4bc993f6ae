"""How every numba kernel is compiled, and how a driver gets one compiled copy per cell."""
import functools
import types

from numba import njit

FAST = {"reassoc", "contract"}  # reassociation and FMA contraction only: NaN and inf still propagate
# error_model="numpy": x / 0 gives inf as in NumPy; Python's check would raise, and its
# branch alone keeps LLVM from vectorizing any loop that divides.
OPTIONS = {"fastmath": FAST, "error_model": "numpy"}
# No kernel is called from C: Numba's C-callable wrapper of each is left out, and the Python one
# of those only other kernels call (``callee``), each a function less to compile and emit.
kernel = functools.partial(njit, cache=True, no_cfunc_wrapper=True, **OPTIONS)
callee = functools.partial(kernel, no_cpython_wrapper=True)
parallel_kernel = functools.partial(kernel, parallel=True)


def instance(template, name, **names):
    """``template`` (a plain Python function) compiled as the parallel kernel ``name``, with each
    global it calls by a key of ``names`` bound to that value (a cell's step functions). ``name``
    names the cache file too: two instances of one template need two names.

    A copy of the function with globals of its own, not a closure: Numba keys a cached closure on
    its pickled cell contents, and a pickled dispatcher carries an id drawn afresh in each
    process, so a closure over a cell's step functions never found its cached code (measured:
    a new cache entry every process). The copy is keyed on its bytecode, under a cache file of
    its own name, so each instance caches once and loads in every later process. Numba checks
    only the template's file for changes; ``rnncore._kernels`` drops the cache when any kernel
    source changed."""
    function = types.FunctionType(template.__code__, {**template.__globals__, **names}, name, template.__defaults__)
    function.__qualname__ = name
    function.__doc__ = template.__doc__
    return parallel_kernel(function)
