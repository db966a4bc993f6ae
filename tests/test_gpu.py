"""What only a GPU can show: TF32's accuracy, no device syncs, the two recurrence paths at
full size, and activation memory. All marked ``gpu``; they skip without CuPy and a device."""
import numpy as np
import pytest

import rnncore
from rnncore import cells
from rnncore.checks import trusted_ids
from rnncore.models import CELLS

pytestmark = pytest.mark.gpu


def layer_pass(backend, kind="lstm", seed=0, N=20, T=35, H=650):
    """One fwd+bwd of a Time layer at the book's size; host copies of hs, dxs and the gradients."""
    rng = np.random.default_rng(seed)
    cls = CELLS[kind]
    G = cls.cell.gates * H
    shapes = [(H, G), (H, G)] + [(G,)] * (len(cls.cell.param_names) - 2)
    params = [backend.asarray((rng.standard_normal(s) * 0.05).astype(np.float32)) for s in shapes]
    layer = cls(*params, backend=backend)
    xs = backend.asarray(rng.standard_normal((N, T, H)).astype(np.float32))
    hs = layer.forward(xs)
    dxs = layer.backward(backend.asarray(rng.standard_normal((N, T, H)).astype(np.float32)))
    return [backend.to_numpy(a) for a in (hs, dxs, *layer.grads)]


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(a)


def test_tf32_accuracy_is_reported():
    from rnncore.backends.cupy_backend import CupyBackend

    strict = layer_pass(rnncore.get_backend("cupy"))
    fast_backend = CupyBackend(tf32=True)
    try:
        fast = layer_pass(fast_backend)
    finally:
        fast_backend.set_tf32(False)
    errors = [rel(a, b) for a, b in zip(strict, fast)]
    print("TF32 against strict float32, relative error of hs, dxs, dWx, dWh, db:", [f"{e:.1e}" for e in errors])
    assert max(errors) < 1e-2


@pytest.mark.parametrize("kind", list(CELLS))
def test_fused_and_cublas_paths_agree_at_full_size(kind):
    from rnncore.backends.cupy_backend import CupyBackend

    a = layer_pass(rnncore.get_backend("cupy"), kind)
    b = layer_pass(CupyBackend(recurrence="fused"), kind)
    assert max(rel(x, y) for x, y in zip(a, b)) < 1e-5


@pytest.mark.parametrize("recurrence", ["cublas", "fused"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_recurrence_never_syncs(recurrence, kind):
    """The seam with every option (bh, end gradients, scales, lengths) under
    cupyx.allow_synchronize(False): any device sync inside raises."""
    cupyx = pytest.importorskip("cupyx")
    from rnncore.backends.cupy_backend import CupyBackend

    be = CupyBackend(recurrence=recurrence)
    cell = cells.CELLS[kind]
    N, T, H = 20, 7, 64
    rng = np.random.default_rng(0)

    def f(*shape):
        return be.asarray(rng.standard_normal(shape).astype(np.float32))

    Wh, bh = f(H, cell.gates * H), f(cell.gates * H) if cell.recurrent_bias else None
    states0, dstates_T = [f(N, H) for _ in cell.states], [f(N, H) for _ in cell.states]
    lengths, scale = be.asarray(rng.integers(0, T + 1, size=N)), rng.choice([0.0, 2.0], size=T)
    for _ in range(2):  # the first pass compiles and loads the kernels
        with cupyx.allow_synchronize(False):
            hs, gates, saved = be.recurrence_forward(cell, f(T, N, cell.gates * H), states0, Wh, bh, lengths)
            be.recurrence_backward(cell, f(N, T, H).transpose(1, 0, 2), hs, gates, saved, states0, Wh, dstates_T,
                                   scale, lengths)
    be.synchronize()


def test_trusted_ids_skip_the_device_read_but_others_do_not():
    cp = pytest.importorskip("cupy")
    be = rnncore.get_backend("cupy")
    embed = rnncore.TimeEmbedding(be.asarray(np.ones((5, 3), np.float32)), backend=be)
    bad = cp.asarray([[1, 7]])
    with pytest.raises(ValueError, match="holds id 7"):
        embed.forward(bad)
    with trusted_ids():
        embed.forward(cp.asarray([[1, 2]]))  # no range read, so no sync


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_activation_memory_is_what_backward_needs(kind):
    """The time-major input, h, the saved array (LSTM c, GRU hn) and the gates per step: <= 1.1x."""
    be = rnncore.get_backend("cupy")
    N, T, H = 20, 35, 650
    rng = np.random.default_rng(0)
    cls = CELLS[kind]
    G = cls.cell.gates * H
    shapes = [(H, G), (H, G)] + [(G,)] * (len(cls.cell.param_names) - 2)
    layer = cls(*(be.asarray((rng.standard_normal(s) * 0.05).astype(np.float32)) for s in shapes), backend=be)
    xs = be.asarray(rng.standard_normal((N, T, H)).astype(np.float32))
    with be.peak_memory() as report:
        layer.forward(xs)
    needed = T * N * (H + H + H + G) * 4  # x (time-major), h, c or hn, the gates
    print(f"{kind} forward keeps {report.peak_bytes / 2**20:.1f} MiB; backward needs {needed / 2**20:.1f} MiB")
    assert report.peak_bytes <= 1.1 * needed
