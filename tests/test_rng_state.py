"""A checkpoint's random-generator state resumed on the backend that saved it or on another one.

Documented rule (``Backend.set_rng_state``, ``CupyBackend.set_rng_state``): a state of the
backend's own generator continues it exactly, dropout masks included; a state it cannot continue
(CuPy's XORWOW on a CPU backend, NumPy's PCG64 on the cupy backend, a malformed one) re-seeds
deterministically from that state and warns with a RuntimeWarning, never crashes. The cupy side
runs on the CPU emulator (``support/fake_cupy.py``), whose generator keeps its state in a device
array behind a ``state()`` method, as CuPy 14's XORWOW does.
"""
import json
import warnings

import fake_cupy
import numpy as np
import pytest
from conftest import HAS_NUMBA

import rnncore
from rnncore.backends.cupy_backend import CupyBackend

F32 = np.dtype(np.float32)
CPU = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed"))]
RESEEDED = "re-seeded deterministically"


def fresh(name):
    """A backend of its own, so that seeding it leaves the shared instances' generators alone."""
    if name == "cupy-emu":
        if not fake_cupy.compiler_available():  # its dropout mask is a kernel of training.cu
            pytest.skip("g++ is needed to run the CUDA kernels on the CPU")
        return CupyBackend(fake_cupy.make())
    return type(rnncore.get_backend(name))()


def saved(be):
    """``be``'s generator state as a checkpoint stores it (through JSON)."""
    return json.loads(json.dumps(be.rng_state()))


def draws(be):
    """What a resumed run draws next: two dropout masks and plain uniforms, on the host."""
    masks = [be.to_numpy(be.dropout_mask(shape, 0.5, F32)) for shape in ((6, 5), (3, 7))]
    return masks + [be.to_numpy(be.rng.random(9, dtype=F32))]


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def assert_reseeds_alike(be, state, seed_before=None):
    """Resuming ``state`` twice warns that it re-seeds, and both times gives the same draws."""
    runs = []
    for _ in range(2):
        if seed_before is not None:
            be.seed(seed_before)
        with pytest.warns(RuntimeWarning, match=RESEEDED):
            be.set_rng_state(state)
        runs.append(draws(be))
    assert_same(runs[0], runs[1])


def no_warning_set(be, state):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        be.set_rng_state(state)


@pytest.mark.parametrize("name", CPU)
def test_a_cpu_rng_state_round_trips_exactly(name):
    be = fresh(name)
    be.seed(3)
    draws(be)
    state = saved(be)
    assert state["bit_generator"] == "PCG64"
    expected = draws(be)
    be.seed(99)
    assert not all(np.array_equal(x, y) for x, y in zip(draws(be), expected))  # the re-seed moved it
    no_warning_set(be, state)
    assert_same(draws(be), expected)


def test_a_numpy_state_continues_exactly_on_numba():
    """Both CPU backends run NumPy's PCG64: a state saved on one continues on the other, the same
    masks (NumPy's comparison and the numba kernel's agree), without a warning."""
    pytest.importorskip("numba")
    numpy, numba = fresh("numpy"), fresh("numba")
    numpy.seed(5)
    draws(numpy)
    state = saved(numpy)
    expected = draws(numpy)
    no_warning_set(numba, state)
    assert_same(draws(numba), expected)


def test_the_emulated_cupy_state_is_xorwow_behind_a_method():
    """What the CPU backends are handed below: CuPy's own format, not a NumPy state."""
    be = fresh("cupy-emu")
    assert callable(be.rng.bit_generator.state)
    state = saved(be)
    assert state["bit_generator"] == "cupy.XORWOW" and isinstance(state["state"], str)
    with pytest.raises(ValueError):  # what the CPU backends did with it before: assigned to PCG64
        np.random.default_rng().bit_generator.state = state


@pytest.mark.parametrize("name", CPU)
def test_a_cupy_rng_state_resumed_on_a_cpu_backend_reseeds_deterministically_and_warns(name):
    gpu = fresh("cupy-emu")
    gpu.seed(7)
    first = saved(gpu)
    gpu.rng.random(4, dtype=F32)  # the generator moves on: another state
    second = saved(gpu)
    assert first != second

    be = fresh(name)
    runs = []
    for state in (first, first, second):
        be.seed(123)  # whatever the generator was doing before the resume does not matter
        with pytest.warns(RuntimeWarning, match=RESEEDED) as caught:
            be.set_rng_state(state)
        assert "cupy.XORWOW" in str(caught[0].message) and name in str(caught[0].message)
        runs.append(draws(be))
    assert_same(runs[0], runs[1])  # deterministic: the same saved state, the same masks
    assert not np.array_equal(runs[0][2], runs[2][2])  # derived from the state: another state, other draws
    # an independent check of "re-seeded from the state": not the generator before it, nor seed 123
    be.seed(123)
    assert not np.array_equal(draws(be)[2], runs[0][2])

    # after the re-seed the backend's own state saves and resumes exactly
    state = saved(be)
    assert state["bit_generator"] == "PCG64"
    expected = draws(be)
    no_warning_set(be, state)
    assert_same(draws(be), expected)


@pytest.mark.parametrize("name", CPU)
def test_a_cpu_rng_state_resumed_on_emulated_cupy_reseeds_deterministically_and_warns(name):
    """The other way: CuPy cannot take NumPy's PCG64 state either (already so before this test)."""
    cpu = fresh(name)
    cpu.seed(11)
    state = saved(cpu)
    gpu = fresh("cupy-emu")
    assert_reseeds_alike(gpu, state, seed_before=1)
    expected = draws(gpu)  # and its own state round-trips exactly after that
    gpu_state = saved(gpu)
    more = draws(gpu)
    no_warning_set(gpu, gpu_state)
    assert_same(draws(gpu), more)
    assert not np.array_equal(expected[2], more[2])


def _nested(depth):
    state = node = {"bit_generator": "x"}
    for _ in range(depth):
        node["n"] = node = {}
    return state


@pytest.mark.parametrize("name", CPU)
@pytest.mark.parametrize("state", [{"bit_generator": "PCG64", "state": {"state": 1}},  # no inc, no has_uint32
                                   {"bit_generator": "PCG64", "state": "garbage", "has_uint32": 0, "uinteger": 0},
                                   {"bit_generator": "MT19937", "state": {"key": [1, 2], "pos": 0}},
                                   ["not", "a", "dict"],
                                   {"bit_generator": "PCG64", "state": {"state": 2**200, "inc": 1}, "has_uint32": 0,
                                    "uinteger": 0},  # OverflowError in NumPy
                                   {"bit_generator": "x", 1: 2},  # keys JSON cannot sort
                                   _nested(10_000)])  # deeper than JSON can write
def test_a_malformed_or_foreign_numpy_state_reseeds_instead_of_raising(name, state):
    assert_reseeds_alike(fresh(name), state)


@pytest.mark.parametrize("state", [{"state": "not base64!"}, {"state": "AAE="}, {}, {"state": 7}],
                         ids=["not-base64", "wrong-size", "no-state", "state-not-text"])
def test_a_malformed_cupy_state_reseeds_on_cupy(state):
    gpu = fresh("cupy-emu")
    form = {**saved(gpu), **state}
    if not state:
        del form["state"]
    assert_reseeds_alike(gpu, form)
