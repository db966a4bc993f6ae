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


# ---- issue 24: what the emulator models, and the faults it must catch --------------------

def strict_backend(recurrence="cublas"):
    be = CupyBackend(fake_cupy.make(strict=True), recurrence=recurrence)
    be.name = "cupy-strict"
    return be


def test_the_strict_stand_in_refuses_every_host_read():
    cp = fake_cupy.make(strict=True)
    a = cp.ones(3)
    for read in (int, float, bool, cp.asnumpy, lambda x: x.item(), lambda x: x.tolist()):
        with pytest.raises(AssertionError, match="read back"):
            read(a.sum())


@pytest.mark.parametrize("recurrence", ["cublas", "fused"])
def test_a_training_iteration_never_waits_on_the_device(recurrence):
    """rnncore.app.train's inner step (Trainer._gradients, clip, update) on the strict stand-in,
    with dropout, under trusted_ids as Trainer.fit runs it."""
    from rnncore.app.train import Trainer
    from rnncore.checks import trusted_ids
    from rnncore.models import BetterRnnlm
    from rnncore.optim import SGD, clip_grads

    be = strict_backend(recurrence)
    model = BetterRnnlm(13, wordvec_size=6, hidden_size=6, dropout=0.3, backend=be)
    rng = np.random.default_rng(0)
    trainer = Trainer.__new__(Trainer)  # only what _gradients reads
    trainer.model, trainer.comm = model, rnncore.app.train.distributed.SINGLE
    xs, ts = (be.asarray(rng.integers(0, 13, size=(3, 4))) for _ in range(2))
    with trusted_ids():
        for _ in range(2):
            loss, _, _ = trainer._gradients(xs, ts, rnncore.app.train._StopFlag())
            clip_grads(model.grads, 0.25, be)
            SGD(0.1).update(model.params, model.grads, be)
    assert isinstance(loss, fake_cupy.DeviceArray)


def test_a_bench_pass_never_waits_on_the_device():
    """rnncore bench's truncated pass checks the stream's ids once (a host array here, as the
    bench passes it, or one read) and runs its chunks without reading anything back."""
    from rnncore import bptt
    from rnncore.models import Rnnlm

    be = strict_backend()
    model = Rnnlm(13, wordvec_size=5, hidden_size=6, backend=be)
    rng = np.random.default_rng(1)
    xs, ts = (be.asarray(rng.integers(0, 13, size=(2, 9))) for _ in range(2))
    with pytest.raises(AssertionError, match="read back"):  # the once-per-stream check reads
        bptt.truncated_pass(model, xs, ts, [3, 3, 3])
    # that one check is the only read: with it satisfied, no chunk reads
    import rnncore.checks as checks
    seen = []
    real = checks.expect_ids

    def counting(*args):
        seen.append(args[1])

    try:
        bptt.expect_ids = counting
        bptt.truncated_pass(model, xs, ts, [3, 3, 3])
    finally:
        bptt.expect_ids = real
    assert seen == ["xs", "ts"]


