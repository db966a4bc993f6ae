"""The CUDA recurrence (kernels/recurrence.cu over kernels/cells.cuh, driven by the cupy
backend) on the CPU emulator: both strategies against the NumPy reference at the seam itself,
for every cell, on row and unit edges, with everything the seam takes (the GRU's bh, given end
gradients, a strided upstream gradient, randomized-truncation scales, variable lengths); the
contract's ownership rules; the strategy choice and its fallback; no value read back to the
host. Nothing here has run on a GPU: tests/test_gpu.py is that."""
import fake_cupy
import numpy as np
import pytest
from conftest import backend_by_name

import rnncore
from rnncore import cells
from rnncore.backends.cupy_backend import CupyBackend, FusedSteps

pytestmark = pytest.mark.skipif(not fake_cupy.compiler_available(), reason="g++ runs the CUDA kernels on the CPU")

STRATEGIES = ["cupy-emu", "cupy-emu-fused"]
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
# N > 16 (a lane's rows in registers), N = 1, H = 1, H not a multiple of the 4 units of a block
EDGES = [(37, 3, 45), (1, 4, 33), (17, 3, 3), (1, 1, 1), (16, 2, 1), (33, 2, 70)]  # N, T, H


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)


def problem(cell, N, T, H, dtype, seed, lengths=False, scale=False, ends=False, strided=False):
    """Host arrays for one forward and backward: inputs and options of the seam."""
    rng = np.random.default_rng(seed)
    G = cell.gates * H

    def f(*shape, s=1.0):
        return (rng.standard_normal(shape) * s).astype(dtype)

    dhs = f(N, T, H)
    return {
        "xw": f(T, N, G), "states0": [f(N, H) for _ in cell.states], "Wh": f(H, G, s=0.5),
        "bh": f(G) if cell.recurrent_bias else None,
        "dhs": np.repeat(dhs, 2, axis=2) if strided else dhs, "strided": strided,
        "dstates_T": [f(N, H) for _ in cell.states] if ends else None,
        "scale": rng.choice([0.0, 0.5, 2.0], size=T) if scale else None,
        "lengths": rng.integers(0, T + 1, size=N) if lengths else None,
    }


def upstream(be, p):
    """The upstream gradient on ``be`` as a layer passes it: the time-major view of a batch-major
    array, every other column of it if ``strided``."""
    return be.asarray(p["dhs"]).transpose(1, 0, 2)[:, :, :: 2 if p["strided"] else 1]


def run(be, cell, p):
    """forward then backward on ``be``; host copies of everything they return."""
    def a(x):
        return None if x is None else be.asarray(np.array(x))

    lengths = a(p["lengths"])
    states0 = [a(s) for s in p["states0"]]
    Wh = a(p["Wh"])
    hs, gates, saved = be.recurrence_forward(cell, a(p["xw"]), states0, Wh, a(p["bh"]), lengths)
    fwd = [be.to_numpy(x).copy() for x in (hs, gates, *saved)]
    dhs = upstream(be, p)
    dstates_T = None if p["dstates_T"] is None else [a(d) for d in p["dstates_T"]]
    dxw, dhw, dstates0 = be.recurrence_backward(cell, dhs, hs, gates, saved, states0, Wh, dstates_T, p["scale"],
                                                lengths)
    return fwd, [be.to_numpy(x) for x in (dxw, dhw, *dstates0)]


