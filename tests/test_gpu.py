"""What only a GPU can show: TF32's accuracy, no device syncs, the two recurrence paths at
full size, and activation memory. All marked ``gpu``; they skip without CuPy and a device."""
import numpy as np
import pytest

import rnncore
from rnncore.checks import trusted_ids

pytestmark = pytest.mark.gpu


def lstm_pass(backend, seed=0, N=20, T=35, H=650):
    rng = np.random.default_rng(seed)
    params = [backend.asarray((rng.standard_normal(s) * 0.05).astype(np.float32)) for s in ((H, 4 * H), (H, 4 * H), (4 * H,))]
    layer = rnncore.TimeLSTM(*params, backend=backend)
    xs = backend.asarray(rng.standard_normal((N, T, H)).astype(np.float32))
    hs = layer.forward(xs)
    dxs = layer.backward(backend.asarray(rng.standard_normal((N, T, H)).astype(np.float32)))
    return [backend.to_numpy(a) for a in (hs, dxs, *layer.grads)]


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(a)


def test_tf32_accuracy_is_reported():
    from rnncore.backends.cupy_backend import CupyBackend

    strict = lstm_pass(rnncore.get_backend("cupy"))
    fast_backend = CupyBackend(tf32=True)
    try:
        fast = lstm_pass(fast_backend)
    finally:
        fast_backend.set_tf32(False)
    errors = [rel(a, b) for a, b in zip(strict, fast)]
    print("TF32 against strict float32, relative error of hs, dxs, dWx, dWh, db:", [f"{e:.1e}" for e in errors])
    assert max(errors) < 1e-2


def test_fused_and_cublas_paths_agree_at_full_size():
    from rnncore.backends.cupy_backend import CupyBackend

    a = lstm_pass(rnncore.get_backend("cupy"))
    b = lstm_pass(CupyBackend(recurrence="fused"))
    assert max(rel(x, y) for x, y in zip(a, b)) < 1e-5


def test_trusted_ids_skip_the_device_read_but_others_do_not():
    cp = pytest.importorskip("cupy")
    be = rnncore.get_backend("cupy")
    embed = rnncore.TimeEmbedding(be.asarray(np.ones((5, 3), np.float32)), backend=be)
    bad = cp.asarray([[1, 7]])
    with pytest.raises(ValueError, match="holds id 7"):
        embed.forward(bad)
    with trusted_ids():
        embed.forward(cp.asarray([[1, 2]]))  # no range read, so no sync


def test_lstm_activation_memory_is_what_backward_needs():
    """h, c and the four gates per step (plus the input, which the caller holds): <= 1.1x."""
    be = rnncore.get_backend("cupy")
    N, T, H = 20, 35, 650
    rng = np.random.default_rng(0)
    params = [be.asarray((rng.standard_normal(s) * 0.05).astype(np.float32)) for s in ((H, 4 * H), (H, 4 * H), (4 * H,))]
    layer = rnncore.TimeLSTM(*params, backend=be)
    xs = be.asarray(rng.standard_normal((N, T, H)).astype(np.float32))
    with be.peak_memory() as report:
        layer.forward(xs)
    needed = T * N * (H + 6 * H) * 4  # x (time-major), h, c, 4 gates
    print(f"forward keeps {report.peak_bytes / 2**20:.1f} MiB; backward needs {needed / 2**20:.1f} MiB")
    assert report.peak_bytes <= 1.1 * needed