def test_benchmark_steps_never_wait_on_the_device(monkeypatch):
    """benchmarks/steps.py: the ids are checked once when the step is built, never in it."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("steps", Path(__file__).parent.parent / "benchmarks" / "steps.py")
    steps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(steps)
    monkeypatch.setattr(steps, "V", 17)
    monkeypatch.setattr(steps, "N_LM", 2)
    monkeypatch.setattr(steps, "T_LM", 3)
    monkeypatch.setitem(steps.MODELS, "rnnlm", dict(size=4, layers=1, dropout=0.0, tie=False))
    be = strict_backend()
    checked = []
    monkeypatch.setattr(steps, "expect_ids", lambda *a: checked.append(a[1]))  # the build-time check reads
    monkeypatch.setattr(steps, "Rnnlm", lambda V, backend: rnncore.models.Rnnlm(V, 4, 4, backend=backend))
    step = steps.iteration_step(be, "rnnlm")
    assert checked == ["xs", "ts"]
    step()
    step()
    step = steps.layer_step(be, "lstm", (2, 3, 4))
    step()


def test_resuming_a_numpy_rng_state_on_cupy_reseeds_and_warns():
    """CuPy's XORWOW.state is a method: a NumPy state from a CPU checkpoint cannot be assigned to
    it. The cupy backend re-seeds deterministically from it and says so."""
    be = CupyBackend(fake_cupy.make())
    assert callable(be.rng.bit_generator.state)
    numpy_state = rnncore.get_backend("numpy").rng_state()
    masks = []
    for _ in range(2):
        with pytest.warns(RuntimeWarning, match="re-seeded deterministically"):
            be.set_rng_state(numpy_state)
        masks.append(be.dropout_mask((5, 7), 0.5, np.dtype(np.float32)))
    np.testing.assert_array_equal(masks[0], masks[1])


def test_a_cupy_rng_state_round_trips():
    be = CupyBackend(fake_cupy.make())
    be.seed(3)
    be.dropout_mask((4, 4), 0.5, np.dtype(np.float32))
    state = be.rng_state()
    import json
    state = json.loads(json.dumps(state))  # what a checkpoint stores
    first = be.dropout_mask((6, 5), 0.5, np.dtype(np.float32))
    be.seed(99)
    be.set_rng_state(state)
    np.testing.assert_array_equal(be.dropout_mask((6, 5), 0.5, np.dtype(np.float32)), first)


def test_peak_memory_counts_only_what_the_block_allocates_and_nests():
    be = CupyBackend(fake_cupy.make())
    cp = be.xp
    before = cp.empty(1000, dtype=np.float64)  # 8000 bytes, allocated before the block
    with be.peak_memory() as outer:
        del before  # freeing it gives the block nothing back
        a = cp.empty(500, dtype=np.float64)  # 4096 bytes (rounded to 512)
        with be.peak_memory() as inner:
            b = cp.zeros(256, dtype=np.float64)  # 2048
            del b
        c = cp.ones(128, dtype=np.float64)  # 1024
        del a, c
    assert inner.peak_bytes == 2048
    assert outer.peak_bytes == 4096 + 2048


def test_tf32_is_process_wide_and_a_later_backend_leaves_it():
    cp = fake_cupy.make()
    fast = CupyBackend(cp, tf32=True)
    assert fast.tf32
    later = CupyBackend(cp)  # must not silently turn TF32 off for `fast`
    assert fast.tf32 and later.tf32
    later.set_tf32(False)
    assert not fast.tf32 and not later.tf32
    assert not CupyBackend(fake_cupy.make()).tf32  # a process's first backend: strict float32


def guarded(array, pad=8):
    """``array`` inside a larger buffer filled with a sentinel, and the buffer: writes out of
    bounds land in the guard and are seen."""
    flat = np.full(array.size + 2 * pad, 7.25, dtype=array.dtype)
    inner = flat[pad:pad + array.size].reshape(array.shape)
    inner[...] = array
    return inner, flat, pad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_of_range_ids_are_skipped_by_the_embedding_backward(dtype):
    be = backend_by_name("cupy-emu")
    V, D = 5, 3
    dW, flat, pad = guarded(np.zeros((V, D), dtype=dtype), pad=2 * D)
    ids = np.array([0, -1, 5, 7, 4, -3], dtype=np.int32)
    dout = np.arange(ids.size * D, dtype=dtype).reshape(-1, D) + 1
    be.embedding_scatter_add(dW, ids, dout)
    assert np.all(flat[:pad] == 7.25) and np.all(flat[pad + V * D:] == 7.25), "written out of bounds"
    expected = np.zeros((V, D), dtype=dtype)
    for i, row in zip(ids, dout):
        if 0 <= i < V:
            expected[i] += row
    np.testing.assert_array_equal(dW, expected)


def test_out_of_range_labels_are_skipped_by_the_loss_kernel():
    be = backend_by_name("cupy-emu")
    M, V = 4, 6
    scores = np.random.default_rng(0).standard_normal((M, V))
    labels = np.array([2, V, -1, -2], dtype=np.int32)  # V and -2 are outside [-1, V)
    loss, dscores = be.softmax_cross_entropy(scores, labels)
    ref_loss, ref_d = be.softmax_cross_entropy(scores, np.array([2, -1, -1, -1], dtype=np.int32))
    np.testing.assert_allclose(dscores, ref_d, atol=1e-15)
    np.testing.assert_allclose(loss, ref_loss)


def test_empty_is_stale_and_shared_memory_is_poisoned():
    cp = fake_cupy.make()
    assert np.isnan(cp.empty(3)).all() and np.isnan(cp.empty_like(np.ones(2, np.float32))).all()
    src = ("template <typename T> __global__ void peek(T* out) {\n"
           "  DYNAMIC_SHARED(T, s); __syncthreads(); out[threadIdx.x] = s[threadIdx.x]; }\n")
    from rnncore import _kernels
    code = _kernels.cuda_module_source("training.cu").split("// The rest")[0] + src
    fn = cp.RawModule(code=code, name_expressions=["peek<float>"]).get_function("peek<float>")
    out = np.zeros(4, np.float32)
    fn((1,), (4,), (out,), shared_mem=16)
    assert np.isnan(out).all()


@pytest.mark.parametrize("grid, block, shared", [((1,), (1025,), 0), ((1,), (32, 32, 2), 0), ((0,), (32,), 0),
                                                 ((1, 65536), (32,), 0), ((1,), (32,), 48 * 1024 + 1)])
def test_launch_limits_are_asserted(grid, block, shared):
    be = backend_by_name("cupy-emu")
    fn = be._function("training.cu", "axpy", np.float64)
    y = np.zeros(4)
    with pytest.raises(ValueError, match="limits|threads a block|shared memory"):
        fn(grid, block, (y, np.ones(4), np.float64(1), np.int64(4)), shared_mem=shared)


@pytest.mark.parametrize("size", [1, 257, 3000])
def test_grid_stride_kernels_over_several_blocks_and_rounds(size):
    """axpy and embedding_scatter_add with the block cap at 2: every thread takes several items."""
    be = CupyBackend(fake_cupy.make())
    be._max_blocks = 2
    rng = np.random.default_rng(size)
    y, x = rng.standard_normal(size), rng.standard_normal(size)
    expected = y + 0.5 * x
    be.axpy_(0.5, x, y)
    np.testing.assert_allclose(y, expected, rtol=1e-15)
    V, D = 7, 3
    ids = rng.integers(0, V, size=-(-size // D)).astype(np.int32)
    dout = rng.standard_normal((ids.size, D))
    dW = np.zeros((V, D))
    be.embedding_scatter_add(dW, ids, dout)
    ref = np.zeros((V, D))
    np.add.at(ref, ids, dout)
    np.testing.assert_allclose(dW, ref, rtol=1e-12)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("cell", cells.CELLS.values(), ids=list(cells.CELLS))
@pytest.mark.parametrize("N", [16, 32])
def test_warp_dot_rows_at_16_and_32(strategy, cell, N):
    """A lane's DOT_ROWS = 16 rows exactly, and two rounds of them."""
    p = problem(cell, N, 2, 5, np.float64, seed=N, ends=True)
    assert_matches_numpy(backend_by_name(strategy), cell, p, np.float64)