def assert_matches_numpy(be, cell, p, dtype):
    (fwd, bwd), (ref_fwd, ref_bwd) = run(be, cell, p), run(rnncore.get_backend("numpy"), cell, p)
    if p["lengths"] is not None and not cell.gates_are_h:  # hs is 0 at padded steps; gates and saved
        live = np.arange(len(p["xw"]))[:, None] < p["lengths"][None, :]  # rows there are never read
        fwd, ref_fwd = ([x[0]] + [y[live] for y in x[1:]] for x in (fwd, ref_fwd))
    for k, (e, g) in enumerate(zip(ref_fwd + ref_bwd, fwd + bwd)):
        assert g.dtype == dtype
        assert rel_err(e, g) <= TOLERANCE[dtype], f"output {k}: {rel_err(e, g):.2e}"


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("cell", cells.CELLS.values(), ids=list(cells.CELLS))
@pytest.mark.parametrize("N, T, H", EDGES)
def test_matches_numpy_on_row_and_unit_edges(strategy, cell, N, T, H):
    p = problem(cell, N, T, H, np.float64, seed=N * 1000 + H)
    assert_matches_numpy(backend_by_name(strategy), cell, p, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("cell", cells.CELLS.values(), ids=list(cells.CELLS))
def test_matches_numpy_with_every_option(strategy, cell, dtype):
    """Given end gradients, a strided upstream gradient, truncation scales (0 included) and
    lengths (0 and T included) together, at 19 rows and 6 units."""
    for seed in range(3):
        p = problem(cell, 19, 5, 6, dtype, seed, lengths=True, scale=True, ends=True, strided=True)
        p["lengths"][:2] = (0, 5)
        assert_matches_numpy(backend_by_name(strategy), cell, p, dtype)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("cell", cells.CELLS.values(), ids=list(cells.CELLS))
def test_what_is_overwritten_and_what_is_new(strategy, cell):
    """base.py's ownership rules: xw becomes the gates (and the RNN's hs); backward writes dhw over
    the gates (not the RNN's, which are hs); dxw is the gates for the LSTM, new and C-ordered for
    the RNN and GRU; dstates0 are new; nothing read-only changes."""
    be = backend_by_name(strategy)
    p = problem(cell, 3, 4, 5, np.float64, seed=1, ends=True, strided=True)
    xw, states0, Wh = be.asarray(p["xw"].copy()), [be.asarray(s.copy()) for s in p["states0"]], be.asarray(p["Wh"])
    bh = None if p["bh"] is None else be.asarray(p["bh"])
    dhs, dstates_T = upstream(be, p), [be.asarray(d) for d in p["dstates_T"]]
    read_only = [*states0, Wh, dhs, *dstates_T] + ([bh] if bh is not None else [])
    before = [x.copy() for x in read_only]
    hs, gates, saved = be.recurrence_forward(cell, xw, states0, Wh, bh)
    assert gates is xw and (hs is xw) == cell.gates_are_h and len(saved) == len(cell.saved)
    hs_before = hs.copy()
    dxw, dhw, dstates0 = be.recurrence_backward(cell, dhs, hs, gates, saved, states0, Wh, dstates_T)
    assert (dhw is gates) != cell.gates_are_h and (dxw is gates) == (cell is cells.LSTM)
    assert dxw.flags.c_contiguous and (dxw is dhw) == (cell is not cells.GRU)
    np.testing.assert_array_equal(hs, hs_before)
    assert len(dstates0) == len(cell.states)
    for d in dstates0:
        assert not any(np.shares_memory(d, x) for x in [*read_only, xw, dxw, *saved])
    for x, x0 in zip(read_only, before):
        np.testing.assert_array_equal(x, x0)


def launches(be, monkeypatch):
    """Record the kernels ``be`` launches and its cuBLAS (matmul) calls."""
    seen = []
    function = be._function

    def recording(filename, kernel, dtype, cell=None):
        fn = function(filename, kernel, dtype, cell)
        return lambda *args, **kwargs: (seen.append(kernel), fn(*args, **kwargs))

    matmul = be.xp.matmul
    monkeypatch.setattr(be, "_function", recording)
    monkeypatch.setattr(be.xp, "matmul", lambda *a, **k: (seen.append("cublas"), matmul(*a, **k))[1], raising=False)
    return seen


@pytest.mark.parametrize("recurrence, N, forward, backward", [
    ("cublas", 3, ["cublas", "gates_forward"], ["gates_backward", "cublas"]),
    ("fused", 3, ["step_forward"], ["step_backward"]),
    # 3 * 4100 float32 values a warp do not fit 48 KB: forward steps with cuBLAS, backward (one column) fused
    ("fused", 4100, ["cublas", "gates_forward"], ["step_backward"]),
])
def test_strategy_is_chosen_once_and_falls_back_where_shared_memory_does_not_fit(monkeypatch, recurrence, N,
                                                                                 forward, backward):
    be = CupyBackend(fake_cupy.make(), recurrence=recurrence)
    assert type(be._steps).__name__ == {"cublas": "CublasSteps", "fused": "FusedSteps"}[recurrence]
    assert FusedSteps.fits(4096, 3, np.float32) and not FusedSteps.fits(4097, 3, np.float32)
    T, H = 2, 1
    p = problem(cells.GRU, N, T, H, np.float32, seed=2)
    seen = launches(be, monkeypatch)
    fwd, bwd = run(be, cells.GRU, p)
    assert seen == forward * T + backward * T + (["recurrent_dot"] if "step_backward" in backward else [])
    ref_fwd, ref_bwd = run(rnncore.get_backend("numpy"), cells.GRU, p)
    for e, g in zip(ref_fwd + ref_bwd, fwd + bwd):
        assert rel_err(e, g) <= 1e-5


@pytest.mark.parametrize("recurrence", ["cublas", "fused"])
@pytest.mark.parametrize("cell", cells.CELLS.values(), ids=list(cells.CELLS))
def test_no_value_is_read_back_to_the_host(recurrence, cell):
    """On a stand-in whose arrays refuse any conversion to host values (as CuPy's do under
    cupyx.allow_synchronize(False)), the recurrence runs with every option."""
    be = CupyBackend(fake_cupy.make(strict=True), recurrence=recurrence)
    p = problem(cell, 4, 3, 5, np.float32, seed=3, lengths=True, scale=True, ends=True)
    assert all(isinstance(a, fake_cupy.DeviceArray) for a in (be.asarray(p["xw"]), be.xp.zeros(3)))
    with pytest.raises(AssertionError, match="read back"):  # the stand-in bites
        float(be.xp.ones(1).sum())
    xw, states0, Wh = be.asarray(p["xw"]), [be.asarray(s) for s in p["states0"]], be.asarray(p["Wh"])
    bh, lengths = (None if x is None else be.asarray(x) for x in (p["bh"], p["lengths"]))
    hs, gates, saved = be.recurrence_forward(cell, xw, states0, Wh, bh, lengths)
    be.recurrence_backward(cell, upstream(be, p), hs, gates, saved, states0, Wh,
                           [be.asarray(d) for d in p["dstates_T"]], p["scale"], lengths)


def test_a_none_argument_is_refused():
    """CuPy passes None to a kernel as the pointer 0xffffffff (cupy/cupy#9046); the stand-in
    refuses it, so a forgotten NULL fails here instead of corrupting memory there."""
    be = backend_by_name("cupy-emu")
    fn = be._function("recurrence.cu", "recurrent_dot", np.float64)
    with pytest.raises(TypeError, match="NoneType"):
        fn((1,), (32,), (np.zeros((1, 1)), None, np.zeros((1, 1)), np.int32(1), np.int32(1), np.int32(1)))


def test_restrict_arguments_may_not_share_memory():
    be = backend_by_name("cupy-emu")
    fn = be._function("recurrence.cu", "recurrent_dot", np.float64)
    X = np.ones((1, 1))
    with pytest.raises(ValueError, match="share memory"):
        fn((1,), (32,), (X, X, np.ones((1, 1)), np.int32(1), np.int32(1), np.int32(1)), shared_mem=8)