MUTATIONS = {
    "a __syncthreads() removed from the fused backward step": (
        "recurrence.cu", "        }\n    }\n    __syncthreads();\n    for (int idx", "        }\n    }\n    for (int idx"),
    "a shortened grid-stride step": (
        "common.cuh", "k += (long long)blockDim.x * gridDim.x", "k += (long long)blockDim.x * gridDim.x - 1"),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_mutated_kernels_fail_the_parity_tests(monkeypatch, mutation):
    """Each mutation of the kernel source, compiled and run, breaks a parity test above."""
    from rnncore import _kernels

    filename, old, new = MUTATIONS[mutation]
    source = _kernels.cuda_module_source

    def mutated(name):
        text = source(name)
        return text.replace(old, new, 1)

    assert old in (source("recurrence.cu") if filename == "recurrence.cu" else source("training.cu"))
    monkeypatch.setattr(_kernels, "cuda_module_source", mutated)
    be = CupyBackend(fake_cupy.make(), recurrence="fused")
    be._max_blocks = 2
    failures = 0
    p = problem(cells.LSTM, 5, 3, 6, np.float64, seed=5, ends=True)
    try:
        assert_matches_numpy(be, cells.LSTM, p, np.float64)
    except AssertionError:
        failures += 1
    y, x = np.zeros(1000), np.ones(1000)
    be.axpy_(1.0, x, y)
    failures += not np.array_equal(y, x)
    assert failures, f"{mutation}: every check still passes"
